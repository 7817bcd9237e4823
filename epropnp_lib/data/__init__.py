"""Dataset readers (BOP / LineMOD, nuScenes through the devkit) returning documented tensors,
and each dataset's constants."""
