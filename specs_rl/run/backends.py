"""The backends a run can use, registered in one place: a backend's name maps to its config section and builder.

A backend is a module with a config section (a dataclass with ``validate()``) and a function building a
:class:`specs_rl.interfaces.Task` from a run config. Adding one is a new module, one line in :data:`BACKENDS` and
its section field in :class:`specs_rl.run.config.RunConfig` (named as the backend; a test checks every registered
backend has one); ``backend: <name>`` selects it. The builder is imported only when its backend runs, so a tabular
run never imports transformers and the core never imports a served client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from specs_rl.interfaces import Task
from specs_rl.models.config import ModelsConfig
from specs_rl.tabular import TabularTaskConfig
from specs_rl.vllm.config import VLLMConfig


@dataclass(frozen=True)
class Backend:
    """``section``: the dataclass of the ``<name>:`` config section; ``build``: ``"module:function"`` taking the
    run config and returning a Task; ``uses_data``: the backend reads its problems from ``data:``; ``flat``: the
    section's keys may also be given at the top level (``K=6`` for ``tabular.K=6``)."""

    section: type
    build: str
    uses_data: bool = True
    flat: bool = False


BACKENDS: dict[str, Backend] = {
    "tabular": Backend(TabularTaskConfig, "specs_rl.tabular:build_task", uses_data=False, flat=True),
    "hf": Backend(ModelsConfig, "specs_rl.hf.build:build_task"),
    "vllm": Backend(VLLMConfig, "specs_rl.run.backends:vllm_task"),
}


def vllm_task(cfg: Any) -> Task:
    """``backend: vllm``'s Task, its in-process PRM (one vLLM cannot serve) built by the HF backend: the two backends
    import nothing from each other, so the run layer joins them here."""
    from specs_rl.hf.build import build_prm
    from specs_rl.vllm.build import build_task

    return build_task(cfg, prm_factory=build_prm)


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Torch's thread count (this thread's) as it was before the block, once the block ends. A ``backend: vllm`` run
    gives its in-process parts the core layout's count (:mod:`specs_rl.vllm.layout`) for the whole run; an entry
    point called in-process (a test, a notebook, ``specs-rl demo`` after another) gets its own back."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


C = TypeVar("C", bound=type)


def with_backends(cls: C | None = None, *, defaults: dict[str, Callable[[], Any]] | None = None) -> Any:
    """Class decorator: ``cls`` plus one field per registered backend, named as the backend, holding its section.
    Used by the theory workbench's config, which declares its own search keys; the run configs hold a
    :class:`~specs_rl.run.config.RunConfig` instead.

    ``defaults`` gives a recipe its own default section (``{"tabular": lambda: TabularTaskConfig(H=3)}``)."""

    def wrap(base: C) -> C:
        extra = []
        for name, spec in BACKENDS.items():
            factory = (defaults or {}).get(name, spec.section)
            meta = {"help": f"settings of backend: {name}", "flat": spec.flat}
            extra.append((name, spec.section, field(default_factory=factory, metadata=meta)))
        new = dataclasses.make_dataclass(base.__name__, extra, bases=(base,))
        new.__module__, new.__qualname__, new.__doc__ = base.__module__, base.__qualname__, base.__doc__
        return new  # type: ignore[return-value]

    return wrap if cls is None else wrap(cls)


def validate_backend(cfg: Any) -> None:
    """The selected backend's section (and ``data`` when the backend reads it); the other sections are unused."""
    spec = backend(cfg.backend)
    getattr(cfg, cfg.backend).validate()
    if spec.uses_data:
        cfg.data.validate()


def build_task(cfg: Any) -> Task:
    """The Task of ``cfg.backend`` (problems, parts, grading), built by its registered function. Backends that do
    not read ``data`` get ``data.shard`` applied here, so ``shard=i/k`` slices every backend alike."""
    from specs_rl.datasets import parse_shard

    spec = backend(cfg.backend)
    module, _, fn = spec.build.partition(":")
    task: Task = getattr(importlib.import_module(module), fn)(cfg)
    shard = getattr(getattr(cfg, "data", None), "shard", None)
    if not spec.uses_data and shard is not None:
        i, k = parse_shard(shard)
        task.problems = task.problems[i::k]
    return task
