"""Progress bars for the long loops (compare, tune, theory sampling, toy-world measurement): tqdm on stderr.

On a terminal the bar redraws in place; in a log (CI, a file) it is plain ASCII and redrawn at most every 10 s, so
a long run leaves a readable trail rather than thousands of updates.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(
    total: int, *, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True
) -> Any:
    """A ``tqdm`` bar (disabled when ``enabled`` is false or there is nothing to do)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc or None,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or total == 0,
        mininterval=0.2 if tty else 10.0,
        dynamic_ncols=tty,
        ascii=not tty,
        leave=True,
    )
