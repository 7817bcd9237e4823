#!/usr/bin/env bash
# Train the demo detector models/detector_small_synthetic.pt
# (config/train/nuscenes_synthetic_heading.yaml): generate the domain-randomised training
# scenes, the in-distribution and the shifted validation scenes, train in five stages (from
# scratch, then fine-tuned on a second, third, fourth and fifth draw of the training scenes),
# calibrate the heading posterior on a sixth draw, evaluate on both validation sets.  Leaves
# the model in runs/nuscenes_synthetic_heading/model.pt, which is the bundled model
# (models/README.md: metrics, sha256; about 180 min on the shared 2-core machine, estimated
# from the stages' measured times).
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
# Stage 1: from scratch on the first draw of the training scenes.
python -m epropnp_training.train --config "$CONFIG" --set "data.dataroot=$DATA/train" \
    --set "log_dir=${RUN}_stage1"
# Stages 2-5: a new draw of the same scenes each (seeds 2-5: other samples, looks and camera
# mounts), on which the previous stage's model is fine-tuned for 8000 steps at half the
# learning rate.  The stage-1 model's loss on the unseen second draw averages 1.34 over the
# first 500 steps against 0.82 on its own images at the end of stage 1: more data, not more
# passes over the same images.  The stages raised the default look's NDS on the generated
# mini_val through the rig node from 0.32 to 0.42 and cut its mAOE from 0.64 to 0.37
# (models/README.md).
prev="${RUN}_stage1"
for stage in 2 3 4 5; do
    python -m epropnp_lib.generators.nuscenes --out "$DATA/train$stage" --look training \
        --scenes scene-0061 scene-0553 scene-0655 scene-0757 scene-0796 scene-1077 \
        scene-1094 scene-1100 --samples-per-scene 60 --image-size 640 360 \
        --lidar-azimuth-steps 360 --seed "$stage"
    if [ "$stage" = 5 ]; then out="$RUN"; else out="${RUN}_stage$stage"; fi
    python -m epropnp_training.train --config "$CONFIG" --set "data.dataroot=$DATA/train$stage" \
        --set "log_dir=$out" --set "init_checkpoint=$prev/model.pt" \
        --set max_steps=8000 --set lr=2.5e-4
    prev="$out"
done
# The heading posterior's calibration: the likelihood temperature that puts 90 % of the true
# headings of a sixth draw (never trained on) inside the 90 % highest-density regions of the
# node's posterior samples (epropnp-detector-calibrate), stored in the model.
python -m epropnp_lib.generators.nuscenes --out "$DATA/calib" --look training \
    --scenes scene-0061 scene-0553 scene-0655 scene-0757 scene-0796 scene-1077 scene-1094 \
    scene-1100 --samples-per-scene 5 --image-size 640 360 --lidar-azimuth-steps 360 --seed 6
python -m epropnp_ros.detector_calibration --checkpoint "$RUN/model.pt" \
    --dataroot "$DATA/calib" --split mini_train --out "$RUN/model.pt"
for split in val val_shifted; do
    python -m epropnp_training.evaluate --config "$CONFIG" --set "data.dataroot=$DATA/$split" \
        --split mini_val --checkpoint "$RUN/model.pt" --out "$RUN/${split}_metrics.json"
done
echo "model: $RUN/model.pt, metrics: $RUN/val_metrics.json $RUN/val_shifted_metrics.json"
