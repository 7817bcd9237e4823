"""from_dict / to_dict: strict configs from plain mappings."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from epropnp_lib.dataclass_io import from_dict, to_dict
from epropnp_lib.errors import ConfigError


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class Inner:
    depth: int = 18
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.5, 1.5)
    path: str | None = None
    mode: Mode = Mode.FAST
    split: Literal["train", "val"] = "train"
    flag: bool = False

    def __post_init__(self) -> None:
        if self.inner.depth < 0:
            raise ConfigError("depth must be >= 0")


def test_round_trip_and_defaults() -> None:
    cfg = Outer(name="a", inner=Inner(34, 2.0), sizes=(3,), path="/x", mode=Mode.SLOW, flag=True)
    plain = to_dict(cfg)
    assert plain == {
        "name": "a", "inner": {"depth": 34, "scale": 2.0}, "sizes": [3], "pair": [0.5, 1.5],
        "path": "/x", "mode": "SLOW", "split": "train", "flag": True,
    }
    assert from_dict(Outer, plain) == cfg
    assert from_dict(Outer, {"name": "b"}) == Outer(name="b")


def test_int_accepted_for_float_and_enum_by_value() -> None:
    cfg = from_dict(Outer, {"name": "a", "inner": {"scale": 3}, "mode": "slow"})
    assert cfg.inner.scale == 3.0 and isinstance(cfg.inner.scale, float)
    assert cfg.mode is Mode.SLOW


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"name": "a", "colour": 1}, "unknown key(s) 'colour'"),
        ({"name": "a", "inner": {"dept": 3}}, "cfg.inner: unknown key(s) 'dept'"),
        ({}, "missing required key 'name'"),
        ({"name": 3}, "cfg.name: expected a string"),
        ({"name": "a", "inner": {"depth": 1.5}}, "cfg.inner.depth: expected an integer"),
        ({"name": "a", "inner": {"depth": True}}, "expected an integer"),
        ({"name": "a", "flag": 1}, "cfg.flag: expected true or false"),
        ({"name": "a", "pair": [1.0]}, "expected 2 values"),
        ({"name": "a", "sizes": [1, "x"]}, "cfg.sizes[1]: expected an integer"),
        ({"name": "a", "split": "test"}, "is not one of"),
        ({"name": "a", "mode": "medium"}, "is not one of"),
        ({"name": "a", "path": 5}, "matches none of"),
        ({"name": "a", "inner": {"depth": -1}}, "depth must be >= 0"),
    ],
)
def test_bad_configs_raise_config_error(mapping: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(Outer, mapping, where="cfg")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(Outer, ["name"])  # type: ignore[arg-type]


def test_json_default_writes_numpy_scalars_as_plain_values() -> None:
    import json

    import numpy as np
    import pytest

    from epropnp_lib.dataclass_io import json_default

    text = json.dumps({"n": np.int64(3), "x": np.float32(0.5)}, default=json_default)
    assert json.loads(text) == {"n": 3, "x": 0.5}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        json.dumps({"o": object()}, default=json_default)
