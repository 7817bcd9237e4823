#!/usr/bin/env bash
# Regenerate the demo detector models/detector_small_synthetic.pt (see models/README.md):
# generate the nuScenes-format training and validation scenes, train, evaluate, copy.
#   tools/train_demo_detector.sh [DATA_DIR]   (default: runs/demo_data in the repository)
set -euo pipefail
DATA="${1:-}"
case "$DATA" in
    "") ;;
    /*) ;;
    *) DATA="$PWD/$DATA" ;;  # relative to where the script is called from
esac
cd "$(dirname "$0")/.."
DATA="${DATA:-runs/demo_data}"
source tools/env.sh
CONFIG=config/train/nuscenes_synthetic_small.yaml
RUN=runs/nuscenes_synthetic_small
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m epropnp_lib.generators.nuscenes --out "$DATA/train" \
    --scenes scene-0061 scene-0553 scene-0655 scene-0757 scene-0796 scene-1077 scene-1094 \
    scene-1100 --samples-per-scene 20 --image-size 640 360 --lidar-azimuth-steps 360 --seed 0
python -m epropnp_lib.generators.nuscenes --out "$DATA/val" \
    --scenes scene-0103 scene-0916 --samples-per-scene 10 --image-size 640 360 \
    --lidar-azimuth-steps 360 --seed 1
# stage 1: from scratch, 2000 steps
python -m epropnp_training.train --config "$CONFIG" --set "data.dataroot=$DATA/train"
# stage 2: 1600 more steps from the stage-1 network at half the learning rate
python -m epropnp_training.train --config "$CONFIG" --set "data.dataroot=$DATA/train" \
    --set "init_checkpoint=$RUN/model.pt" --set lr=2.5e-4 --set warmup_steps=0 \
    --set max_steps=1600 --set "log_dir=${RUN}_ft"
python -m epropnp_training.evaluate --config "$CONFIG" --set "data.dataroot=$DATA/val" \
    --split mini_val --checkpoint "${RUN}_ft/model.pt" --out "${RUN}_ft/val_metrics.json"
cp "${RUN}_ft/model.pt" models/detector_small_synthetic.pt
echo "model: models/detector_small_synthetic.pt, metrics: ${RUN}_ft/val_metrics.json"
