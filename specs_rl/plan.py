"""What a run will need, found without loading any weights: ``specs-rl plan`` and the check ``compare``, ``search``
and ``serve`` run first.

For each model the plan says where it comes from (a local directory, the Hugging Face cache, the hub, a GGUF file,
or a ``tiny:`` model built in-process), its parameter count and its bytes at the dtype the run loads it in. The
count is read, never guessed:

- safetensors headers of the local (or cached) weight files: the exact element count of every tensor;
- else ``model.safetensors.index.json``'s ``metadata.total_size`` (bytes at the stored dtype) when every tensor is
  stored in one dtype that the header of one shard names;
- else the architecture built from ``config.json`` on torch's ``meta`` device (no memory, no weights): exact for the
  architectures transformers knows;
- else, for a hub id when the hub can be reached (``HF_HUB_OFFLINE`` unset), the hub's safetensors metadata
  (``huggingface_hub.get_safetensors_metadata``: a few kilobytes, no weights);
- else, for the paper's hub models, a copy of their ``config.json`` shipped with the package
  (``specs_rl/assets/configs``: ``index.json`` says where each came from), built on the meta device; the plan says
  the count is the architecture's, from a shipped copy of the config, not read from the weights;
- otherwise ``unknown``: the plan says so and does not count the model in a fit check.

Memory per device is an estimate with its formula shown: weights + the key/value cache of the cached prefixes
(``2 x layers x kv_heads x head_dim x dtype bytes`` per token) for in-process models, and each server's share of
its GPU for served ones. A device whose needs exceed its memory is a :class:`PlanError`, one line, before anything is
downloaded or loaded.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specs_rl.errors import SpecsError

GIB = 1024**3
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    # safetensors dtype names
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class PlanError(SpecsError):
    """A run that cannot fit the memory it would have; the message is one line naming the device and the sums."""


@dataclass
class ModelFacts:
    """Where a model comes from and how large it is. ``params`` / ``config`` are None when they could not be read
    (``how`` says why)."""

    role: str
    name: str
    source: str  # "local dir" | "HF cache" | "hub" | "tiny" | "gguf" | "missing"
    where: str
    params: int | None = None
    how: str = ""  # how the count was read, or why it is unknown
    config: dict[str, Any] | None = None

    def bytes_at(self, dtype: str) -> int | None:
        return None if self.params is None else self.params * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> int | None:
        """``2 x layers x kv_heads x head_dim x dtype bytes`` (keys and values of every layer), from config.json."""
        c = self.config or {}
        c = c.get("text_config", c)
        try:
            layers = int(c["num_hidden_layers"])
            heads = int(c["num_attention_heads"])
            kv = int(c.get("num_key_value_heads") or heads)
            head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        return 2 * layers * kv * head_dim * DTYPE_BYTES[dtype]


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 1024**2:
            raise ValueError(f"{path}: a safetensors header of {length} bytes")
        return json.loads(fh.read(length))


def safetensors_params(files: Sequence[Path]) -> int:
    """The element count of every tensor in the headers of ``files`` (no tensor data read)."""
    total = 0
    for f in files:
        for name, meta in _safetensors_header(f).items():
            if name == "__metadata__":
                continue
            total += math.prod(meta["shape"])
    return total


def _index_params(index: Path, folder: Path) -> int | None:
    """``total_size / dtype bytes`` from a sharded checkpoint's index, when a shard's header shows one dtype."""
    data = json.loads(index.read_text())
    total = (data.get("metadata") or {}).get("total_size")
    shards = sorted(set((data.get("weight_map") or {}).values()))
    if not total or not shards:
        return None
    first = folder / shards[0]
    if not first.is_file():
        return None
    dtypes = {m["dtype"] for k, m in _safetensors_header(first).items() if k != "__metadata__"}
    if len(dtypes) != 1:
        return None
    return int(total) // DTYPE_BYTES[dtypes.pop()]


def meta_params(config: dict[str, Any]) -> int:
    """The parameter count of the architecture ``config`` describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        cls = _model_class(config)
        model = cls._from_config(cfg) if hasattr(cls, "_from_config") else cls.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def _model_class(config: dict[str, Any]) -> Any:
    """The class named by ``architectures``: transformers' own, the project's native PRM classes (Qwen2.5-Math-PRM,
    Skywork-o1-Open-PRM), or the auto class of a causal LM / token / sequence classifier. Any other architecture
    raises: counting it as something else would print a wrong figure."""
    import transformers

    arch = (config.get("architectures") or [""])[0]
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    native = {"Qwen2ForProcessRewardModel": "qwen_prm", "Qwen2ForPrmModel": "skywork_prm"}
    if arch in native:
        from specs_rl.hf.prm_arch import qwen2_prm_class

        return qwen2_prm_class(native[arch])
    if arch.endswith("ForTokenClassification"):
        return transformers.AutoModelForTokenClassification
    if arch.endswith("ForSequenceClassification"):
        return transformers.AutoModelForSequenceClassification
    if not arch or arch.endswith("ForCausalLM"):
        return transformers.AutoModelForCausalLM
    raise ValueError(f"architecture {arch} is not one the planner can build")


def _from_folder(facts: ModelFacts, folder: Path) -> ModelFacts:
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        facts.config = json.loads(cfg_path.read_text())
    weights = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if weights and (
        not index.is_file() or len(weights) == len(set(json.loads(index.read_text())["weight_map"].values()))
    ):
        facts.params, facts.how = safetensors_params(weights), "safetensors headers"
        return facts
    if index.is_file():
        n = _index_params(index, folder)
        if n is not None:
            facts.params, facts.how = n, "safetensors index total_size"
            return facts
    return _from_config(facts)


def _from_config(facts: ModelFacts) -> ModelFacts:
    if facts.config is None:
        facts.how = "no config.json or weights found"
        return facts
    try:
        facts.params, facts.how = meta_params(facts.config), "config.json, built on the meta device"
    except Exception as e:  # noqa: BLE001 - an architecture transformers does not know stays unknown
        facts.how = f"config.json not buildable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return facts


def _cached_folder(repo: str, revision: str | None) -> Path | None:
    """The folder of ``repo`` in the local Hugging Face cache holding its config.json, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo, "config.json", revision=revision)
    return Path(hit).parent if isinstance(hit, str) else None


SHIPPED_CONFIGS = Path(__file__).parent / "assets" / "configs"


def shipped_config(repo: str) -> tuple[dict[str, Any], str] | None:
    """``(config, what the copy is)`` of the copy of ``repo``'s config.json shipped with the package, if any
    (``index.json`` also records the address each was taken from)."""
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    entry = index.get(repo)
    if entry is None:
        return None
    config = json.loads((SHIPPED_CONFIGS / entry["dir"] / "config.json").read_text())
    return config, entry["copy"]


def _hub_params(repo: str, revision: str | None) -> tuple[int | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return None, "not in the local cache, and the hub is offline (HF_HUB_OFFLINE)"
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(repo, revision=revision)
        return int(sum(meta.parameter_count.values())), "hub safetensors metadata"
    except Exception as e:  # noqa: BLE001 - unreachable, gated, no safetensors: unknown, said why
        return None, f"hub metadata unavailable ({type(e).__name__})"


def model_facts(
    role: str,
    name: str,
    *,
    revision: str | None = None,
    gguf_file: str | None = None,
    tiny_config: dict[str, Any] | None = None,
) -> ModelFacts:
    """Where ``name`` comes from and its parameter count, read as the module docstring says (no weights loaded).

    ``tiny_config``: for a ``tiny:`` source, the config of the model the backend would build in-process."""
    if name.startswith("tiny"):
        facts = ModelFacts(role, name, "tiny", "built in-process", config=tiny_config)
        return _from_config(facts) if tiny_config else facts
    if gguf_file is not None or name.endswith(".gguf"):
        path = Path(name).expanduser() / gguf_file if gguf_file else Path(name).expanduser()
        facts = ModelFacts(role, name, "gguf", str(path))
        if not path.is_file():
            facts.source, facts.how = "missing", "GGUF file not found"
            return facts
        try:
            from gguf import GGUFReader

            reader = GGUFReader(str(path))
            facts.params = int(sum(int(t.n_elements) for t in reader.tensors))
            facts.how = "GGUF tensor headers (loaded dequantized)"
        except Exception as e:  # noqa: BLE001
            facts.how = f"GGUF not readable here ({type(e).__name__}; pip install gguf)"
        return facts
    local = Path(name).expanduser()
    if local.is_dir():
        return _from_folder(ModelFacts(role, name, "local dir", str(local)), local)
    if name.startswith(("/", "./", "../", "~")):
        return ModelFacts(role, name, "missing", str(local), how="local path not found")
    cached = _cached_folder(name, revision)
    if cached is not None:
        return _from_folder(ModelFacts(role, name, "HF cache", str(cached)), cached)
    facts = ModelFacts(role, name, "hub", f"https://huggingface.co/{name}")
    facts.params, facts.how = _hub_params(name, revision)
    shipped = shipped_config(name) if facts.params is None and revision is None else None
    if shipped is not None:
        facts.config, origin = shipped
        why = facts.how
        _from_config(facts)
        if facts.params is not None:
            facts.how = (
                f"{why}; the architecture from a copy of its config.json shipped with specs-rl ({origin}; "
                "specs_rl/assets/configs), built on the meta device, not read from the weights"
            )
    return facts


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@dataclass
class DeviceNeed:
    """What one device holds: named items (weights, caches, server shares) in bytes; ``memory`` its size (None:
    unknown, not checked)."""

    device: str
    memory: int | None
    items: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def known(self) -> int:
        return sum(b for _, b in self.items if b is not None)

    @property
    def unknown(self) -> list[str]:
        return [n for n, b in self.items if b is None]

    def check(self) -> None:
        """A :class:`PlanError` (one line) when the known needs exceed the device's memory."""
        if self.memory is not None and self.known > self.memory:
            parts = " + ".join(f"{n} {fmt_bytes(b)}" for n, b in self.items if b is not None)
            raise PlanError(
                f"{self.device}: the run needs {fmt_bytes(self.known)} ({parts}) but the device has "
                f"{fmt_bytes(self.memory)}: use a smaller dtype, fewer models per device, or more devices"
            )

    def lines(self) -> list[str]:
        size = fmt_bytes(self.memory) if self.memory is not None else "memory unknown (not checked)"
        out = [f"  {self.device} ({size}):"]
        out += [f"    {n}: {fmt_bytes(b)}" for n, b in self.items]
        total = f"    total: {fmt_bytes(self.known)}"
        if self.memory is not None:
            total += f" of {fmt_bytes(self.memory)} ({self.known / self.memory:.0%})"
        if self.unknown:
            total += f" + unknown ({', '.join(self.unknown)})"
        return [*out, total]


def gpu_memory() -> dict[int, int]:
    """Total memory of each visible CUDA device (empty without CUDA). Imports torch only if it is installed."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())}


def host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
