"""The config of a run: the algorithm settings (:class:`specs_rl.settings.SearchConfig`, top level), the backend
and its section, the data, where to write, the seed."""

from __future__ import annotations

from dataclasses import dataclass, field

from specs_rl.datasets import DataConfig
from specs_rl.run.backends import BACKENDS, validate_backend, with_backends
from specs_rl.settings import SearchConfig


@with_backends
@dataclass
class RunConfig(SearchConfig):
    """``specs-rl search``: one method over one task. Algorithm fields (``n``, ``beta``, ...) are top-level; each
    registered backend has its section (``tabular:``, ``hf:``, ...), of which ``backend`` picks one."""

    backend: str = field(default="tabular", metadata={"help": f"one of {', '.join(BACKENDS)}"})
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "the problems of backends that read a dataset"}
    )
    out: str = field(default="runs/search", metadata={"help": "output directory"})
    seed: int = field(default=0, metadata={"help": "seed of the search's torch.Generator"})
    batch_size: int = field(
        default=1, metadata={"help": "problems searched together (1 = the paper's latency setting)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        validate_backend(self)
