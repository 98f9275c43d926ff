"""What a study's code is handed: the trial's context and a stage's context, as protocols.

The engine's classes (skeptic.trial.RunningTrial, skeptic.stages.RunningStage) implement
them. A study annotates `ctx: TrialContext[Params]` and `ctx.params` has its own Params
type. Nothing here imports Ray, MLflow or torch at run time.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch

P_co = TypeVar("P_co", bound=BaseModel, covariant=True)


class TrialContext(Protocol[P_co]):
    """One trial: its parameters, data and device, and `report` once per epoch."""

    @property
    def params(self) -> P_co: ...  # the study's Params, resolved for this trial

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def data(self) -> dict[str, Any]: ...  # what the study's prepare_data returned

    @property
    def start_epoch(self) -> int: ...  # the first epoch to run (after a restore)

    @property
    def state(self) -> dict[str, Any] | None: ...  # the last checkpointed state, if restored

    @property
    def upstream(self) -> dict[str, Any]: ...  # stage name -> its result

    @property
    def weights_path(self) -> str | None: ...  # the spec's model.weights_path

    @property
    def rank(self) -> int: ...  # this process's rank among the trial's workers

    @property
    def world_size(self) -> int: ...  # the trial's training processes (resources.workers)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Wrap forward passes in this: bf16 autocast on CUDA when the spec asks for it."""
        ...

    def prepare_model(self, model: torch.nn.Module, *, conv: bool = True) -> torch.nn.Module:
        """The module to train, from a model already on `device`: channels_last on CUDA for
        a conv net, torch.compile when the spec asks, DistributedDataParallel over the
        trial's workers. Keep the plain model for state_dict(), evaluation and checkpoints
        (they share its parameters)."""
        ...

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This worker's part of a global mini-batch's indices (all of them for one worker):
        draw the same global order on every worker and train on the shard."""
        ...

    def report(
        self,
        metrics: dict[str, float],
        state: dict[str, Any],
        samples: int = 0,
        progress: float | None = None,
    ) -> None:
        """End of an epoch: checkpoint `state` (tensors and plain values; the model's
        weights under "model" and its builder config under "model_config"), log `metrics`.
        `samples` processed this epoch gives `throughput`; `progress` (0-1) feeds the
        time estimate."""
        ...


class StageContext(Protocol):
    """One upstream stage job: its config (the values of the stage's `depends_on`)."""

    @property
    def stage(self) -> str: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def data(self) -> dict[str, Any]: ...

    @property
    def upstream(self) -> dict[str, dict[str, Any]]: ...  # earlier stages' results

    @property
    def weights_path(self) -> str | None: ...  # the spec's model.weights_path

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics (e.g. per epoch) to the stage's MLflow run."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager: ...


class OneProcess:
    """The multi-worker part of a TrialContext for code that calls a study's `train`
    outside Skeptic (a test's stand-in context, a benchmark's plain loop): one process,
    rank 0, the model trained as it is. Subclass it and add params, data, report, ..."""

    rank: int = 0
    world_size: int = 1
    weights_path: str | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare_model(self, model: torch.nn.Module, *, conv: bool = True) -> torch.nn.Module:
        return model

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx
