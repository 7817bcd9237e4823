"""nuScenes → rosbag2 conversion throughput, and the closed loop's frames per second.

    .venv/bin/python bench/nuscenes_bag.py [--checkpoint models/detector_small_synthetic.pt]
        [--samples 6] [--image-size 1600x900] [--sweeps] [--cameras ...]

Generates a nuScenes-format scene (``scene-0103``, six cameras) with
:mod:`epropnp_lib.generators.nuscenes`, then times

* the conversion (``epropnp_ros.nuscenes_bag.convert``, mcap, compressed images; camera images
  per second of wall time, and MB/s of bag written), and
* with ``--checkpoint``: the closed loop (``epropnp_ros.closed_loop``: detector node processes,
  lockstep playback, evaluation) -- images per second through the detector nodes over DDS,
  detector latency p50/p95 and the total wall time (node start-up and evaluation included).

Prints a markdown table row per measurement (paste into bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--image-size", type=_size, default=(1600, 900))
    parser.add_argument("--sweeps", action="store_true", help="also generate/convert sweeps")
    parser.add_argument("--cameras", nargs="*", default=[])
    args = parser.parse_args()

    from epropnp_lib.generators.nuscenes import generate_nuscenes_mini
    from epropnp_ros.nuscenes_bag import CAMERAS, ConversionConfig, convert

    cameras = tuple(args.cameras) or CAMERAS
    w, h = args.image_size
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nuscenes"
        t = time.perf_counter()
        generate_nuscenes_mini(root, scenes=("scene-0103",), samples_per_scene=args.samples,
                               image_size=(w, h), sweeps=args.sweeps)
        gen_s = time.perf_counter() - t
        bag = Path(tmp) / "bag"
        t = time.perf_counter()
        summary = convert(ConversionConfig(dataroot=str(root), output=str(bag), cameras=cameras,
                                           sweeps=args.sweeps))
        conv_s = time.perf_counter() - t
        images = sum(n for topic, n in summary.message_counts.items()
                     if topic.endswith("/image_raw/compressed"))
        size_mb = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        print(f"CPU {cpu}; {w}x{h}, {len(cameras)} cameras, {args.samples} samples"
              f"{' + sweeps' if args.sweeps else ''}; generation {gen_s:.1f} s")
        print("| measurement | images | wall s | images/s | notes |")
        print("|---|---:|---:|---:|---|")
        print(f"| conversion (mcap, JPEG pass-through) | {images} | {conv_s:.2f} | "
              f"{images / conv_s:.1f} | {size_mb:.1f} MB bag, {size_mb / conv_s:.1f} MB/s |")
        if args.checkpoint:
            from epropnp_ros.closed_loop import ClosedLoopConfig, run_closed_loop

            t = time.perf_counter()
            result = run_closed_loop(ClosedLoopConfig(
                bags=(str(bag),), checkpoint=args.checkpoint, dataroot=str(root),
                out=str(Path(tmp) / "loop"), cameras=cameras, render=False,
            ))
            loop_s = time.perf_counter() - t
            lat = result.scores["latency_ms"]
            n = result.frames_processed
            busy = n * lat["p50"] / 1000
            print(f"| closed loop (detector nodes over DDS, lockstep) | {n} | {loop_s:.1f} | "
                  f"{n / busy:.2f} (detector), {n / loop_s:.2f} (whole run) | latency p50 "
                  f"{lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms; {result.frames_dropped} "
                  "dropped; whole run includes node start-up and DetectionEval |")


if __name__ == "__main__":
    main()
