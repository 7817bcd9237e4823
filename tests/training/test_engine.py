"""The training engine on the toy task: exact resume, checkpoints, schedules, non-finite
losses, evaluation CLI and checkpoint errors (single process, CPU)."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.nets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from epropnp_training import evaluate as evaluate_cli
from epropnp_training import train as train_cli
from epropnp_training.config import TrainConfig, config_from_mapping
from epropnp_training.distributed import to_device
from epropnp_training.engine import TrainingError, train
from epropnp_training.optim import lr_factor
from epropnp_training.task import StepOutput
from epropnp_training.tasks_toy import (
    ToyDataset,
    ToyModule,
    ToyTask,
    ToyTrainConfig,
    build_task,
)
from epropnp_training.training_state import TRAINING_STATE_KIND, find_latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_config(log_dir: Path, **changes: Any) -> ToyTrainConfig:
    mapping: dict[str, Any] = {
        "task": "toy", "seed": 3, "device": "cpu", "epochs": 3, "batch_size": 8,
        "lr": 3e-3, "lr_schedule": "step", "lr_milestones": [0.5], "warmup_steps": 2,
        "grad_clip_norm": 10.0, "log_dir": str(log_dir), "log_interval": 1,
        "checkpoint_interval": 100, "progress_bar": False, "eval_split": "val",
        "net": {"hidden": 16, "dropout": 0.2, "num_iterations": 2, "num_samples": 16},
        "data": {"num_train": 24, "num_val": 8, "num_points": 12},
    }
    mapping.update(changes)
    cfg = config_from_mapping(mapping)
    assert isinstance(cfg, ToyTrainConfig)
    return cfg


def read_log(log_dir: Path) -> list[dict[str, str]]:
    with (log_dir / "train_log.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def module_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, kind=TRAINING_STATE_KIND).state_dict


def test_resume_mid_epoch_gives_the_same_next_steps(tmp_path: Path) -> None:
    # 24 samples / batch 8 = 3 steps per epoch, 9 steps; interrupt after step 4 (mid-epoch 1).
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = train(toy_config(full_dir), build_task(toy_config(full_dir)))
    assert full.finished and full.step == 9
    assert (full_dir / "training_curves.png").stat().st_size > 1000  # plotted from the log

    cfg = toy_config(cut_dir)
    first = train(cfg, build_task(cfg), stop_at_step=4)
    assert not first.finished and first.step == 4 and first.metrics is None
    assert first.checkpoint == cut_dir / "checkpoints" / "step_00000004.pt"
    extra = load_checkpoint(first.checkpoint).extra
    assert (extra["step"], extra["epoch"], extra["batch_in_epoch"]) == (4, 1, 1)

    # The stopped run exported its network for the nodes, beside the resumable state.
    assert first.model_path == cut_dir / "model_step_00000004.pt"
    assert load_checkpoint(first.model_path, kind="toy_weight_net").state_dict

    second = train(cfg, build_task(cfg), resume=True)
    assert second.finished and second.step == 9 and second.model_path == cut_dir / "model.pt"

    full_rows, cut_rows = read_log(full_dir), read_log(cut_dir)
    assert [r["step"] for r in cut_rows] == [str(s) for s in range(1, 10)]
    # The step right after the interruption (and every later one) is bit-identical.
    for a, b in zip(full_rows, cut_rows, strict=True):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], (a, b)
    sa, sb = module_state(full.checkpoint), module_state(second.checkpoint)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full.metrics == second.metrics


def test_resume_at_epoch_boundary_and_from_a_named_file(tmp_path: Path) -> None:
    # with data-loader worker processes this time
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = train(toy_config(full_dir, num_workers=2),
                 build_task(toy_config(full_dir, num_workers=2)))
    cfg = toy_config(cut_dir, checkpoint_interval=3, num_workers=2)
    train(cfg, build_task(cfg), stop_at_step=7)
    # resume from the epoch-boundary checkpoint of step 6, not the newest (7)
    resumed = train(cfg, build_task(cfg), resume=cut_dir / "checkpoints" / "step_00000006.pt")
    assert resumed.step == 9
    sa, sb = module_state(full.checkpoint), module_state(resumed.checkpoint)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["step"] for r in read_log(cut_dir)] == [str(s) for s in range(1, 10)]


def test_checkpoint_contents_and_pruning(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, checkpoint_interval=2, keep_checkpoints=2)
    result = train(cfg, build_task(cfg))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["step_00000008.pt", "step_00000009.pt"]
    assert find_latest_checkpoint(tmp_path) == result.checkpoint
    ckpt = load_checkpoint(result.checkpoint, kind=TRAINING_STATE_KIND)
    assert ckpt.config["task"] == "toy" and ckpt.config["net"]["hidden"] == 16
    assert {"optimizer", "scheduler", "scaler", "rng", "step", "epoch"} <= set(ckpt.extra)
    assert len(ckpt.extra["rng"]) == 1 and ckpt.extra["world_size"] == 1
    assert any(k.startswith("loss.") for k in ckpt.state_dict)  # loss buffers travel too
    # the exported network checkpoint holds the network alone
    model = load_checkpoint(tmp_path / "model.pt", kind=ToyTask.net_checkpoint_kind)
    assert set(model.state_dict) == {k[len("model."):] for k in ckpt.state_dict
                                     if k.startswith("model.")}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "toy" and metrics["metrics"]["num_samples"] == 8
    rows = read_log(tmp_path)
    assert {"step", "epoch", "lr", "loss", "rot_err_deg", "grad_norm"} <= set(rows[0])
    assert (tmp_path / "config.yaml").is_file()


def test_training_lowers_the_toy_loss(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, epochs=6, lr_schedule="constant", lr_milestones=[],
                     log_interval=3, eval_split=None)
    result = train(cfg, build_task(cfg))
    losses = [float(r["loss"]) for r in read_log(tmp_path)]
    assert result.metrics is None and not (tmp_path / "metrics.json").exists()
    assert losses[-1] < losses[0] - 1.0, losses


def test_lr_schedules() -> None:
    cfg = toy_config(Path("unused"), lr_schedule="step", lr_milestones=[0.5, 0.75],
                     lr_gamma=0.1, warmup_steps=4, warmup_factor=0.2)
    assert lr_factor(cfg, 0, 100) == pytest.approx(0.2)
    assert lr_factor(cfg, 2, 100) == pytest.approx(0.6)
    assert lr_factor(cfg, 4, 100) == 1.0 and lr_factor(cfg, 49, 100) == 1.0
    assert lr_factor(cfg, 50, 100) == pytest.approx(0.1)
    assert lr_factor(cfg, 80, 100) == pytest.approx(0.01)
    cos = toy_config(Path("unused"), lr_schedule="cosine", min_lr_ratio=0.1, warmup_steps=0)
    assert lr_factor(cos, 0, 10) == 1.0
    assert lr_factor(cos, 5, 10) == pytest.approx(0.55)
    assert lr_factor(cos, 10, 10) == pytest.approx(0.1)


class _NanModule(ToyModule):
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> StepOutput:
        out = super().forward(batch, generator)
        return StepOutput(out.loss * float("nan"), out.logs)


class _NanTask(ToyTask):
    def build_module(self) -> ToyModule:
        return _NanModule(self.config.net)


def test_nonfinite_losses_are_skipped_then_fatal(tmp_path: Path, caplog: Any) -> None:
    cfg = toy_config(tmp_path, max_nonfinite_steps=2)
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingError, match="non-finite"):
        train(cfg, _NanTask(cfg))
    assert "step skipped" in caplog.text


class _NanGradModule(ToyModule):
    """A finite loss whose gradients are NaN on the third forward (``sqrt`` at 0 times 0);
    records a copy of the parameters at every forward."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> StepOutput:
        self.snapshots.append({k: v.detach().clone() for k, v in self.named_parameters()})
        self.calls += 1
        out = super().forward(batch, generator)
        if self.calls == 3:
            first = next(self.parameters())
            poison = torch.sqrt(first.sum() * 0.0)  # value 0, gradient 0 * inf = NaN
            return StepOutput(out.loss + poison, out.logs)
        return out


class _NanGradTask(ToyTask):
    def build_module(self) -> ToyModule:
        self.module = _NanGradModule(self.config.net)
        return self.module


@pytest.mark.parametrize("clip", [None, 10.0])
def test_nonfinite_gradients_skip_the_step_and_training_goes_on(
        tmp_path: Path, caplog: Any, clip: float | None) -> None:
    cfg = toy_config(tmp_path, epochs=2, max_nonfinite_steps=1, grad_clip_norm=clip,
                     weight_decay=0.1)
    task = _NanGradTask(cfg)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, task)
    assert result.finished and result.step == 6
    assert "non-finite gradients, step skipped" in caplog.text
    snaps = task.module.snapshots
    assert len(snaps) == 6
    # the poisoned third step changed nothing (not even weight decay); the others did
    for name, value in snaps[2].items():
        assert torch.equal(value, snaps[3][name]), name
    assert any(not torch.equal(v, snaps[4][k]) for k, v in snaps[3].items())
    assert all(bool(torch.isfinite(p).all()) for p in task.module.parameters())
    rows = read_log(tmp_path)
    assert [int(r["skipped_steps"]) for r in rows] == [0, 0, 1, 0, 0]
    assert all(math.isfinite(float(r["loss"])) for r in rows)


class _EpochToyDataset(ToyDataset):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class _EpochTask(ToyTask):
    def train_dataset(self) -> ToyDataset:
        self.data = _EpochToyDataset(self.config.data, "train", self.config.seed)
        return self.data


def test_an_epoch_dataset_is_told_each_epoch(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, epochs=2, eval_split=None)
    task = _EpochTask(cfg)
    train(cfg, task)
    assert task.data.epochs == [0, 1]


def test_too_small_dataset_is_a_config_error(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, batch_size=32)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(cfg, build_task(cfg))


def test_float16_amp_on_cpu_warns_and_trains_in_full_precision(
        tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = toy_config(tmp_path, amp=True, epochs=1, eval_split=None)
    dtypes = _network_output_dtypes(monkeypatch)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, build_task(cfg))
    assert result.finished and math.isfinite(result.last_loss)
    assert "CUDA only" in caplog.text
    assert set(dtypes) == {torch.float32}


def test_bfloat16_amp_on_cpu_runs_the_network_in_bfloat16(
        tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU mixed precision: the network's layers in bfloat16, the PnP and the Monte Carlo
    loss in float32 (the toy module switches autocast off around them), no loss scaling."""
    cfg = toy_config(tmp_path, amp=True, amp_dtype="bfloat16", epochs=1, eval_split=None)
    dtypes = _network_output_dtypes(monkeypatch)
    with caplog.at_level(logging.WARNING):
        result = train(cfg, build_task(cfg))
    assert result.finished and math.isfinite(result.last_loss)
    assert "CUDA only" not in caplog.text
    assert set(dtypes) == {torch.bfloat16}  # the training steps' forwards (eval: float32)


def _network_output_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The dtypes of the toy weight network's first linear layer's outputs in training."""
    seen: list[torch.dtype] = []
    forward = torch.nn.Linear.forward

    def spy(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        if torch.is_grad_enabled():
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    return seen


def test_evaluate_cli_from_model_and_training_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = toy_config(run)
    result = train(cfg, build_task(cfg))
    assert result.model_path is not None and result.metrics is not None
    config_file = run / "config.yaml"
    for name, ckpt in (("model", result.model_path), ("state", result.checkpoint)):
        out = tmp_path / f"{name}.json"
        assert evaluate_cli.main(["--config", str(config_file), "--checkpoint", str(ckpt),
                                  "--out", str(out), "--device", "cpu"]) == 0
        written = json.loads(out.read_text())
        assert written["split"] == "val" and written["metrics"] == result.metrics


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = toy_config(run, epochs=1, eval_split=None)
    result = train(cfg, build_task(cfg))
    config_file = str(run / "config.yaml")
    # another network shape
    with pytest.raises(CheckpointError, match="does not match") as info:
        evaluate_cli.evaluate_checkpoint(config_file, str(result.model_path), str(tmp_path / "m"),
                                         split="val", overrides=["net.hidden=4"])
    assert str(result.model_path) in str(info.value)
    # another kind
    other = tmp_path / "other.pt"
    save_checkpoint(other, kind="deformable_correspondence_net", config={}, state_dict={})
    assert evaluate_cli.main(["--config", config_file, "--checkpoint", str(other),
                              "--out", str(tmp_path / "x.json"), "--split", "val"]) == 2
    # truncated file
    broken = tmp_path / "broken.pt"
    broken.write_bytes(result.checkpoint.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="broken.pt"):
        train(cfg, build_task(cfg), resume=broken)
    # a training state with another batch size would change the data order
    with pytest.raises(CheckpointError, match="batch_size"):
        cfg4 = toy_config(run, epochs=1, batch_size=4, eval_split=None)
        train(cfg4, build_task(cfg4), resume=True)


def test_init_checkpoint_loads_network_weights(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "a", epochs=1, eval_split=None)
    first = train(cfg, build_task(cfg))
    assert first.model_path is not None
    cfg_b = toy_config(tmp_path / "b", epochs=1, eval_split=None, lr=1e-12,
                       init_checkpoint=str(first.model_path))
    second = train(cfg_b, build_task(cfg_b))
    a, b = module_state(first.checkpoint), module_state(second.checkpoint)
    # lr ~ 0: the weights stay those of the initial checkpoint (up to tiny steps)
    for key in a:
        if key.startswith("model."):
            assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_train_cli_reports_config_errors_with_status_2(tmp_path: Path, caplog: Any) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"task: toy\nlog_dir: {tmp_path / 'run'}\n")
    with caplog.at_level(logging.ERROR):
        assert train_cli.main(["--config", str(config), "--set", "net.hiden=3"]) == 2
    assert "hiden" in caplog.text and str(config) in caplog.text
    assert not (tmp_path / "run").exists()


class _FakeWriter:
    """Stands in for ``torch.utils.tensorboard.SummaryWriter`` (tensorboard is optional)."""

    scalars: list[tuple[str, float, int]] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.scalars.append(("closed", 0.0, 0))


def test_tensorboard_events_when_installed(tmp_path: Path, monkeypatch: Any) -> None:
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    cfg = toy_config(tmp_path, epochs=1, eval_split=None)
    train(cfg, build_task(cfg))
    tags = {(tag, step) for tag, _, step in _FakeWriter.scalars}
    assert {("train/loss", 1), ("train/loss", 3), ("train/lr", 2), ("closed", 0)} <= tags


class _Pair(NamedTuple):
    x: torch.Tensor
    name: str


def test_to_device_recurses() -> None:
    batch = {"a": [torch.ones(1), (torch.zeros(2), "s")], "b": _Pair(torch.ones(3), "n")}
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved["b"], _Pair) and moved["b"].name == "n"
    assert torch.equal(moved["a"][1][0], torch.zeros(2)) and moved["a"][1][1] == "s"


def test_train_config_is_the_base_of_the_toy_config() -> None:
    assert issubclass(ToyTrainConfig, TrainConfig)


def test_wrong_kind_errors_say_what_each_file_is_and_which_to_load(tmp_path: Path) -> None:
    """A training state, or the toy network, given where a node's network is needed."""
    run = tmp_path / "run"
    cfg = toy_config(run, eval_split=None)
    stopped = train(cfg, build_task(cfg), stop_at_step=2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(stopped.checkpoint, kind="dense_correspondence_net")
    text = str(info.value)
    assert "resumable state" in text and str(stopped.model_path.resolve()) in text
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(stopped.model_path, kind="dense_correspondence_net")
    text = str(info.value)
    assert "'toy_weight_net'" in text and "no image network" in text
    assert "config/train/linemod_" in text
    # a training state whose run exported nothing names the files a run exports
    lone = tmp_path / "lone" / "checkpoints" / "step_00000002.pt"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(stopped.checkpoint.read_bytes())
    with pytest.raises(CheckpointError, match="model_step_XXXXXXXX.pt when stopped"):
        load_checkpoint(lone, kind="dense_correspondence_net")
