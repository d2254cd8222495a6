"""``specs-rl serve``: start the vLLM servers a run config needs, wait until they answer, print their URLs, and stop
them on exit (Ctrl-C, SIGTERM, or one of them dying).

    specs-rl serve --config configs/demo/toymath.yaml                        # this CPU: draft and target
    specs-rl demo backend=vllm vllm.draft.url=http://127.0.0.1:PORT vllm.target.url=http://127.0.0.1:PORT2

It reads the run of any recipe's config (``search``, ``compare``, ``demo``, ``tune``: their other keys are skipped,
and the ``backend`` key is ignored): the models are the
``hf:`` section, the servers' settings the ``vllm:`` section (``dtype``, ``max_model_len``,
``gpu_memory_utilization``, ``tensor_parallel_size``, ``devices``, ``extra_args``; ``vllm.python`` is the vLLM
install). A part whose ``vllm.<part>.url`` is set is served at that URL's port (its host must be this machine);
otherwise at a free port on ``vllm.host``. The PRM gets a server when ``vllm.prm.backend`` resolves to ``vllm``.
``parts=[draft]`` serves only those parts (to restart one server at its old URL, or to put the PRM on its own box).
The last line printed is the overrides that point a run at the servers.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

from specs_rl.cli import entry_point
from specs_rl.config import PART, describe, load_config, split_argv, top_keys
from specs_rl.errors import SpecsError
from specs_rl.run import CompareConfig, RunConfig, SearchRunConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")


@dataclass
class ServeConfig:
    """A run (the models: ``hf:``; the servers: ``vllm:``) plus which parts to serve."""

    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "the run to serve", **PART})
    parts: list[str] = field(
        default_factory=list,
        metadata={"help": "parts to serve, from draft, target, prm; empty = every part the config serves"},
    )


def serve_config(argv: Sequence[str]) -> ServeConfig:
    """The command line's config: the file's keys of other recipes (``methods``, ``seed``, ``tune``, ...) are
    skipped; any other unknown key is refused."""
    from specs_rl.run.tune import TuneConfig

    path, overrides, wants_help = split_argv(argv)
    if wants_help:
        print("usage: specs-rl serve [--config PATH] [key=value ...]\n\nkeys:")
        print("\n".join(describe(ServeConfig)))
        raise SystemExit(0)
    others = top_keys(SearchRunConfig) | top_keys(CompareConfig) | top_keys(TuneConfig)
    return load_config(ServeConfig, path, overrides, other_keys=others)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    from specs_rl.vllm.parts import resolve_pooling
    from specs_rl.vllm.task import (
        GENERATORS,
        _check_servable,
        _load_tokenizer,
        _prm_format,
        launch_specs,
        pooler_config,
        prm_backend,
        start_servers,
    )

    cfg = serve_config(sys.argv[1:] if argv is None else argv)
    vc, hf = cfg.run.vllm, cfg.run.hf
    try:
        vc.validate()
        hf.validate()
    except ValueError as e:
        raise SpecsError(str(e)) from None
    parts = [*GENERATORS, *(["prm"] if prm_backend(vc, hf) == "vllm" else [])]
    unknown = [p for p in cfg.parts if p not in parts]
    if unknown:
        raise SpecsError(f"parts: {unknown[0]!r} is not served by this config; it serves {', '.join(parts)}")
    parts = [p for p in parts if not cfg.parts or p in cfg.parts]
    for part in parts:
        _check_servable(f"hf.{part}", getattr(hf, part))
        url = getattr(vc, part).url
        if url is not None and urlparse(url).hostname not in LOCAL_HOSTS:
            raise SpecsError(f"vllm.{part}.url is {url}: specs-rl serve starts servers on this machine only")
    pooler = None
    if "prm" in parts:
        fmt = _prm_format(hf.prm)
        sep = _load_tokenizer(hf.prm, "hf.prm")(fmt.step_separator, add_special_tokens=False)["input_ids"]
        try:
            pooler = pooler_config(resolve_pooling(vc.prm.pooling, fmt, sep), sep[-1])
        except (ValueError, IndexError) as e:
            raise SpecsError(f"vllm.prm.pooling: {e}") from None
    specs = launch_specs(vc, hf, parts, pooler)
    print(
        f"starting {len({s.key() for s in specs.values()})} vLLM server(s) for {', '.join(parts)} ...",
        flush=True,
    )
    servers = start_servers(vc, list(specs.values()))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        by_key = {s.spec.key(): s for s in servers}
        urls = {}
        for part, spec in specs.items():
            server = by_key[spec.key()]
            urls[part] = server.url
            print(
                f"vllm.{part:<6} {server.url}  serves {spec.served_name!r}  ready in {server.ready_s:.0f} s  "
                f"log {server.log}",
                flush=True,
            )
        print("Ctrl-C stops them. Point a run at them with:", flush=True)
        print(" ".join(f"vllm.{p}.url={u}" for p, u in urls.items()), flush=True)
        while not stop.wait(1.0):
            dead = [s for s in servers if not s.alive()]
            if dead:
                for s in dead:
                    print(
                        f"error: the server of {s.spec.part} exited ({s.log}): {s.log_tail()}",
                        file=sys.stderr,
                    )
                return 1
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for s in servers:
            s.stop()
        print("servers stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
