"""Forward + detect latency of the deformable correspondence network on CPU.

Usage::

    python bench/deformable_speed.py --threads 2 --repeats 20

Times ``DeformableCorrespondenceNet.detect`` (preprocessing, backbone, FPN, dense head, the
deformable attention of the selected queries, the PnP solves and the NMS) on random images at
1600x900 and 640x480 (uint8, as the ROS node decodes them; ``--float-images`` for float) for
:func:`~epropnp_lib.nets.deformable.small_config` with random weights.  ``--queries`` sets how
many queries pass the score threshold (a trained network on a street scene keeps a few tens);
the first ``--warmup`` calls are not timed.  Besides wall-clock percentiles it reports the
process CPU time per call (summed over threads), which stays meaningful on a machine shared
with other jobs: with ``--threads 1`` it approximates the single-core latency of a quiet
machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from epropnp_lib.nets.deformable import DeformableCorrespondenceNet, small_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--queries", type=int, default=30, help="queries solved per image")
    parser.add_argument("--input-scale", type=float, default=None)
    parser.add_argument("--float-images", action="store_true",
                        help="float images in [0, 1] instead of uint8 (as decoded by the node)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {} if args.input_scale is None else {"input_scale": args.input_scale}
    # Threshold 0 with pre_nms_top_k spread over the 3 levels: a fixed number of PnP solves.
    cfg = small_config(score_threshold=0.0, pre_nms_top_k=max(1, args.queries // 3),
                       **overrides)
    net = DeformableCorrespondenceNet(cfg).eval()
    for width, height in ((1600, 900), (640, 480)):
        img = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
        if args.float_images:
            img = img.float() / 255
        f = 0.8 * width
        cam = torch.tensor([[[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]])
        times, cpu = [], []
        for i in range(args.warmup + args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            dets = net.detect(img, cam)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                times.append(dt * 1000)
                cpu.append(dc * 1000)
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        kind = "float" if args.float_images else "uint8"
        print(f"{width}x{height} {kind} input_scale={cfg.input_scale} threads={args.threads} "
              f"solved={dets[0].boxes.num_boxes}: wall p50 {statistics.median(times):.1f} ms, "
              f"p95 {p95:.1f} ms, min {times[0]:.1f} ms; CPU time (all threads) p50 "
              f"{statistics.median(cpu):.1f} ms")


if __name__ == "__main__":
    main()
