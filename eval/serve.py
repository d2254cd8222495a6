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
The last line printed is the overrides that point a run at the servers. Before anything starts, the servers'
memory is checked as ``specs-rl plan`` does (a server whose weights exceed its share of its GPU, or CPU servers
that exceed this machine's RAM, is refused in one line).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from eval import plan
from specs_rl.cli import entry_point
from specs_rl.config import PART, describe, load_config, split_argv, top_keys
from specs_rl.run import CompareConfig, RunConfig, SearchRunConfig


@dataclass
class ServeConfig:
    """A run (the models: ``hf:``; the servers: ``vllm:``) plus which parts to serve."""

    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "the run to serve", **PART})
    parts: list[str] = field(
        default_factory=list,
        metadata={"help": "parts to serve, from draft, target, prm; empty = every part the config serves"},
    )


def parse(argv: Sequence[str]) -> ServeConfig:
    """The command line's config, checked, without starting a server (what the docs test calls)."""
    return serve_config(argv)


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
    from specs_rl.vllm import start_servers

    cfg = serve_config(sys.argv[1:] if argv is None else argv)
    plan.check_serve(cfg.run, cfg.parts)  # the servers fit their devices (read from headers: nothing started)
    by_part = start_servers(
        cfg.run.vllm, cfg.run.hf, cfg.parts, announce=lambda line: print(line, flush=True)
    )
    servers = list(dict.fromkeys(by_part.values()))  # a draft that is also the target: one server
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for part, server in by_part.items():
            print(
                f"vllm.{part:<6} {server.url}  serves {server.spec.served_name!r}  ready in {server.ready_s:.0f} s  "
                f"log {server.log}",
                flush=True,
            )
        print("Ctrl-C stops them. Point a run at them with:", flush=True)
        print(" ".join(f"vllm.{p}.url={s.url}" for p, s in by_part.items()), flush=True)
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
