"""The configs of a run by composition: :class:`RunConfig` (what every recipe runs on: the algorithm settings, the
backend and its section, the data, where to write) and :class:`SearchRunConfig` (``specs-rl search``: a run, one
method preset and a seed).

Sections marked ``flat`` lend their keys to the level above (:mod:`specs_rl.config`'s alias table): ``beta=2`` is
``search.beta=2``, ``K=6`` is ``tabular.K=6``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specs_rl.config import PART, ConfigError, given_keys
from specs_rl.datasets import DataConfig
from specs_rl.errors import SpecsError
from specs_rl.methods import METHOD_PRESETS, check_method, pinned_value, preset
from specs_rl.models.config import ModelsConfig
from specs_rl.run.backends import BACKENDS, validate_backend
from specs_rl.settings import SearchConfig
from specs_rl.tabular import TabularTaskConfig
from specs_rl.vllm.config import VLLMConfig

FLAT = {"flat": True}  # a section whose keys may be given without its name (K for tabular.K)


@dataclass
class RunConfig:
    """What every recipe runs on: the search settings (``search:``, keys also given flat: ``n``, ``beta``, ...), the
    backend and one section per registered backend (``tabular:``, keys also flat: ``K``, ``H``; ``hf:``;
    ``vllm:``), of which ``backend`` picks one, the data, the output directory and the batch size."""

    search: SearchConfig = field(
        default_factory=SearchConfig, metadata={"help": "the algorithm settings", **PART}
    )
    backend: str = field(default="tabular", metadata={"help": f"one of {', '.join(BACKENDS)}"})
    tabular: TabularTaskConfig = field(
        default_factory=TabularTaskConfig, metadata={"help": "settings of backend: tabular", **FLAT}
    )
    hf: ModelsConfig = field(default_factory=ModelsConfig, metadata={"help": "settings of backend: hf"})
    vllm: VLLMConfig = field(default_factory=VLLMConfig, metadata={"help": "settings of backend: vllm"})
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "the problems of backends that read a dataset"}
    )
    out: str = field(default="runs/search", metadata={"help": "output directory"})
    batch_size: int = field(
        default=1, metadata={"help": "problems searched together (1 = the paper's latency setting)"}
    )

    def validate(self) -> None:
        """Its parts: the search settings, the batch size, the selected backend's section (and ``data`` when the
        backend reads it); the other backends' sections are not used."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.search.validate()
        validate_backend(self)


@dataclass
class SearchRunConfig:
    """``specs-rl search``: one method preset over one task. The run's keys are top-level (``n``, ``beta``,
    ``backend``, ``tabular.K``, ``data.limit``, ...)."""

    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "the task and settings", **PART})
    method: str = field(
        default="specs",
        metadata={
            "help": f"the method preset (its pinned settings apply), one of {', '.join(METHOD_PRESETS)}"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the search's torch.Generator (per problem)"})

    def validate(self) -> None:
        try:
            check_method(self.method)
        except SpecsError as e:
            raise ValueError(str(e)) from None
        self.run.validate()
        self.search_config()

    def search_config(self) -> SearchConfig:
        """The run's search settings with the preset's pinned values applied, validated. A given search key set to
        another value than the preset pins is refused (it would be silently overridden), as compare refuses it."""
        search = self.run.search
        pinned = METHOD_PRESETS[self.method]
        for key in sorted(given_keys(self, "run.search") & set(pinned)):
            pin = pinned_value(self.method, key, search.n)
            if getattr(search, key) != pin:
                raise ConfigError(
                    f"{key}={getattr(search, key)!r} is set, but method {self.method} pins {key}={pin!r}: remove "
                    f"{key} or pick a method that runs with it"
                )
        try:
            cfg = preset(search, self.method)
        except SpecsError as e:
            raise ConfigError(str(e)) from None
        if cfg.speculative_tokens and self.run.backend != "hf":
            raise ConfigError(speculative_refusal(self.method, self.run.backend))
        return cfg


def speculative_refusal(method: str, backend: str) -> str:
    """The one-line refusal of a method with ``speculative_tokens`` on a backend without token-level parts."""
    why = (
        "the tabular world is step-level: a token-level rule has nothing to act on there"
        if backend == "tabular"
        else "vLLM speculates inside its server (--speculative-config, a GPU build: the CPU build 0.32.0 samples "
        "wrongly at T > 0)"
    )
    return f"method {method} writes target tokens by speculative sampling, which needs backend: hf ({why})"
