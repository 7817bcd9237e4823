"""AMIS proposal distributions of EPro-PnP (torch only, batched, generator-seeded).

* :class:`MultivariateT` -- position, R^3, density w.r.t. Lebesgue measure on R^3.
* :class:`VonMisesUniformMix` -- yaw, density w.r.t. Lebesgue measure on the circle [-pi, pi).
* :class:`AngularCentralGaussian` -- unit quaternion (w, x, y, z), density w.r.t. the uniform
  surface measure on S^3 (area 2 pi^2).

Common interface (``D`` = event size, ``batch`` = leading batch shape, usually ``(B,)``):
``sample(num, generator) -> (num, *batch, D)`` (sample dim first), ``log_prob(x: (K, *batch, D))
-> (K, *batch)`` (``x.shape[:-1]`` may be any shape broadcasting with ``batch``), and the
classmethod ``fit(samples: (K, *batch, D), log_weights: (K, *batch), ...)`` fitting to the
weighted samples (weights = softmax of ``log_weights`` over ``K``).  Randomness comes only from
the passed :class:`torch.Generator`; dtype and device follow the parameters.
"""

from epropnp_lib.distributions.angular_central_gaussian import AngularCentralGaussian
from epropnp_lib.distributions.multivariate_t import MultivariateT
from epropnp_lib.distributions.von_mises import VonMisesUniformMix, a1_inverse

__all__ = ["AngularCentralGaussian", "MultivariateT", "VonMisesUniformMix", "a1_inverse"]
