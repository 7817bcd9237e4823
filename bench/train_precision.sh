#!/usr/bin/env bash
# Training throughput and loss in float32 against CPU bfloat16 autocast (amp: true,
# amp_dtype: bfloat16), interleaved: each bundled model fine-tuned for STEPS steps at its
# recipe's stage-2 learning rate, two rounds of the two settings (bench/README.md).
#   bench/train_precision.sh DETECTOR_DATAROOT POSE_BOP_ROOT [OUT]   (STEPS=200 by default)
# DETECTOR_DATAROOT: a nuScenes-format root with mini_train scenes; POSE_BOP_ROOT: a BOP root
# with a train split (commands in bench/README.md).
set -euo pipefail
DET="$(realpath "$1")"; POSE="$(realpath "$2")"; OUT="$(realpath -m "${3:-runs/train_precision}")"
cd "$(dirname "$0")/.."
source tools/env.sh
export OMP_NUM_THREADS=1
STEPS="${STEPS:-200}"
mkdir -p "$OUT"
for round in 1 2; do
    for amp in false true; do
        python -m epropnp_training.train --config config/train/nuscenes_synthetic_heading.yaml \
            --set "data.dataroot=$DET" --set "log_dir=$OUT/detector_amp_${amp}_$round" \
            --set init_checkpoint=models/detector_small_synthetic.pt --set "max_steps=$STEPS" \
            --set lr=2.5e-4 --set warmup_steps=10 --set "amp=$amp" --set amp_dtype=bfloat16 \
            --set progress_bar=false > "$OUT/detector_amp_${amp}_$round.log" 2>&1
        python -m epropnp_training.train --config config/train/linemod_synthetic_small.yaml \
            --set "data.root=$POSE" --set "log_dir=$OUT/pose_amp_${amp}_$round" \
            --set init_checkpoint=models/pose_small_synthetic.pt --set "max_steps=$STEPS" \
            --set lr=1.5e-3 --set warmup_steps=10 --set "amp=$amp" --set amp_dtype=bfloat16 \
            --set eval_split=null --set progress_bar=false > "$OUT/pose_amp_${amp}_$round.log" 2>&1
    done
done
python - "$OUT" <<'PY'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| run | samples/s (mean of the logged intervals after the first) | mean loss, second half |")
print("|---|---:|---:|")
for run in sorted(p for p in out.iterdir() if p.is_dir()):
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    rate = [float(r["samples_per_s"]) for r in rows[1:]]
    loss = [float(r["loss"]) for r in rows[len(rows) // 2:]]
    print(f"| {run.name} | {sum(rate) / len(rate):.1f} | {sum(loss) / len(loss):.3f} |")
PY
