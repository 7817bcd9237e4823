#!/usr/bin/env bash
# Train the demo detector models/detector_small_synthetic.pt
# (config/train/nuscenes_synthetic_heading.yaml): generate the domain-randomised training
# scenes, the in-distribution and the shifted validation scenes, train, evaluate on both
# validation sets.  Leaves the model in runs/nuscenes_synthetic_heading/model.pt, which is the
# bundled model (models/README.md: metrics, sha256; 65 min on the shared 2-core machine).
#   tools/train_heading_detector.sh [DATA_DIR]   (default: runs/heading_data in the repository)
set -euo pipefail
DATA="${1:-}"
case "$DATA" in
    "") ;;
    /*) ;;
    *) DATA="$PWD/$DATA" ;;  # relative to where the script is called from
esac
cd "$(dirname "$0")/.."
DATA="${DATA:-runs/heading_data}"
source tools/env.sh
CONFIG=config/train/nuscenes_synthetic_heading.yaml
RUN=runs/nuscenes_synthetic_heading
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
VAL_SCENES=(scene-0103 scene-0916)
python -m epropnp_lib.generators.nuscenes --out "$DATA/train" --look training \
    --scenes scene-0061 scene-0553 scene-0655 scene-0757 scene-0796 scene-1077 scene-1094 \
    scene-1100 --samples-per-scene 60 --image-size 640 360 --lidar-azimuth-steps 360 --seed 0
python -m epropnp_lib.generators.nuscenes --out "$DATA/val" --look training \
    --scenes "${VAL_SCENES[@]}" --samples-per-scene 10 --image-size 640 360 \
    --lidar-azimuth-steps 360 --seed 1
python -m epropnp_lib.generators.nuscenes --out "$DATA/val_shifted" --look shifted \
    --scenes "${VAL_SCENES[@]}" --samples-per-scene 10 --image-size 640 360 \
    --lidar-azimuth-steps 360 --seed 1
python -m epropnp_training.train --config "$CONFIG" --set "data.dataroot=$DATA/train" \
    --set "log_dir=$RUN"
for split in val val_shifted; do
    python -m epropnp_training.evaluate --config "$CONFIG" --set "data.dataroot=$DATA/$split" \
        --split mini_val --checkpoint "$RUN/model.pt" --out "$RUN/${split}_metrics.json"
done
echo "model: $RUN/model.pt, metrics: $RUN/val_metrics.json $RUN/val_shifted_metrics.json"
