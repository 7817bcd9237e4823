"""What a task gives the training engine: its network and loss as a :class:`TrainingModule`
(returning a :class:`StepOutput` per batch), its training set and its evaluation (:class:`Task`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.nets.checkpoint import save_checkpoint

from .config import TrainConfig

__all__ = ["EpochDataset", "StepOutput", "Task", "TrainingModule", "task_network"]

_Net = TypeVar("_Net", bound=nn.Module)


@runtime_checkable
class EpochDataset(Protocol):
    """A training set whose items also depend on the epoch (random augmentation drawn from
    ``(seed, epoch, index)``): the engine calls :meth:`set_epoch` before each epoch."""

    def set_epoch(self, epoch: int) -> None: ...


class StepOutput(NamedTuple):
    """What a :class:`TrainingModule` returns for one batch.

    Attributes:
        loss: ``()`` the total loss to minimise (differentiable).
        logs: named ``()`` scalars to log (e.g. the loss terms); detached by the engine.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


class TrainingModule(nn.Module, ABC):
    """A network (``self.model``) together with its training loss.

    ``forward(batch, generator)`` computes the loss of one batch; the engine wraps the whole
    module in ``DistributedDataParallel``, so every parameter and buffer that the loss uses
    (e.g. the running normaliser of :class:`~epropnp_lib.losses.MonteCarloPoseLoss`) is
    synchronised and checkpointed with the network.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @abstractmethod
    def forward(self, batch: Any, generator: torch.Generator) -> StepOutput:
        """Loss of ``batch`` (already on the module's device); ``generator`` is the only source
        of randomness allowed (it is checkpointed)."""


class Task(ABC):
    """What the engine needs from a task.  Subclasses set :attr:`net_checkpoint_kind`."""

    #: ``kind`` of the network checkpoint that :meth:`export_model` writes.
    net_checkpoint_kind: str = "model"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def build_module(self) -> TrainingModule:
        """The network and its loss, freshly initialised (called under the config's seed)."""

    @abstractmethod
    def train_dataset(self) -> Dataset[Any]:
        """The training set; items should depend on their index only (exact resume)."""

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """The data loader's ``collate_fn`` (``None``: PyTorch's default)."""
        return None

    @abstractmethod
    def evaluate(
        self, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
        likelihood_temperature: float = 1.0, weight_temperature: float = 1.0,
    ) -> dict[str, Any]:
        """Metrics of ``module.model`` (in eval mode, on ``device``) on ``split``; may write
        files (e.g. a results JSON) into ``out_dir``.  ``likelihood_temperature``: the ``T``
        of the likelihood ``exp(-cost / T)`` whose covariances and posterior samples are
        scored (a calibrated checkpoint's, :func:`~epropnp_lib.nets.checkpoint.
        stored_temperature`); tasks that score no posterior leave it unused.
        ``weight_temperature``: the dense network's (a calibrated checkpoint's,
        :func:`~epropnp_lib.nets.dense.stored_weight_temperature`); other tasks leave it
        unused."""

    def export_model(self, module: TrainingModule, path: Path) -> None:
        """Write the network alone as a checkpoint of kind :attr:`net_checkpoint_kind` (the
        file the nodes and ``evaluate`` load), with the network config ``config.net``."""
        net_cfg = getattr(self.config, "net", None)
        save_checkpoint(
            path,
            kind=self.net_checkpoint_kind,
            config=to_dict(net_cfg) if net_cfg is not None else {},
            state_dict=module.model.state_dict(),
        )

    def eval_loader(self, dataset: Dataset[Any],
                    collate_fn: Callable[[list[Any]], Any] | None) -> DataLoader[Any]:
        """The evaluation loader of ``dataset``: in order, ``eval_batch_size`` items per batch,
        ``num_workers`` workers, with a progress bar on a terminal."""
        return _ProgressLoader(dataset, batch_size=self.config.eval_batch_size, shuffle=False,
                               num_workers=self.config.num_workers, collate_fn=collate_fn)


class _ProgressLoader(DataLoader[Any]):
    """A ``DataLoader`` whose iteration shows a tqdm bar ("evaluating", batches) on a terminal
    (none in a log file or CI)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        yield from tqdm(super().__iter__(), total=len(self), desc="evaluating", unit="batch",
                        disable=None, leave=False)


def task_network(module: TrainingModule, cls: type[_Net]) -> _Net:
    """``module.model``, checked to be the task's network class ``cls``.

    Raises:
        TypeError: another network.
    """
    net = module.model
    if not isinstance(net, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(net).__name__}")
    return net
