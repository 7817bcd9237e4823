"""Smoke test of the reproduction command (tiny budget) and its resumability."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import MonteCarloConfig
from epropnp_lib.errors import ConfigError
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.dense import DenseCorrespondenceNet, DenseNetConfig
from epropnp_training import reproduce
from epropnp_training.figures import main as figures_main
from epropnp_training.reproduce import (
    ReproConfig,
    batch_indices,
    learning_rate,
    main,
    run,
    train_variant,
)
from epropnp_training.reproduce_report import (
    CLAIMS,
    VARIANT_LABELS,
    VARIANTS,
    parse_markdown_table,
)


def tiny() -> ReproConfig:
    return ReproConfig(
        num_train=16, num_test=8, steps=2, batch_size=8, checkpoint_every=1, eval_batch_size=8,
        warmup_steps=0,
        net=DenseNetConfig(
            backbone=BackboneConfig(depth=18, base_width=8), crop_size=64, output_stride=8,
            head_channels=16, skip_connections=True, object_extent=0.1, init_weight_scale=8.0,
            monte_carlo=MonteCarloConfig(num_iterations=2, num_samples=16),
        ),
    )


def test_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(to_dict(tiny())))
    out = tmp_path / "run"
    assert main(["--out", str(out), "--config", str(cfg_file), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["variants"]) == set(VARIANTS)
    rows = parse_markdown_table((out / "results.md").read_text())
    assert rows == parse_markdown_table(printed)
    assert [r["variant"] for r in rows] == [VARIANT_LABELS[v] for v in VARIANTS]
    for v in VARIANTS:
        entry = results["variants"][v]
        m = entry["metrics"]
        assert m["count"] == 8
        for key in ("add_01", "deg5_cm5", "deg2_cm2", "add_mean"):
            assert 0.0 <= m[key] <= 100.0
        assert m["median_rotation_deg"] >= 0.0 and m["median_translation_cm"] >= 0.0
        assert 0.0 <= entry["failed_solves"] <= 1.0
        assert entry["steps_done"] == 2
        assert (out / v / "checkpoint.pt").is_file()
        assert (out / v / "metrics.json").is_file()
    md = (out / "results.md").read_text()
    claims = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert len(claims) == len(CLAIMS) + 1
    assert all(("hold" in ln) for ln in claims[:-1])  # "holds" or "does NOT hold"
    # the paper's numbers are in the table next to ours
    assert rows[0]["ADD(-S)-0.1d (paper)"] == "79.46"
    assert rows[2]["ADD(-S)-0.1d (paper)"] == "divergence"

    # The figures CLI draws the learned maps and the orientation density of a checkpoint.
    figs = tmp_path / "figs"
    assert figures_main(["--checkpoint", str(out / "monte_carlo" / "checkpoint.pt"),
                         "--out", str(figs), "--num", "2", "--samples", "32"]) == 0
    for name in ("maps.png", "orientation.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning skips the finished variants (their checkpoints are not rewritten).
    stamp = {v: (out / v / "checkpoint.pt").stat().st_mtime_ns for v in VARIANTS}
    again = run(tiny(), out, progress=False)
    assert again["variants"] == results["variants"]
    assert all((out / v / "checkpoint.pt").stat().st_mtime_ns == stamp[v] for v in VARIANTS)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = replace(tiny(), steps=3)
    train = reproduce.load_or_render(cfg, "train", tmp_path / "train.pt")
    straight, _ = train_variant(cfg, "monte_carlo", train, tmp_path / "a", progress=False)
    # interrupted after 2 steps ...
    train_variant(cfg, "monte_carlo", train, tmp_path / "b", progress=False, stop_at=2)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["extra"]["train_state"]["step"] == 2
    # ... and resumed to 3
    resumed, state = train_variant(cfg, "monte_carlo", train, tmp_path / "b", progress=False)
    assert state.step == 3 and len(state.history) == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # the checkpoint is a regular network checkpoint
    net, extra = DenseCorrespondenceNet.from_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert extra["variant"] == "monte_carlo" and net.config == resumed.config


def test_schedule_order_and_config_checks() -> None:
    cfg = replace(tiny(), steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-4)
    # one epoch visits every crop once; epochs differ; the order depends only on seed and step
    first = torch.cat([batch_indices(cfg, 16, s) for s in range(2)])
    assert sorted(first.tolist()) == list(range(16))
    assert not torch.equal(batch_indices(cfg, 16, 0), batch_indices(cfg, 16, 2))
    assert torch.equal(batch_indices(cfg, 16, 3), batch_indices(cfg, 16, 3))
    with pytest.raises(ConfigError):
        replace(tiny(), crop_size=96)
    with pytest.raises(ConfigError):
        tiny().scaled(0.0)
    small = ReproConfig().scaled(0.01)
    assert small.steps < ReproConfig().steps and small.num_train >= small.batch_size
    with pytest.raises(ConfigError):
        run(tiny(), Path("/nonexistent-never-created"), variants=["bogus"])
