"""epropnp_training: training, evaluation and reproduction CLIs (installed as ``epropnp_training``).

* train / evaluate / reproduce command-line entry points, single process or ``torchrun`` (DDP)
  for more than one device (:mod:`.train`, :mod:`.evaluate`, :mod:`.reproduce`);
* flat YAML configurations (``config/train/``) parsed into dataclasses that reject unknown keys
  (:mod:`.config`);
* the engine (:mod:`.engine`) and one module per task (``tasks_*``): LineMOD/BOP, nuScenes
  (evaluated by the devkit's ``DetectionEval``), a toy task.

Imports :mod:`epropnp_lib`; neither :mod:`epropnp_lib` nor :mod:`epropnp_ros` imports this
package.
"""
