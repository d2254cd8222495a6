"""``specs-rl demo``: the embedded default, SPECS against beam search and the baselines, with no GPU and no download.

    specs-rl demo                      # configs/demo/tabular.yaml, writes runs/demo
    specs-rl demo out=/tmp/demo n_grid=[16]

It is ``specs-rl compare`` on the demo config (any compare key can be overridden): the comparison table, the
accuracy-versus-latency plot, an offline W&B run, ``results.jsonl`` and ``summary.json`` in ``out``; then one line
comparing SPECS with beam search on the target.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eval import compare
from specs_rl.cli import entry_point
from specs_rl.config import config_from_argv

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "tabular.yaml"


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    cfg = config_from_argv(compare.CompareConfig, argv, "specs-rl demo")
    rc = compare.main(argv)
    if rc:
        return rc
    rows = {
        (r["method"], r["n"]): r
        for r in json.loads((Path(cfg.out) / "summary.json").read_text())["aggregate"]
    }
    for n in cfg.n_grid:
        spec, base = rows.get(("specs", n)), rows.get(("beam_search_target", n))
        if spec and base and spec.get("accuracy") is not None and base.get("accuracy") is not None:
            print(
                f"SPECS / beam search (target), n={n}: latency x{spec['latency_mean_s'] / base['latency_mean_s']:.2f}, "
                f"accuracy {100 * (spec['accuracy'] - base['accuracy']):+.1f} points"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
