"""Benchmark of the EPro-PnP layer against OpenCV, on the CPU (2 threads) or a GPU.

One command produces the table in ``bench/README.md``::

    .venv/bin/python bench/pnp.py                 # CPU, 2 threads
    .venv/bin/python bench/pnp.py --device cuda   # where a GPU exists
    .venv/bin/python bench/pnp.py --write-readme  # also replace the table in bench/README.md

Each case runs in its own child process so that its peak memory (max RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU) is its own.  Times are the median of ``--repeats``
runs after a warm-up; per-problem times divide by the batch size.

``--compare-opencv [B ...]`` instead times the 6DoF solve and OpenCV's ``SOLVEPNP_ITERATIVE``,
``SOLVEPNP_SQPNP`` and ``SOLVEPNP_EPNP`` on the same problems (``--points N ...``), interleaved
round by round in one process, and reports the ratios per batch size (``--write-readme`` writes
that table too); ``--robust-vs-ransac [B]`` compares robust mode with ``solvePnPRansac`` on a
set with 20 % outliers.  ``--pause-sweep [MS ...]`` times both at B=32
right after idle pauses of these lengths (the latency of a node that waits for its frames).
``EPROPNP_NATIVE=0`` in the environment measures the solver without its fused CPU kernels
(:mod:`epropnp_lib.native`); every table says which.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CASES = {
    "solve6_b1": "solve 6DoF (LM, init incl.), B=1, N=64",
    "solve6_b32": "solve 6DoF (LM, init incl.), B=32, N=64",
    "solve6_b512": "solve 6DoF (LM, init incl.), B=512, N=64",
    "solve6_gn_b512": "solve 6DoF (Gauss-Newton, init incl.), B=512, N=64",
    "solve4_b512": "solve 4DoF (LM, init incl.), B=512, N=64",
    "cv_iterative": "OpenCV SOLVEPNP_ITERATIVE, N=64 (loop)",
    "cv_sqpnp": "OpenCV SOLVEPNP_SQPNP, N=64 (loop)",
    "cv_epnp": "OpenCV SOLVEPNP_EPNP, N=64 (loop)",
    "mc6_b32": "Monte Carlo KL loss fwd+bwd 6DoF, B=32, N=512, T=4, K'=128",
    "mc4_b32": "Monte Carlo KL loss fwd+bwd 4DoF, B=32, N=512, T=4, K'=128",
}


def _timed(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None]
) -> tuple[float, float]:
    """Median and best of ``repeats`` timed calls after three warm-up calls (seconds)."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def run_case(case: str, device: str, repeats: int) -> dict[str, float | int | str]:
    """Run one case in this process and return its measurements."""
    from epropnp_lib.epropnp import EProPnP4DoF, EProPnP6DoF
    from epropnp_lib.losses import MonteCarloPoseLoss
    from epropnp_lib.pnp.problems import random_problems
    from epropnp_lib.pnp.solver import SolverConfig, SolverMode, solve_pnp

    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batch = 1
    if case.startswith("solve"):
        batch = int(case.rsplit("_b", 1)[1])
        dof = 4 if case.startswith("solve4") else 6
        mode = SolverMode.GAUSS_NEWTON if "_gn" in case else SolverMode.LEVENBERG_MARQUARDT
        p = random_problems(batch, 64, dof=dof, noise_std=1.0, generator=gen, device=device)
        cfg = SolverConfig(mode=mode)
        seconds = _timed(
            lambda: solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats, dof=dof, config=cfg),
            repeats, sync,
        )
    elif case.startswith("cv_"):
        import cv2

        cv2.setNumThreads(1)
        flag = {"cv_iterative": cv2.SOLVEPNP_ITERATIVE, "cv_sqpnp": cv2.SOLVEPNP_SQPNP,
                "cv_epnp": cv2.SOLVEPNP_EPNP}[case]
        batch = 512
        p = random_problems(batch, 64, noise_std=1.0, dtype=torch.float64, generator=gen)
        arrays = [(p.x3d[i].numpy(), p.x2d[i].numpy(), p.cam_mats[i].numpy())
                  for i in range(batch)]

        no_distortion = p.x3d.new_zeros(5).numpy()

        def loop() -> None:
            for x3d, x2d, k in arrays:
                cv2.solvePnP(x3d, x2d, k, no_distortion, flags=flag)

        seconds = _timed(loop, max(3, repeats // 4), sync)
    else:
        batch = 32
        layer = EProPnP6DoF() if case.startswith("mc6") else EProPnP4DoF()
        dof = layer.space.tangent_dim
        p = random_problems(batch, 512, dof=dof, noise_std=1.0, generator=gen, device=device)
        loss_fn = MonteCarloPoseLoss()

        def step() -> None:
            x3d, x2d, w2d = (t.clone().requires_grad_() for t in (p.x3d, p.x2d, p.w2d))
            g = torch.Generator(device=device).manual_seed(1)
            res = layer(x3d, x2d, w2d, p.cam_mats, pose_target=p.pose, generator=g,
                        with_step=False)
            loss_fn(res).backward()

        seconds = _timed(step, max(3, repeats // 2), sync)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median, best = seconds
    return {"case": case, "ms_total": median * 1e3, "ms_best": best * 1e3,
            "ms_per_problem": median * 1e3 / batch, "ms_per_problem_best": best * 1e3 / batch,
            "batch": batch, "peak_mb": peak_mb}


def _opencv_loop(problems: list[tuple[Any, Any, Any]], dist: Any, flag: int) -> None:
    """``cv2.solvePnP`` once per problem ``(x3d, x2d, K)``."""
    import cv2

    for x3d, x2d, k in problems:
        cv2.solvePnP(x3d, x2d, k, dist, flags=flag)


def _solver_pair(batch: int, num_points: int = 64, flag: int | None = None
                 ) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The 6DoF solve (init incl.) of ``batch`` random problems (1 px noise) and OpenCV's
    ``solvePnP`` with ``flag`` (default ``SOLVEPNP_ITERATIVE``) on the same problems in
    float64, one call per problem."""
    import cv2

    from epropnp_lib.pnp.problems import random_problems
    from epropnp_lib.pnp.solver import solve_pnp

    p = random_problems(batch, num_points, noise_std=1.0,
                        generator=torch.Generator().manual_seed(0))
    p64 = [(p.x3d[i].double().numpy(), p.x2d[i].double().numpy(),
            p.cam_mats[i].double().numpy()) for i in range(batch)]
    dist = p.x3d.new_zeros(5).double().numpy()
    ours = functools.partial(solve_pnp, p.x3d, p.x2d, p.w2d, p.cam_mats)
    flag = cv2.SOLVEPNP_ITERATIVE if flag is None else flag
    return ours, functools.partial(_opencv_loop, p64, dist, flag)


def _median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios ``a[i] / b[i]``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


#: How the tables name the ``--heap`` setting.
HEAP_NOTE = {
    "keep": "Heap policy: `keep_freed_memory` (the nodes' and the training's).",
    "default": "Heap policy: the C library's default (adaptive thresholds).",
}

def kernels_note() -> str:
    """How the tables name the solver's fused CPU kernels' state (``EPROPNP_NATIVE``)."""
    from epropnp_lib import native

    if native.enabled():
        return "Fused CPU kernels (`epropnp_lib.native`): on."
    why = "not built" if not native.built() else f"{native.ENV_VAR}=0"
    return f"Fused CPU kernels (`epropnp_lib.native`): off ({why})."


#: OpenCV methods of :func:`compare_opencv`.
OPENCV_METHODS = ("ITERATIVE", "SQPNP", "EPNP")


def compare_opencv(batches: list[int], rounds: int, threads: int,
                   num_points: tuple[int, ...] = (64,), heap: str = "keep") -> str:
    """Markdown table: 6DoF LM solve (init incl.) vs OpenCV ``SOLVEPNP_ITERATIVE``,
    ``SOLVEPNP_SQPNP`` and ``SOLVEPNP_EPNP`` per problem, on the same problems, interleaved
    round by round in this process (the machine's speed drifts: each round times all back to
    back).  Times: median (best) over the rounds; ratios: median of the per-round ratios."""
    import cv2

    from epropnp_lib.diagnostics import small_op_time_us

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    before = small_op_time_us()
    lines = []
    for n in num_points:
        for batch in batches:
            runs: dict[str, Callable[[], Any]] = {}
            # ITERATIVE's DLT start needs 6 points (non-planar).
            methods = [m for m in OPENCV_METHODS if n >= 6 or m != "ITERATIVE"]
            for method in methods:
                ours, opencv = _solver_pair(batch, n, getattr(cv2, f"SOLVEPNP_{method}"))
                runs[method] = opencv
            runs = {"ours": ours, **runs}
            for _ in range(3):
                for fn in runs.values():
                    fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(rounds):
                for k, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append((time.perf_counter() - t0) / batch * 1e3)
            cells = [f"{statistics.median(times[k]):.4f} ({min(times[k]):.4f})"
                     if k in times else "—" for k in ("ours", *OPENCV_METHODS)]
            ratios = [f"{_median_ratio(times['ours'], times[m]):.2f}" if m in times else "—"
                      for m in OPENCV_METHODS]
            lines.append(f"| {n} | {batch} | " + " | ".join(cells) + " | "
                         + " | ".join(ratios) + " |")
    probe = (f"CPU speed probe (`epropnp_lib.diagnostics.small_op_time_us`): {before:.2f} us "
             f"before, {small_op_time_us():.2f} us after.")
    methods = " | ".join(f"OpenCV {m} (ms/problem)" for m in OPENCV_METHODS)
    ratio_heads = " | ".join(f"ours / {m}" for m in OPENCV_METHODS)
    return "\n".join([
        f"CPU {platform.processor() or platform.machine()}, {threads} torch threads, OpenCV 1 "
        f"thread; torch {torch.__version__}, OpenCV {cv2.__version__}. 1 px noise, "
        f"{rounds} interleaved rounds: median (best).  {HEAP_NOTE[heap]}  {kernels_note()}  "
        f"{probe}",
        "",
        f"| N | B | EPro-PnP 6DoF LM, init incl. (ms/problem) | {methods} | {ratio_heads} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
    ])


def pause_sweep(pauses_ms: list[float], batch: int, rounds: int, threads: int) -> str:
    """Markdown table: the 6DoF solve and OpenCV ``SOLVEPNP_ITERATIVE`` (a loop over the same
    ``batch`` problems) each timed right after an idle pause (``time.sleep``), as a node that
    waits for its next frame would run them.  Per round and pause: both run once back to back
    (warm), then each is timed after its own pause.  Median (best) over the rounds."""
    import cv2

    from epropnp_lib.diagnostics import small_op_time_us

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    before = small_op_time_us()
    ours, opencv = _solver_pair(batch)

    def after_pause(fn: Callable[[], Any], pause: float) -> float:
        time.sleep(pause)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / batch * 1e3

    times: dict[float, tuple[list[float], list[float]]] = {ms: ([], []) for ms in pauses_ms}
    for _ in range(3):
        ours()
        opencv()
    for _ in range(rounds):
        for ms in pauses_ms:
            ours()
            opencv()
            times[ms][0].append(after_pause(ours, ms / 1e3))
            times[ms][1].append(after_pause(opencv, ms / 1e3))
    lines = []
    for ms, (t_ours, t_cv) in times.items():
        lines.append(
            f"| {ms:g} | {statistics.median(t_ours):.4f} ({min(t_ours):.4f}) "
            f"| {statistics.median(t_cv):.4f} ({min(t_cv):.4f}) "
            f"| {statistics.median(t_ours) / statistics.median(t_cv):.2f} |"
        )
    probe = (f"CPU speed probe (`epropnp_lib.diagnostics.small_op_time_us`): {before:.2f} us "
             f"before, {small_op_time_us():.2f} us after.")
    return "\n".join([
        f"CPU {platform.processor() or platform.machine()}, {threads} torch threads, OpenCV 1 "
        f"thread; torch {torch.__version__}, OpenCV {cv2.__version__}. B={batch}, N=64, 1 px "
        f"noise, {rounds} rounds: median (best). {kernels_note()} {probe}",
        "",
        "| pause before the call (ms) | EPro-PnP 6DoF LM, init incl. (ms/problem) "
        "| OpenCV ITERATIVE (ms/problem) | ratio of the medians |",
        "|---:|---:|---:|---:|",
        *lines,
    ])


def _rotation_errors_deg(quats: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(B,)`` angles between unit quaternions ``(B, 4)`` (float64, no acos round-off)."""
    from epropnp_lib.geometry.rotations import quat_multiply

    inv = truth.double() * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    rel = quat_multiply(quats.double(), inv)
    return torch.rad2deg(2 * torch.atan2(rel[:, 1:].norm(dim=-1), rel[:, 0].abs()))


def robust_vs_ransac(batch: int, rounds: int, threads: int, fraction: float = 0.2) -> str:
    """Markdown table: robust mode (``solve_pnp_robust``) and the default solve against OpenCV
    ``solvePnPRansac`` (its defaults: 100 iterations, 8 px, EPnP + ITERATIVE refinement) on
    problems with ``fraction`` of the image points uniform in the image (N = 128, 1 px noise
    on the rest), and the robust mode on the same problems without outliers.  Times
    interleaved round by round (a new problem set each round); failures are rotation errors
    above 5 degrees over all rounds."""
    import cv2

    from epropnp_lib.diagnostics import small_op_time_us
    from epropnp_lib.geometry.rotations import matrix_to_quat
    from epropnp_lib.pnp.problems import random_problems, with_outliers
    from epropnp_lib.pnp.robust import solve_pnp_robust
    from epropnp_lib.pnp.solver import solve_pnp

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    before = small_op_time_us()
    names = ("EPro-PnP robust mode", "EPro-PnP default", "OpenCV solvePnPRansac",
             "EPro-PnP robust mode, no outliers", "EPro-PnP default, no outliers")
    times: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up
        clean = random_problems(batch, 128, noise_std=1.0,
                                generator=torch.Generator().manual_seed(1000 + r))
        p = with_outliers(clean, fraction, generator=torch.Generator().manual_seed(2000 + r))
        q = p.problem
        arrays = [(q.x3d[i].double().numpy(), q.x2d[i].double().numpy(),
                   q.cam_mats[i].double().numpy()) for i in range(batch)]

        def ransac(arrays: list[tuple[Any, Any, Any]] = arrays) -> torch.Tensor:
            quats = []
            for x3d, x2d, k in arrays:
                _, rvec, _, _ = cv2.solvePnPRansac(x3d, x2d, k, None)
                quats.append(matrix_to_quat(torch.from_numpy(cv2.Rodrigues(rvec)[0])))
            return torch.stack(quats)

        calls: dict[str, Callable[[], torch.Tensor]] = {
            names[0]: lambda q=q: solve_pnp_robust(q.x3d, q.x2d, q.w2d, q.cam_mats).pose[:, 3:],
            names[1]: lambda q=q: solve_pnp(q.x3d, q.x2d, q.w2d, q.cam_mats).pose[:, 3:],
            names[2]: ransac,
            names[3]: lambda c=clean: solve_pnp_robust(
                c.x3d, c.x2d, c.w2d, c.cam_mats).pose[:, 3:],
            names[4]: lambda c=clean: solve_pnp(c.x3d, c.x2d, c.w2d, c.cam_mats).pose[:, 3:],
        }
        for name, call in calls.items():
            t0 = time.perf_counter()
            quats = call()
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt / batch * 1e3)
                errors[name].append(_rotation_errors_deg(quats, q.pose[:, 3:]))
    ransac_ms = statistics.median(times[names[2]])
    ransac_err = torch.cat(errors[names[2]]).median().item()
    lines = []
    for name in names:
        err = torch.cat(errors[name])
        ms = statistics.median(times[name])
        ratio = "" if "no outliers" in name else f"{ms / ransac_ms:.2f}"
        rel = "" if "no outliers" in name else f"{err.median().item() / ransac_err:.2f}"
        lines.append(f"| {name} | {100 * (err > 5).double().mean().item():.2f} "
                     f"| {err.median().item():.3f} | {rel} | {ms:.3f} ({min(times[name]):.3f}) "
                     f"| {ratio} |")
    probe = (f"CPU speed probe (`epropnp_lib.diagnostics.small_op_time_us`): {before:.2f} us "
             f"before, {small_op_time_us():.2f} us after.")
    return "\n".join([
        f"CPU {platform.processor() or platform.machine()}, {threads} torch threads, OpenCV 1 "
        f"thread; torch {torch.__version__}, OpenCV {cv2.__version__}. B={batch}, N=128, "
        f"{100 * fraction:.0f} % of the image points uniform in the 640x480 image, 1 px noise "
        f"on the others; {rounds} interleaved rounds, a new problem set each: failures and "
        f"median error over all {rounds * batch} problems, time median (best) over the "
        f"rounds. {kernels_note()} {probe}",
        "",
        "| solve | failures > 5° (%) | median rotation error (°) | error / RANSAC "
        "| ms/problem | time / RANSAC |",
        "|---|---:|---:|---:|---:|---:|",
        *lines,
    ])


def _busy_loop() -> None:
    """A CPU-bound process beside the benchmark (another node on the robot)."""
    while True:
        pass


def contended_child(batches: list[int], rounds: int) -> dict[str, float]:
    """In this process (threads and wait policy already set): median solve time (ms) of each
    batch quiet, then with one busy process started beside it, then quiet again."""
    import multiprocessing

    from epropnp_lib.pnp.problems import random_problems
    from epropnp_lib.pnp.solver import solve_pnp

    out: dict[str, float] = {}
    for batch in batches:
        p = random_problems(batch, 64, noise_std=1.0, generator=torch.Generator().manual_seed(0))

        def median_ms(p: Any = p) -> float:
            for _ in range(3):
                solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                solve_pnp(p.x3d, p.x2d, p.w2d, p.cam_mats)
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1e3

        quiet = median_ms()
        busy = multiprocessing.get_context("spawn").Process(target=_busy_loop, daemon=True)
        busy.start()
        try:
            time.sleep(0.5)
            contended = median_ms()
        finally:
            busy.terminate()
            busy.join()
        out[f"quiet_{batch}"] = min(quiet, median_ms())
        out[f"contended_{batch}"] = contended
    return out


def contended(batches: list[int], rounds: int, heap: str = "keep") -> str:
    """Markdown table: the 6DoF solve quiet and beside one busy process, for torch intra-op
    threads 1 and 2 and OpenMP's default (active) and PASSIVE wait policies; each setting in a
    fresh child process (the wait policy must be set before torch starts)."""
    settings = [(1, None), (2, None), (2, "PASSIVE")]
    lines = []
    for threads, policy in settings:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env.pop("OMP_WAIT_POLICY", None)
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, __file__, "--contended-child", *map(str, batches),
               "--threads", str(threads), "--rounds", str(rounds), "--heap", heap]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                        env=env).stdout.strip().splitlines()[-1])
        for batch in batches:
            q, c = res[f"quiet_{batch}"], res[f"contended_{batch}"]
            lines.append(f"| {threads} | {policy or 'default'} | {batch} | {q:.2f} | {c:.2f} "
                         f"| {c / q:.2f} |")
    return "\n".join([
        f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores); torch "
        f"{torch.__version__}. 6DoF solve, N=64, 1 px noise; median of {rounds} calls quiet "
        f"(the better of before and after) and beside one busy-looping process. {kernels_note()}",
        "",
        "| torch threads | OMP_WAIT_POLICY | B | quiet (ms) | contended (ms) | contended / quiet |",
        "|---:|---|---:|---:|---:|---:|",
        *lines,
    ])


def _write_table(marker_name: str, md: str) -> None:
    """Replace the table between ``<!-- table:NAME -->`` markers in bench/README.md."""
    readme = Path(__file__).with_name("README.md")
    text = readme.read_text()
    marker, end = f"<!-- table:{marker_name} -->", f"<!-- /table:{marker_name} -->"
    pattern = re.compile(re.escape(marker) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"markers {marker} ... {end} not found in {readme}")
    readme.write_text(pattern.sub(lambda _: f"{marker}\n{md}\n{end}", text))


def table(
    rows: list[dict[str, float | int | str]], device: str, threads: int, probe: str = "",
    heap: str = "keep",
) -> str:
    """Markdown table of the measurements (``probe``: the CPU speed before and after)."""
    cpu = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name()
        mem = "peak GPU memory (MiB)"
    else:
        where = f"CPU {cpu}, {threads} threads"
        mem = "peak RSS (MiB)"
    out = [f"Device: {where}; torch {torch.__version__}. Median (best) of the repeats. "
           f"{HEAP_NOTE[heap]} {kernels_note()}{probe}",
           "",
           f"| case | ms per call | ms per problem | {mem} |", "|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {CASES[str(r['case'])]} | {float(r['ms_total']):.2f} ({float(r['ms_best']):.2f}) "
            f"| {float(r['ms_per_problem']):.4f} ({float(r['ms_per_problem_best']):.4f}) "
            f"| {float(r['peak_mb']):.0f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="EPro-PnP benchmark")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the table between the markers in bench/README.md")
    parser.add_argument("--compare-opencv", metavar="B", type=int, nargs="*",
                        help="instead of the cases: time the 6DoF solve against OpenCV "
                             "ITERATIVE at these batch sizes, interleaved (default 32 64 128 512)")
    parser.add_argument("--pause-sweep", metavar="MS", type=float, nargs="*",
                        help="instead of the cases: time the 6DoF solve and OpenCV ITERATIVE "
                             "at B=32 right after idle pauses of these lengths "
                             "(default 0 2 10 33)")
    parser.add_argument("--robust-vs-ransac", metavar="B", type=int, nargs="?", const=128,
                        help="instead of the cases: robust mode, the default solve and OpenCV "
                             "solvePnPRansac on B problems with 20 %% outliers (default 128), "
                             "interleaved")
    parser.add_argument("--contended", metavar="B", type=int, nargs="*",
                        help="instead of the cases: the solve quiet and beside a busy process, "
                             "per thread setting (default B: 32 256)")
    parser.add_argument("--contended-child", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--points", type=int, nargs="+", default=[64],
                        help="numbers of points N of --compare-opencv (default 64)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds of --compare-opencv, --pause-sweep and --robust-vs-ransac")
    parser.add_argument("--heap", choices=("keep", "default"), default="keep",
                        help="keep: the heap policy of the nodes and the training "
                             "(epropnp_lib.allocator.keep_freed_memory), the default; default: "
                             "the C library's adaptive thresholds")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.heap == "keep":
        from epropnp_lib.allocator import keep_freed_memory

        keep_freed_memory()
    if args.compare_opencv is not None:
        md = compare_opencv(args.compare_opencv or [32, 64, 128, 256, 512], args.rounds,
                            args.threads, tuple(args.points), args.heap)
        print(md)
        if args.write_readme:
            _write_table("cv_ratio", md)
        return
    if args.contended_child:
        print(json.dumps(contended_child(args.contended_child, args.rounds)))
        return
    if args.contended is not None:
        md = contended(args.contended or [32, 256], args.rounds, args.heap)
        print(md)
        if args.write_readme:
            _write_table("contended", md)
        return
    if args.robust_vs_ransac is not None:
        md = robust_vs_ransac(args.robust_vs_ransac, args.rounds, args.threads)
        print(md)
        if args.write_readme:
            _write_table("robust", md)
        return
    if args.pause_sweep is not None:
        md = pause_sweep(args.pause_sweep or [0.0, 2.0, 10.0, 33.0], 32, args.rounds,
                         args.threads)
        print(md)
        if args.write_readme:
            _write_table("pause", md)
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.device, args.repeats)))
        return
    from epropnp_lib.diagnostics import small_op_time_us

    before = small_op_time_us()
    rows = []
    for case in args.cases:
        if case.startswith("cv_") and args.device != "cpu":
            continue
        cmd = [sys.executable, __file__, "--case", case, "--device", args.device,
               "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--heap", args.heap]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{case}: {rows[-1]['ms_total']:.2f} ms", file=sys.stderr)
    probe = (f" CPU speed probe (`epropnp_lib.diagnostics.small_op_time_us`, one small "
             f"tensor op): {before:.2f} us before, {small_op_time_us():.2f} us after.")
    md = table(rows, args.device, args.threads, probe, args.heap)
    print(md)
    if args.write_readme:
        _write_table(args.device.split(":")[0], md)


if __name__ == "__main__":
    main()
