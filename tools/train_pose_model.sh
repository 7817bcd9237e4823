#!/usr/bin/env bash
# Train the demo pose model models/pose_small_synthetic.pt
# (config/train/linemod_synthetic_small.yaml): generate the BOP-format training scenes, the
# held-out validation scenes and the held-out test scenes, train in two stages (from scratch
# on 16 scenes, then continued on those and 16 scenes of a second draw), evaluate the test
# split at the end of each stage, and calibrate the weights and the covariance on the
# validation split.
# Leaves the model in runs/linemod_synthetic_small/model.pt, which is the bundled model
# (models/README.md: metrics, sha256, times).
#   tools/train_pose_model.sh [DATA_DIR]   (default: runs/pose_data in the repository)
set -euo pipefail
DATA="${1:-}"
case "$DATA" in
    "") ;;
    /*) ;;
    *) DATA="$PWD/$DATA" ;;  # relative to where the script is called from
esac
cd "$(dirname "$0")/.."
DATA="${DATA:-runs/pose_data}"
source tools/env.sh
CONFIG=config/train/linemod_synthetic_small.yaml
RUN=runs/linemod_synthetic_small
# One torch thread; the config's data-loader worker reads and crops on the other core.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
GEN=(python -m epropnp_lib.generators.bop --out "$DATA" --images-per-scene 400 --width 320
     --height 240)
# The training split is rebuilt from scratch: stage 1 must see the first draw only (a second
# draw from an earlier run would otherwise still be there as scenes 17-32).
rm -rf "$DATA/lm/train"
"${GEN[@]}" --num-scenes 16 --seed 0
python -m epropnp_lib.generators.bop --out "$DATA" --split test --num-scenes 4 \
    --images-per-scene 25 --width 320 --height 240 --seed 1
# The validation split (a seed of its own) is what the model is calibrated on: the test
# split stays for reporting only.
rm -rf "$DATA/lm/val"
python -m epropnp_lib.generators.bop --out "$DATA" --split val --num-scenes 4 \
    --images-per-scene 25 --width 320 --height 240 --seed 3
# Stage 1: from scratch on the first draw (scenes 1-16), the coordinate and mask losses alone:
# without the PnP solve and the Monte Carlo pose loss in the step, the coordinates, which limit
# the accuracy, get 24000 steps in about 42 min (models/README.md).
python -m epropnp_training.train --config "$CONFIG" --set "data.root=$DATA" \
    --set "log_dir=${RUN}_stage1" --set net.loss.pose_weight=0.0 --set net.loss.reg_weight=0.0
# Stage 2: a second draw (seed 2) added to the training split as scenes 17-32, and 14000 more
# steps on all 32 from the stage-1 model, at half the learning rate, with all the losses (the
# KL pose loss and the derivative regulariser, at the config's weights, train the weights and
# their scale, and correct the object's apparent size that the depth comes from).
"${GEN[@]}" --num-scenes 16 --seed 2 --first-scene-id 17
python -m epropnp_training.train --config "$CONFIG" --set "data.root=$DATA" \
    --set "log_dir=$RUN" --set "init_checkpoint=${RUN}_stage1/model.pt" \
    --set max_steps=14000 --set lr=1.5e-3 --set warmup_steps=100
# The calibration, through the node's processing (epropnp_ros.pose_calibration), stored in the
# model: the weight temperature of best validation pose accuracy, then at it the likelihood
# temperature that puts 95 % of the validation truths inside their 95 % ellipsoids.
python -m epropnp_ros.pose_calibration --checkpoint "$RUN/model.pt" --bop-root "$DATA" \
    --split val --out "$RUN/model.pt"
echo "model: $RUN/model.pt, metrics: $RUN/metrics.json"
