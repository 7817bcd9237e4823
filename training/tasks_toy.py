"""A seconds-long EPro-PnP training task: check an installation, a ``torchrun`` set-up or the
engine itself without any dataset.

Each sample is a seeded 6DoF PnP problem (:func:`epropnp_lib.pnp.problems.random_problems`,
640x480 camera) whose points carry a visible quality cue ``q`` in [0, 1]: the pixel noise of a
point grows as ``q`` falls (``noise_px * (0.2 + 4 (1 - q)^2)``).  A small per-point network sees
``(q, normalised x2d, x3d)`` and predicts the 2D weights ``w2d`` as a spatial Softmax over the
points times a learned global scale (the paper's weight parameterisation); it is trained with the
Monte Carlo KL pose loss of :class:`~epropnp_lib.epropnp.EProPnP6DoF`, so it has to learn that
low-``q`` points deserve low weights.  Evaluation solves the held-out split and reports median
rotation / translation errors (object units are arbitrary: depth 6 to 10).

    python -m epropnp_training.train --config config/train/toy.yaml
    torchrun --nproc-per-node 2 -m epropnp_training.train --config config/train/toy.yaml
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from epropnp_lib.epropnp import EProPnP6DoF, MonteCarloConfig
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.pose import Pose6DoF
from epropnp_lib.losses import MonteCarloPoseLoss
from epropnp_lib.pnp.problems import random_problems

from .config import TrainConfig
from .distributed import derive_seed
from .task import StepOutput, Task, TrainingModule

__all__ = ["CONFIG_CLASS", "ToyDataConfig", "ToyNetConfig", "ToyTrainConfig", "build_task"]


@dataclass(frozen=True)
class ToyNetConfig:
    """The per-point weight network and its EPro-PnP layer.

    Attributes:
        hidden: width of the two hidden layers.
        dropout: dropout after each hidden layer.
        num_iterations: AMIS iterations of the Monte Carlo loss.
        num_samples: AMIS samples per iteration.
    """

    hidden: int = 32
    dropout: float = 0.1
    num_iterations: int = 2
    num_samples: int = 32

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.num_iterations < 1 or self.num_samples < 1:
            raise ConfigError("hidden, num_iterations and num_samples must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ToyDataConfig:
    """Sizes of the generated splits.

    Attributes:
        num_train: training problems.
        num_val: held-out problems (``eval_split: val``).
        num_points: correspondences per problem.
        noise_px: pixel noise of a perfect-quality point.
    """

    num_train: int = 64
    num_val: int = 32
    num_points: int = 16
    noise_px: float = 1.0

    def __post_init__(self) -> None:
        if min(self.num_train, self.num_val) < 1 or self.num_points < 4:
            raise ConfigError("num_train, num_val must be >= 1 and num_points >= 4")
        if not self.noise_px > 0:
            raise ConfigError(f"noise_px must be positive, got {self.noise_px}")


@dataclass(frozen=True, kw_only=True)
class ToyTrainConfig(TrainConfig):
    """Training config of the toy task (``task: toy``)."""

    task: Literal["toy"] = "toy"
    net: ToyNetConfig = field(default_factory=ToyNetConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)


CONFIG_CLASS = ToyTrainConfig


class ToyDataset(Dataset[dict[str, torch.Tensor]]):
    """Seeded problems; item ``i`` depends on ``(seed, split, i)`` only.

    Items: ``feats (N, 6)`` = (q, normalised x2d (2), x3d (3)), ``x3d (N, 3)``, ``x2d (N, 2)``,
    ``cam_mats (3, 3)``, ``pose (7,)``.
    """

    def __init__(self, cfg: ToyDataConfig, split: str, seed: int) -> None:
        self.cfg, self.split, self.seed = cfg, split, seed
        self.size = cfg.num_train if split == "train" else cfg.num_val

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "toy", self.split, index))
        n = self.cfg.num_points
        prob = random_problems(1, n, dof=6, generator=gen)
        quality = torch.rand(n, generator=gen)
        std = self.cfg.noise_px * (0.2 + 4.0 * (1.0 - quality) ** 2)
        x2d = prob.x2d[0] + std[:, None] * torch.randn(n, 2, generator=gen)
        cam = prob.cam_mats[0]
        x2d_norm = (x2d - cam[:2, 2]) / cam[[0, 1], [0, 1]]
        feats = torch.cat((quality[:, None], x2d_norm, prob.x3d[0]), dim=-1)
        return {"feats": feats, "x3d": prob.x3d[0], "x2d": x2d, "cam_mats": cam,
                "pose": prob.pose[0]}


class ToyWeightNet(nn.Module):
    """Per-point MLP: ``feats (B, N, 6) -> w2d (B, N, 2)`` (Softmax over N times a global scale).
    """

    def __init__(self, cfg: ToyNetConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.mlp = nn.Sequential(
            nn.Linear(6, h), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(h, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, 2),
        )
        self.log_scale = nn.Parameter(torch.full((2,), math.log(16.0)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(feats)
        return logits.softmax(dim=1) * self.log_scale.exp()


class ToyModule(TrainingModule):
    """Weight net + EPro-PnP 6DoF + Monte Carlo KL loss."""

    model: ToyWeightNet

    def __init__(self, cfg: ToyNetConfig) -> None:
        super().__init__(ToyWeightNet(cfg))
        self.pnp = EProPnP6DoF(MonteCarloConfig(num_iterations=cfg.num_iterations,
                                                num_samples=cfg.num_samples))
        self.loss = MonteCarloPoseLoss()

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> StepOutput:
        w2d = self.model(batch["feats"])
        # The PnP solve and the Monte Carlo loss run in float32 even under mixed precision.
        with torch.autocast(w2d.device.type, enabled=False):
            w2d = w2d.float()
            result = self.pnp(batch["x3d"], batch["x2d"], w2d, batch["cam_mats"],
                              pose_target=batch["pose"], generator=generator, with_step=False)
            loss = self.loss(result, norm_factor=w2d.detach().mean())
        rot_err = Pose6DoF.rotation_error(result.pose, batch["pose"]).mean()
        return StepOutput(loss, {"rot_err_deg": torch.rad2deg(rot_err)})


class ToyTask(Task):
    """The toy task (see the module docstring)."""

    net_checkpoint_kind = "toy_weight_net"
    config: ToyTrainConfig

    def build_module(self) -> ToyModule:
        return ToyModule(self.config.net)

    def train_dataset(self) -> ToyDataset:
        return ToyDataset(self.config.data, "train", self.config.seed)

    def evaluate(
        self, module: TrainingModule, *, split: str, out_dir: Path, device: torch.device,
        likelihood_temperature: float = 1.0, weight_temperature: float = 1.0,
    ) -> dict[str, Any]:
        if split not in ("train", "val"):
            raise ConfigError(f"toy task: split {split!r} is not 'train' or 'val'")
        if not isinstance(module, ToyModule):
            raise TypeError(f"toy task cannot evaluate a {type(module).__name__}")
        data = ToyDataset(self.config.data, split, self.config.seed)
        items = [data[i] for i in range(len(data))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        sol = module.pnp.solve(batch["x3d"], batch["x2d"], module.model(batch["feats"]),
                               batch["cam_mats"])
        rot = torch.rad2deg(Pose6DoF.rotation_error(sol.pose, batch["pose"]))
        trans = (sol.pose[:, :3] - batch["pose"][:, :3]).norm(dim=-1)
        return {
            "num_samples": len(items),
            "median_rotation_error_deg": float(rot.median()),
            "median_translation_error": float(trans.median()),
        }


def build_task(config: TrainConfig) -> ToyTask:
    """The task for ``config`` (a :class:`ToyTrainConfig`)."""
    if not isinstance(config, ToyTrainConfig):
        raise ConfigError(f"toy task needs a ToyTrainConfig, got {type(config).__name__}")
    return ToyTask(config)
