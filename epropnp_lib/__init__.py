"""epropnp_lib: the EPro-PnP probabilistic PnP layer (ROS-free, device-agnostic PyTorch).

Conventions (frames, quaternion order, covariance layout) are in
:mod:`epropnp_lib.conventions`.
"""

__version__ = "0.1.0"
