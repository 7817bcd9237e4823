"""epropnp_training: training, evaluation and reproduction CLIs (installed as ``epropnp_training``).

What lives here (see DESIGN section 1):

* train / evaluate / reproduce command-line entry points, single process or ``torchrun`` (DDP)
  for more than one device;
* flat YAML configurations (``config/``) parsed into dataclasses that reject unknown keys;
* named, versioned evaluation presets (nuScenes via ``nuscenes-devkit``, BOP/LineMOD).

Imports :mod:`epropnp_lib`; neither :mod:`epropnp_lib` nor :mod:`epropnp_ros` imports this
package.
"""
