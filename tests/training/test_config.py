"""Training configs: strict parsing (unknown keys, wrong types, ranges), overrides, and every
shipped ``config/train/*.yaml``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from epropnp_lib.errors import ConfigError
from epropnp_training.config import (
    TASK_MODULES,
    TrainConfig,
    apply_overrides,
    config_from_mapping,
    load_config,
    task_module,
)
from epropnp_training.tasks_linemod import LinemodTrainConfig
from epropnp_training.tasks_toy import ToyTrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config" / "train").glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


TOY = "task: toy\nlr: 1.0e-3\nnet:\n  hidden: 8\ndata:\n  num_train: 16\n"


def test_toy_yaml_parses_into_its_dataclass(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, TOY))
    assert isinstance(cfg, ToyTrainConfig)
    assert cfg.lr == 1e-3 and cfg.net.hidden == 8 and cfg.data.num_train == 16
    assert cfg.net.dropout == 0.1  # default kept


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    # PyYAML alone (YAML 1.1) reads "2e-4" as a string; configs are read as YAML 1.2 does.
    cfg = load_config(_write(tmp_path, TOY.replace("1.0e-3", "2e-4")))
    assert cfg.lr == pytest.approx(2e-4)


def test_unknown_top_level_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, TOY + "learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "learning_rate" in str(info.value) and str(path) in str(info.value)


def test_unknown_nested_key_names_section(tmp_path: Path) -> None:
    path = _write(tmp_path, TOY.replace("hidden: 8", "hiden: 8"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "hiden" in msg and f"{path}.net" in msg


@pytest.mark.parametrize(
    ("line", "key"),
    [("lr: fast", "lr"), ("batch_size: 2.5", "batch_size"), ("amp: 1", "amp"),
     ("betas: [0.9]", "betas"), ("optimizer: lamb", "optimizer")],
)
def test_wrong_type_names_key(tmp_path: Path, line: str, key: str) -> None:
    path = _write(tmp_path, TOY + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f".{key}" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "line",
    ["batch_size: 0", "lr: -1.0", "lr_schedule: step", "lr_milestones: [0.8, 0.5]",
     "lr_milestones: [1.5]", "warmup_factor: 0.0", "grad_clip_norm: 0.0", "max_steps: 0",
     "lr_mult: {offsets: -1.0}", "dist_timeout_minutes: 0"],
)
def test_out_of_range_values_rejected(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, TOY + line + "\n"))


def test_missing_or_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task"):
        load_config(_write(tmp_path, "lr: 1.0\n"))
    with pytest.raises(ConfigError, match="'kitti'"):
        load_config(_write(tmp_path, "task: kitti\n"))


def test_unreadable_and_invalid_yaml_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_config(missing)
    bad = _write(tmp_path, "task: toy\nlr: [1,\n", "bad.yaml")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        load_config(bad)
    listing = _write(tmp_path, "- task\n", "list.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)


def test_overrides_dotted_keys_and_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, TOY),
                      ["lr=2e-4", "net.hidden=4", "data.num_points=8", "grad_clip_norm=null",
                       "lr_milestones=[0.5, 0.75]", "lr_schedule=step"])
    assert isinstance(cfg, ToyTrainConfig)
    assert cfg.lr == 2e-4 and cfg.net.hidden == 4 and cfg.data.num_points == 8
    assert cfg.grad_clip_norm is None and cfg.lr_milestones == (0.5, 0.75)


def test_override_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, TOY)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(path, ["lr.x=1"])
    with pytest.raises(ConfigError) as info:
        load_config(path, ["net.widht=3"])
    assert "widht" in str(info.value) and "--set" in str(info.value)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_every_task_module_exposes_its_config_class() -> None:
    for name in TASK_MODULES:
        try:
            module = task_module(name)
        except ImportError as exc:  # a task whose dependency has not landed in this checkout
            pytest.fail(f"task module {name!r} does not import: {exc}")
        assert issubclass(module.CONFIG_CLASS, TrainConfig)
        assert callable(module.build_task)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse_and_state_the_paper_number(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.paper_reference, f"{path.name}: paper_reference is empty"
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(vars(cfg)), "every key of the file is a config field"
    if not cfg.paper_reference.startswith("none"):  # toy.yaml, the demo detector's recipe
        # The row's number appears in the paper_reference and in a comment of the file.
        numbers = re.findall(r"\d+\.\d+", cfg.paper_reference)
        assert numbers, f"{path.name}: paper_reference states no number"
        comments = "\n".join(li for li in path.read_text().splitlines() if li.startswith("#"))
        assert numbers[0] in comments


def test_config_from_mapping_rejects_non_string_task() -> None:
    with pytest.raises(ConfigError, match="task"):
        config_from_mapping({"task": 3})


def test_bop_reader_options_reach_the_linemod_config() -> None:
    path = REPO / "config" / "train" / "linemod_synthetic_small.yaml"
    cfg = load_config(path)  # the recipe of the bundled pose model sets both
    assert isinstance(cfg, LinemodTrainConfig) and cfg.data.bop.canonical_symmetric is True
    assert cfg.data.bop.box_jitter == pytest.approx(0.1)
    cfg = load_config(path, ["data.bop.canonical_symmetric=false", "data.bop.box_jitter=0.25"])
    assert isinstance(cfg, LinemodTrainConfig) and cfg.data.bop.canonical_symmetric is False
    assert cfg.data.bop.box_jitter == pytest.approx(0.25)
