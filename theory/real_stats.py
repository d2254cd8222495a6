"""``theory real``, statistics: total variation between sampled answer laws, with bootstrap intervals and the
sampling floor, per problem and pooled over problems; and, on a tabular tree, the exact TVs beside them.

Everything is mapped to final answers and compared in total variation, with basic bootstrap intervals (both samples
resampled; see :func:`bootstrap_tv`, which also corrects the plug-in TV's upward bias to first order).
``tv_target_opt`` = TV(π_target, π*): how much the tilt moves the answers (when it is small, no method can be told
apart from the target). ``tv_floor`` is the mean TV between two resamples of the optimum's own sample: the level
below which differences cannot be resolved at this sample size. The pooled summary (:func:`pool`) is the mean over
the chosen problems, its interval by pooled resampling.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specs_rl.settings import SearchConfig
from theory.real_sample import AnswerSample


def _tv_counts(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def _resampled_tv(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``[reps]`` TVs of the two count vectors, each resampled with replacement (multinomial at its own size)."""
    pa, pb = a / a.sum(), b / b.sum()
    return np.array(
        [
            _tv_counts(rng.multinomial(int(a.sum()), pa), rng.multinomial(int(b.sum()), pb))
            for _ in range(reps)
        ]
    )


def _basic_interval(t: float, boot: np.ndarray, level: float) -> tuple[float, float, float]:
    """``(2 t - mean(T*), 2 t - q_hi(T*), 2 t - q_lo(T*))``, clipped at 0: bias-corrected value and basic interval."""
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return max(2 * t - float(boot.mean()), 0.0), max(2 * t - float(q_hi), 0.0), max(2 * t - float(q_lo), 0.0)


def bootstrap_tv(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int = 200, level: float = 0.95
) -> tuple[float, float, float, float]:
    """TV of the laws behind two count vectors (same labels): ``(plug-in, bias-corrected, lo, hi)``.

    The plug-in TV of two samples is biased upwards (sampling noise never cancels in ``|p - q|``). With ``T*`` the
    TV of the two samples each resampled with replacement, the bias-corrected value is ``2 T - mean(T*)`` and the
    interval is the basic (reverse-percentile) bootstrap ``[2 T - q_hi(T*), 2 T - q_lo(T*)]``, both clipped at 0.
    """
    t = _tv_counts(a, b)
    return (t, *_basic_interval(t, _resampled_tv(a, b, rng, reps), level))


def _tv_record(t: float, t_bc: float, lo: float, hi: float) -> dict[str, Any]:
    return {"tv": t, "tv_corrected": t_bc, "tv_ci": [lo, hi]}


def _majority(freq: Mapping[str, float]) -> dict[str, Any]:
    answer = max(freq, key=lambda a: (freq[a], a))
    return {"answer": answer, "share": freq[answer]}


def answer_tvs(
    drawn: AnswerSample,
    problem_id: str,
    beta: float,
    n_grid: Sequence[int],
    samples: int,
    rng: np.random.Generator,
    bootstrap: int = 200,
) -> dict[str, Any]:
    """The answer laws of one problem's samples and their TVs to ``π*``: ``{"id", "beta", "n", "samples", "target":
    {"freq", "majority"}, "optimum": {"freq", "majority", "acceptance", "target_draws", "seconds"}, "tv_target_opt":
    {"tv", "tv_corrected", "tv_ci"}, "tv_floor", "distinct_answers", "specs": {variant: {str(n): {"freq",
    "majority", "tv", "tv_corrected", "tv_ci", "defer_rate", "seconds"}}}}`` (TV: plug-in; corrected value and
    interval: basic bootstrap, :func:`bootstrap_tv`)."""
    every = [set(drawn.optimum), set(drawn.target)] + [
        set(s.answers) for by_n in drawn.specs.values() for s in by_n.values()
    ]
    labels = sorted(set().union(*every))
    index = {a: i for i, a in enumerate(labels)}

    def counts(answers: list[str]) -> np.ndarray:
        c = np.zeros(len(labels))
        for a, k in Counter(answers).items():
            c[index[a]] = k
        return c

    def freq(c: np.ndarray) -> dict[str, float]:
        return {a: k / c.sum() for a, k in zip(labels, c) if k}

    opt, tgt = counts(drawn.optimum), counts(drawn.target)
    floor = float(
        np.mean(
            [
                _tv_counts(rng.multinomial(samples, opt / samples), rng.multinomial(samples, opt / samples))
                for _ in range(bootstrap)
            ]
        )
    )
    out: dict[str, Any] = {
        "id": problem_id,
        "beta": beta,
        "n": [int(n) for n in n_grid],
        "samples": samples,
        "target": {"freq": freq(tgt), "majority": _majority(freq(tgt))},
        "optimum": {
            "freq": freq(opt),
            "majority": _majority(freq(opt)),
            "acceptance": samples / drawn.target_draws,
            "target_draws": drawn.target_draws,
            "seconds": round(drawn.optimum_seconds, 2),
        },
        "tv_target_opt": {},  # drawn after the variants' resamples, so the specs variant's match earlier versions
        "tv_floor": floor,
        "distinct_answers": len(labels),
        "specs": {},
    }
    for name, by_n in drawn.specs.items():
        out["specs"][name] = {}
        for n, s in by_n.items():
            c = counts(s.answers)
            out["specs"][name][str(n)] = {
                "freq": freq(c),
                "majority": _majority(freq(c)),
                **_tv_record(*bootstrap_tv(c, opt, rng, reps=bootstrap)),
                "defer_rate": s.defer_rate,
                "seconds": round(s.seconds, 2),
            }
    out["tv_target_opt"] = _tv_record(*bootstrap_tv(tgt, opt, rng, reps=bootstrap))
    return out


def scan_row(
    index: int, problem_id: str, optimum: list[str], target: list[str], draws: int, samples: int,
    rng: np.random.Generator, bootstrap: int,
) -> dict[str, Any]:  # fmt: skip
    """One scanned problem: its answer count, both majorities, the acceptance and TV(π_target, π*)."""
    f_tgt, f_opt = ({a: k / samples for a, k in Counter(x).items()} for x in (target, optimum))
    a, b = _counts_of([f_tgt, f_opt], samples)
    return {
        "index": index,
        "id": problem_id,
        "target_answers": len(f_tgt),
        "target_majority": _majority(f_tgt),
        "optimum_majority": _majority(f_opt),
        "acceptance": samples / draws,
        "tv_target_opt": _tv_record(*bootstrap_tv(a, b, rng, reps=bootstrap)),
    }


def _counts_of(freqs: Sequence[Mapping[str, float]], samples: int) -> list[np.ndarray]:
    """Count vectors over the union of labels, from frequencies of ``samples`` answers each."""
    labels = sorted(set().union(*freqs))
    return [np.array([round(f.get(a, 0.0) * samples) for a in labels], dtype=np.float64) for f in freqs]


def pool(problems: Sequence[Mapping[str, Any]], rng: np.random.Generator, reps: int = 200) -> dict[str, Any]:
    """Mean over problems of each TV (``tv_target_opt``, each variant at each ``n``), with a basic bootstrap interval
    by pooled resampling: replicate ``j`` resamples every problem's two samples and averages their TVs, so the
    interval is the sampling uncertainty on these problems (:func:`bootstrap_tv` applied to the mean). Also the mean
    ``tv_floor`` and, where every problem has them, the mean exact TVs. Reads only what :func:`real_task_check`
    wrote (frequencies of ``samples`` answers), so it can be rerun from ``real.json``."""

    def pooled(pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float], int]]) -> dict[str, Any]:
        ts, boots = [], []
        for fa, fb, samples in pairs:
            a, b = _counts_of([fa, fb], samples)
            ts.append(_tv_counts(a, b))
            boots.append(_resampled_tv(a, b, rng, reps))
        t = float(np.mean(ts))
        return _tv_record(t, *_basic_interval(t, np.mean(boots, axis=0), 0.95))

    first = problems[0]
    out: dict[str, Any] = {
        "problems": len(problems),
        "tv_target_opt": pooled(
            [(p["target"]["freq"], p["optimum"]["freq"], p["samples"]) for p in problems]
        ),
        "tv_floor": float(np.mean([p["tv_floor"] for p in problems])),
        "specs": {
            name: {
                key: pooled(
                    [(p["specs"][name][key]["freq"], p["optimum"]["freq"], p["samples"]) for p in problems]
                )
                for key in first["specs"][name]
            }
            for name in first["specs"]
        },
    }
    if all("exact" in p for p in problems):
        out["exact"] = {
            "tv_target_opt": float(np.mean([p["exact"]["tv_target_opt"] for p in problems])),
            "specs": {
                name: np.mean([p["exact"]["specs"][name] for p in problems], axis=0).tolist()
                for name in first["exact"]["specs"]
            },
        }
    return out


def exact_answer_tv(
    tree: Any, beta: float, n_grid: Sequence[int], variants: Mapping[str, SearchConfig], prm: str
) -> dict[str, Any]:
    """Tabular backend (answers are the responses): the exact TV(π_target, π*) and the exact TV between each
    variant's law and π* at each n."""
    from specs_rl.exact import optimal_log_law, sequence_log_law, specs_log_law, tv

    star = optimal_log_law(tree, beta)
    out: dict[str, Any] = {"tv_target_opt": tv(sequence_log_law(tree, tree.target), star), "specs": {}}
    for name, search in variants.items():
        laws = [specs_log_law(tree, dataclasses.replace(search, n=n), prm=prm) for n in n_grid]
        out["specs"][name] = [tv(star, law.log_q) for law in laws]
    return out
