"""Scale-out: the PRM recipe under ``accelerate launch`` with 2 CPU processes (gloo), and every training /
accelerate YAML parses (paper-scale ones included, with ``use_cpu=true`` since bf16 needs a GPU to validate)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(
    p for r in ("prm", "orm", "draft") for p in (ROOT / "configs" / "train").glob(f"{r}_*.yaml")
)
ACCEL_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prm_recipe_runs_under_accelerate_with_two_cpu_processes(tmp_path) -> None:
    out = tmp_path / "prm"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wb"),
        "OMP_NUM_THREADS": "1",  # two processes share this machine's cores
    }
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        "configs/accelerate/cpu_2proc.yaml",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "train.prm",
        "--config",
        "configs/train/prm_tiny.yaml",
        "dataset_name=toy:64",
        f"output_dir={out}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["train_rows"] == 16
    assert (out / "model.safetensors").is_file() and (out / "prm_config.json").is_file()
    # both processes logged their row counts; only the main one wrote the W&B run
    assert proc.stdout.count("[prm] after cutting at max_length") == 2
    from specs_rl.tracking import find_offline_runs, read_offline_run

    runs = find_offline_runs(tmp_path / "wb")
    assert len(runs) == 1
    losses = [h["train/loss"] for h in read_offline_run(runs[0])["history"] if "train/loss" in h]
    assert len(losses) == 4
    print(f"accelerate 2-process PRM run: {seconds:.1f} s")


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_training_config_parses(path: Path) -> None:
    import importlib

    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("python -m train." in first or "accelerate launch" in first)
    recipe = importlib.import_module(f"train.{path.name.split('_')[0]}")
    modes = ["mode=sft", "mode=onpolicy"] if recipe.__name__ == "train.draft" else [None]
    for mode in modes:
        argv = ["--config", str(path), "use_cpu=true", *([mode] if mode else [])]
        raw, script, training, model = recipe.parse(argv)
        assert training.report_to == ["wandb"]
        assert model.model_name_or_path
        assert training.output_dir.startswith("runs/")


@pytest.mark.parametrize("path", ACCEL_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_is_complete(path: Path) -> None:
    text = path.read_text()
    assert text.splitlines()[0].startswith("# accelerate launch --config_file configs/accelerate/")
    cfg = yaml.safe_load(text)
    assert cfg["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert cfg["num_processes"] >= 2 and cfg["num_machines"] == 1
    if cfg["distributed_type"] == "DEEPSPEED":
        assert cfg["deepspeed_config"]["zero_stage"] == 2
    if cfg["distributed_type"] == "FSDP":
        assert cfg["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
