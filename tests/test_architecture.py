"""The architecture in pyproject.toml's import-linter contracts holds, and the contracts can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"
needs_linter = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (the dev extra)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_linter
def test_the_import_contracts_are_kept():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 kept, 0 broken" in res.stdout


def _copy_sources(dst: Path) -> None:
    """The four root packages (Python files only) and pyproject.toml, to break on purpose."""
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    for pkg in ("specs_rl", "eval", "train", "theory"):
        for src in (REPO / pkg).rglob("*.py"):
            out = dst / src.relative_to(REPO)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(src.read_text())


@needs_linter
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("specs_rl/verify.py", "import specs_rl.hf.parts", "the pure core"),
        ("specs_rl/types.py", "import specs_rl.search", "no import cycles inside specs_rl"),
        ("specs_rl/run/summary.py", "import eval.compare", "the library never imports a workbench"),
        ("theory/converge.py", "import eval.compare", "no workbench imports another workbench"),
        ("eval/bench_loop.py", "import eval.bench_served", "no import cycles inside the workbenches"),
    ],
)
def test_each_contract_catches_its_violation(tmp_path, module, line, broken):
    _copy_sources(tmp_path)
    path = tmp_path / module
    path.write_text(
        path.read_text().replace(
            "from __future__ import annotations\n", f"from __future__ import annotations\n\n{line}\n", 1
        )
    )
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert f"{broken}" in res.stdout.replace("\n", " ") and "BROKEN" in res.stdout
