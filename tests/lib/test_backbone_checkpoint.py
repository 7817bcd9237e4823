"""ResNet backbone and checkpoint files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision

from epropnp_lib.errors import ConfigError
from epropnp_lib.nets.backbone import BackboneConfig, PretrainedWeightsError, ResNetBackbone
from epropnp_lib.nets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from epropnp_lib.nets.deformable import DeformableCorrespondenceNet, small_config
from epropnp_lib.nets.dense import DenseCorrespondenceNet, DenseNetConfig


@pytest.mark.parametrize(("depth", "width"), [(18, 8), (50, 4)])
def test_backbone_shapes_and_strides(depth: int, width: int) -> None:
    net = ResNetBackbone(BackboneConfig(depth=depth, base_width=width))
    feats = net(torch.randn(2, 3, 70, 100))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, -(-70 // s), -(-100 // s))
        for c, s in zip(net.out_channels, net.strides, strict=True)
    ]
    expansion = 4 if depth == 50 else 1
    assert net.out_channels == tuple(width * m * expansion for m in (1, 2, 4, 8))


def test_width_64_is_torchvision_resnet_and_loads_imagenet_state(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = ResNetBackbone(BackboneConfig(depth=18, pretrained=str(path))).eval()
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    assert torch.allclose(net(x)[-1], trunk(x), atol=1e-5)


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="not found"):
        ResNetBackbone(BackboneConfig(depth=18, pretrained=str(tmp_path / "none.pth")))
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(PretrainedWeightsError, match="does not fit ResNet-18"):
        ResNetBackbone(BackboneConfig(depth=18, pretrained=str(wrong)))
    with pytest.raises(ConfigError):
        BackboneConfig(depth=19)
    with pytest.raises(ConfigError):
        BackboneConfig(base_width=32, pretrained="x.pth")


def test_frozen_stages_do_not_train() -> None:
    net = ResNetBackbone(BackboneConfig(depth=18, base_width=8, frozen_stages=1)).train()
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2.training
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    state = {"w": torch.arange(6.0).view(2, 3)}
    save_checkpoint(path, kind="toy", config={"depth": 18, "sizes": [1, 2]}, state_dict=state,
                    extra={"step": 7})
    ckpt = load_checkpoint(path, kind="toy")
    assert ckpt.kind == "toy" and ckpt.config == {"depth": 18, "sizes": [1, 2]}
    assert torch.equal(ckpt.state_dict["w"], state["w"]) and ckpt.extra == {"step": 7}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind

    with pytest.raises(CheckpointError, match="expected 'other'"):
        load_checkpoint(path, kind="other")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*truncated.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an epropnp checkpoint"):
        load_checkpoint(foreign)


def test_atomic_write_permissions_and_interruption(tmp_path: Path) -> None:
    import os

    from epropnp_lib.atomic_io import atomic_write

    mask = os.umask(0o022)
    try:
        path = tmp_path / "ckpt.pt"
        save_checkpoint(path, kind="toy", config={}, state_dict={})
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
        with pytest.raises(RuntimeError), atomic_write(tmp_path / "partial.json", "w") as fh:
            fh.write("{")
            raise RuntimeError("killed mid-write")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # nothing half-written
    finally:
        os.umask(mask)


class _CreatesFile:
    """Unpickling this object creates a directory at ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _tiny_dense() -> DenseCorrespondenceNet:
    return DenseCorrespondenceNet(DenseNetConfig(
        backbone=BackboneConfig(depth=18, base_width=8), crop_size=32, output_stride=8,
        head_channels=8))


def _tiny_deformable() -> DeformableCorrespondenceNet:
    return DeformableCorrespondenceNet(small_config(
        backbone=BackboneConfig(depth=18, base_width=8), fpn_channels=8, head_channels=8,
        embed_dim=8, num_heads=2, num_points=2, point_hidden=8))


@pytest.mark.parametrize("build", [_tiny_dense, _tiny_deformable], ids=["dense", "deformable"])
def test_checkpoint_with_code_in_its_pickle_is_refused(
    tmp_path: Path, build: Callable[[], DenseCorrespondenceNet | DeformableCorrespondenceNet]
) -> None:
    """A checkpoint that is valid except for an object whose unpickling runs code: loading it
    must fail with a CheckpointError before that code runs (``torch.load(weights_only=True)``)."""
    net = build()
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    net.save(path, extra={"payload": _CreatesFile(marker)})
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*evil.ckpt"):
        type(net).from_checkpoint(path)
    assert not marker.exists()
