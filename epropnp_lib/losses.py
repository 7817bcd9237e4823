"""Training losses: the Monte Carlo KL pose loss (Eq. 5-6) and derivative regularisation
(Eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.epropnp import EProPnPResult
from epropnp_lib.errors import ShapeError
from epropnp_lib.geometry.pose import PoseSpace
from epropnp_lib.geometry.rotations import wrap_angle


class MonteCarloPoseLoss(nn.Module):
    """KL divergence to a Dirac target (Eq. 5) with dynamic loss normalisation.

    ``L_KL = L_tgt + L_pred`` per element, where ``L_tgt`` is the cost at the target pose and
    ``L_pred`` the AMIS estimate of the log normaliser.  Elements whose solve failed
    (DEGENERATE / INVALID_INPUT) contribute zero.  The batch mean is divided by a running
    average of ``norm_factor`` (the weight normalisation of MonoRUN that the paper adopts:
    pass the detached mean global weight scale, or mean ``w2d``), updated with ``momentum``
    in training mode only, so the loss keeps a steady gradient magnitude while the weights
    grow.  An empty batch gives a zero loss.

    Args:
        init_norm_factor: initial value of the running normaliser.
        momentum: update rate of the running normaliser.
    """

    norm_factor: torch.Tensor

    def __init__(self, init_norm_factor: float = 1.0, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("norm_factor", torch.tensor(float(init_norm_factor)))

    def forward(
        self, result: EProPnPResult, norm_factor: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Scalar loss from a :class:`EProPnPResult` computed with a ``pose_target``.

        Args:
            result: the layer output.
            norm_factor: current value of the normaliser statistic (detached), or ``None``
                to keep the running value unchanged.
        """
        if result.target_cost is None:
            raise ShapeError("MonteCarloPoseLoss needs a result computed with pose_target")
        if self.training and norm_factor is not None:
            with torch.no_grad():
                value = torch.as_tensor(norm_factor, dtype=self.norm_factor.dtype,
                                        device=self.norm_factor.device)
                self.norm_factor.mul_(1 - self.momentum).add_(self.momentum * value)
        per_elem = kl_loss_per_element(result)
        # The batch mean; an empty batch (e.g. an image without objects) gives 0, not NaN.
        mean = per_elem.sum() / max(per_elem.numel(), 1)
        return mean / self.norm_factor.clamp_min(1e-12)


def kl_loss_per_element(result: EProPnPResult) -> torch.Tensor:
    """``(B,)`` unnormalised ``L_tgt + L_pred``; zero where the solve failed."""
    if result.target_cost is None:
        raise ShapeError("the result was computed without pose_target")
    loss = result.target_cost + result.log_normalizer
    return torch.where(result.valid & torch.isfinite(loss), loss, torch.zeros_like(loss))


def derivative_regularization_loss(
    space: type[PoseSpace],
    pose_step: torch.Tensor,
    pose_target: torch.Tensor,
    valid: torch.Tensor | None = None,
    position_weight: float = 1.0,
    orientation_weight: float = 1.0,
    beta: float = 1.0,
) -> torch.Tensor:
    """Eq. 10: distance between the one-step pose ``y* (+) dy`` and the target.

    Position: smooth L1 (``beta``), summed over x, y, z.  Orientation: a cosine distance,
    ``1 - cos(yaw - yaw_gt)`` (4DoF) or ``1 - <q, q_gt>^2 = (1 - cos(angle)) / 2`` (6DoF;
    invariant to the quaternion sign).

    Args:
        space: the pose space of the poses.
        pose_step: ``(B, dim)`` differentiable one-step poses.
        pose_target: ``(B, dim)`` target poses.
        valid: ``(B,)`` bool mask of elements to include (default all).

    Returns:
        Scalar mean over the valid elements (0 if there are none).
    """
    if pose_step.shape != pose_target.shape or pose_step.shape[-1] != space.dim:
        raise ShapeError(
            f"pose_step {tuple(pose_step.shape)} and pose_target {tuple(pose_target.shape)} "
            f"must both be (B, {space.dim})"
        )
    pos = F.smooth_l1_loss(pose_step[:, :3], pose_target[:, :3], beta=beta, reduction="none")
    if space.dim == 7:
        dot = (pose_step[:, 3:] * pose_target[:, 3:]).sum(-1)
        rot = 1.0 - dot * dot
    else:
        rot = 1.0 - torch.cos(wrap_angle(pose_step[:, 3] - pose_target[:, 3]))
    per_elem = position_weight * pos.sum(-1) + orientation_weight * rot
    if valid is None:
        return per_elem.sum() / max(per_elem.numel(), 1)  # 0 for an empty batch
    mask = valid.to(per_elem.dtype)
    return (per_elem * mask).sum() / mask.sum().clamp_min(1.0)
