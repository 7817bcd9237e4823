"""Checkpoint files: a model's weights together with the config that builds it.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "epropnp-checkpoint", "format_version": 1, "kind": str,
     "config": dict (plain values), "state_dict": {name: Tensor}, "extra": dict}

so that it loads with ``torch.load(weights_only=True)`` (no pickled classes, no code runs on
load).  ``kind`` names what the file holds (``"dense_correspondence_net"``,
``"deformable_correspondence_net"``, ``"training_state"``, ...): loading a file of the wrong kind
is an error, not a silent partial load.  Files are written to a temporary name in the same
directory and renamed, so an interrupted save never leaves a truncated checkpoint under the
final name.  :func:`load_model` rebuilds a network from its file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import torch
from torch import nn

from epropnp_lib.atomic_io import atomic_write
from epropnp_lib.dataclass_io import from_dict
from epropnp_lib.errors import ConfigError
from epropnp_lib.nets.backbone import BackboneConfig

__all__ = [
    "CALIBRATION_KEY",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "KIND_ORIGINS",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "stored_positive",
    "stored_temperature",
    "wrong_kind_message",
]

_FORMAT = "epropnp-checkpoint"
#: Version of the file layout above; bumped on incompatible changes.
FORMAT_VERSION = 1
#: Key of a network checkpoint's ``extra`` holding the post-hoc calibration of its
#: likelihood: ``likelihood_temperature`` ``T`` (the model's poses are published from
#: ``exp(-cost / T)``) and how it was fitted; absent in checkpoints never calibrated.
CALIBRATION_KEY = "calibration"


class CheckpointError(ConfigError):
    """A checkpoint file is missing, unreadable, malformed, of the wrong kind or mismatched."""


class Checkpoint(NamedTuple):
    """Contents of a checkpoint file."""

    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any]
    format_version: int


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same directory, then rename).

    Args:
        path: destination file; parent directories are created.
        kind: what the file holds, checked again by :func:`load_checkpoint`.
        config: plain-value config (``epropnp_lib.dataclass_io.to_dict`` of the model config).
        state_dict: ``model.state_dict()``; tensors are stored on the CPU.
        extra: further plain values and tensors (metrics, optimiser state, step, RNG state).
    """
    if not kind:
        raise CheckpointError("checkpoint kind must be a non-empty string")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "extra": dict(extra or {}),
    }
    with atomic_write(target, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Args:
        path: checkpoint file.
        kind: expected kind, or None to accept any.
        map_location: device for the tensors.

    Raises:
        CheckpointError: the file does not exist, cannot be unpickled (truncated, not a torch
            file), is not an epropnp checkpoint, has a newer format version, lacks a field, or
            holds another kind; the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: name the file, keep the cause
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointError(f"{p} is not an epropnp checkpoint (no '{_FORMAT}' marker)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint format version {version!r}; this code reads <= {FORMAT_VERSION}"
        )
    for key, typ in (("kind", str), ("config", dict), ("state_dict", dict), ("extra", dict)):
        if not isinstance(payload.get(key), typ):
            raise CheckpointError(f"{p}: field {key!r} is missing or not a {typ.__name__}")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(wrong_kind_message(p, payload["kind"], kind))
    state = payload["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{p}: state_dict entries are not tensors: {bad[:5]}")
    return Checkpoint(payload["kind"], payload["config"], state, payload["extra"], version)


#: What makes a checkpoint of each kind (for the error when a file of another kind is given).
KIND_ORIGINS = {
    "dense_correspondence_net": "the 6DoF dense correspondence network (training task 'linemod', "
                                "config/train/linemod_*.yaml; the pose_estimator node's model)",
    "deformable_correspondence_net": "the 4DoF deformable correspondence network (training "
                                     "task 'nuscenes', config/train/nuscenes_*.yaml; the "
                                     "detector node's model)",
    "toy_weight_net": "the toy task's weight network (config/train/toy.yaml: an install and "
                      "engine check on point sets, with no image network; no node runs it)",
    "training_state": "a training run's resumable state (python -m epropnp_training.train "
                      "--resume)",
}


def stored_temperature(extra: Mapping[str, Any], path: str | os.PathLike[str] = "checkpoint",
                       error: type[CheckpointError] = CheckpointError) -> float | None:
    """The likelihood temperature stored in a checkpoint's ``extra`` under
    :data:`CALIBRATION_KEY`, or ``None`` when it has none.

    Raises:
        error: the stored value is not a positive finite number.
    """
    return stored_positive(extra, CALIBRATION_KEY, "likelihood_temperature", path, error)


def stored_positive(extra: Mapping[str, Any], section: str, name: str,
                    path: str | os.PathLike[str] = "checkpoint",
                    error: type[CheckpointError] = CheckpointError) -> float | None:
    """The number ``extra[section][name]`` of a checkpoint's ``extra``, or ``None`` when it
    has none.

    Raises:
        error: the stored value is not a positive finite number.
    """
    data = extra.get(section)
    if not isinstance(data, dict) or name not in data:
        return None
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not (math.isfinite(value) and value > 0):
        raise error(f"{path}: extra.{section}.{name} must be a positive number, got {value!r}")
    return float(value)


def wrong_kind_message(path: Path, found: str, expected: str) -> str:
    """The error for a checkpoint of kind ``found`` where ``expected`` is needed: what each
    kind is and, for a training state, the network files its run exported."""
    lines = [f"{path} holds a {found!r} checkpoint, expected {expected!r}."]
    for k in (found, expected):
        if k in KIND_ORIGINS:
            lines.append(f"{k!r} is {KIND_ORIGINS[k]}.")
    if found == "training_state":
        # <log_dir>/checkpoints/step_N.pt -> the networks exported in <log_dir>
        exported = sorted(path.resolve().parent.parent.glob("model*.pt"))
        if exported:
            lines.append("Load a network its run exported: "
                         + ", ".join(str(e) for e in exported) + ".")
        else:
            lines.append("Its run exports the network as model.pt when it finishes and as "
                         "model_step_XXXXXXXX.pt when stopped by --stop-after; neither is in "
                         f"{path.resolve().parent.parent}.")
    return " ".join(lines)


class NetConfig(Protocol):
    """A network's config dataclass: it has a ResNet backbone."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def backbone(self) -> BackboneConfig: ...


ConfigT = TypeVar("ConfigT", bound=NetConfig)
ModelT = TypeVar("ModelT", bound=nn.Module)


def load_model(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config_class: type[ConfigT],
    build: Callable[[ConfigT], ModelT],
    error: type[CheckpointError],
    name: str,
    map_location: str | torch.device = "cpu",
) -> tuple[ModelT, Checkpoint]:
    """Rebuild the network stored in a checkpoint of ``kind``; returns it (on
    ``map_location``) and the file's contents.

    The stored config is validated by ``from_dict(config_class, ...)`` and built by ``build``
    without its backbone's ``pretrained`` file: the checkpoint holds the trained backbone, so
    ImageNet weights are never loaded again (nor needed on this machine).

    Args:
        path: checkpoint file.
        kind: the network's checkpoint kind.
        config_class: its config dataclass.
        build: the network's constructor.
        error: the network's :class:`CheckpointError` subclass.
        name: the network's name in messages (``"dense network"``).
        map_location: device of the tensors and of the network.

    Raises:
        CheckpointError: missing, truncated or malformed file, or another kind.
        error: the stored config is invalid, or the tensors do not fit it (the message names
            the file and the first offending keys).
    """
    ckpt = load_checkpoint(path, kind=kind, map_location=map_location)
    try:
        config = from_dict(config_class, ckpt.config, where=f"{path}: config")
    except ConfigError as exc:
        raise error(f"{path}: invalid {name} config: {exc}") from exc
    if config.backbone.pretrained is not None:
        backbone = dataclasses.replace(config.backbone, pretrained=None)
        config = dataclasses.replace(config, backbone=backbone)
    net = build(config)
    own = net.state_dict()
    missing = sorted(set(own) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(ckpt.state_dict)
                   if own[k].shape != ckpt.state_dict[k].shape)
    if missing or unexpected or wrong:
        raise error(
            f"{path}: the weights do not match the network of its config: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    net.load_state_dict(ckpt.state_dict)
    return net.to(map_location), ckpt
