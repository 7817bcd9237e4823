"""The deformable correspondence network (EPro-PnP paper 4.2, Fig. 5): FCOS3D-style monocular
3D detection with learned 2D-3D correspondences solved by EPro-PnP 4DoF.

``config`` (settings), ``heads`` (dense FCOS head), ``model`` (the network), ``loss`` (training
loss), ``inference`` (multi-start solve, BEV NMS); the public names are exported here.
"""

from epropnp_lib.nets.deformable.config import (
    DeformableLossConfig,
    DeformableNetConfig,
    small_config,
)
from epropnp_lib.nets.deformable.heads import FCOSHead
from epropnp_lib.nets.deformable.inference import Detections
from epropnp_lib.nets.deformable.loss import DeformableLosses
from epropnp_lib.nets.deformable.model import (
    CHECKPOINT_KIND,
    DeformableCheckpointError,
    DeformableCorrespondenceNet,
    DenseOutput,
    NetworkInput,
    QueryOutput,
)

__all__ = [
    "CHECKPOINT_KIND",
    "DeformableCheckpointError",
    "DeformableCorrespondenceNet",
    "DeformableLossConfig",
    "DeformableLosses",
    "DeformableNetConfig",
    "DenseOutput",
    "Detections",
    "FCOSHead",
    "NetworkInput",
    "QueryOutput",
    "small_config",
]
