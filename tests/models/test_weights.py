"""Weights: "imagenet" only from the torch hub cache (clear error offline), state-dict files checked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from covfuse.cli.main import main as cli
from covfuse.errors import UserError
from covfuse.models import build


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_imagenet_offline_names_file_url_and_folder(empty_torch_home):
    with pytest.raises(UserError) as info:
        build("vgg16_bn", "hybrid", 1, weights="imagenet")
    message = str(info.value)
    url = torchvision.models.VGG16_BN_Weights.DEFAULT.url
    assert "vgg16_bn-6c64b313.pth" in message and url in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert not any(empty_torch_home.rglob("*.pth"))  # nothing was downloaded


def test_imagenet_offline_through_the_cli_exits_2_with_one_line(empty_torch_home, capsys):
    assert cli(["describe", "--backbone", "vgg16_bn", "--fusion", "hybrid", "--weights", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vgg16_bn-6c64b313.pth" in err and "Traceback" not in err


def test_imagenet_offline_real_process_exit_status(empty_torch_home):
    env = {**os.environ, "TORCH_HOME": str(empty_torch_home)}
    proc = subprocess.run([sys.executable, "-m", "covfuse.cli", "describe", "--backbone", "resnet18", "--weights", "imagenet"],
                          check=False, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "resnet18-f37072fd.pth" in proc.stderr and "Traceback" not in proc.stderr


def test_imagenet_from_cache_loads_backbone_and_replaces_head(empty_torch_home):
    torch.manual_seed(0)
    imagenet_like = torchvision.models.resnet18()  # random stand-in with ImageNet's 1000-class head
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(imagenet_like.state_dict(), folder / "resnet18-f37072fd.pth")
    model = build("resnet18", "concat", 2, weights="imagenet", head="two-class").eval()
    head = model.network.fc
    assert head.image.weight.shape == (2, 512)
    x, z = torch.randn(2, 3, 32, 32), torch.randn(2, 2)
    with torch.no_grad():
        imagenet_like.eval()
        imagenet_like.fc = head.image  # the reference: the loaded backbone with the new head
        torch.testing.assert_close(model(x, z), imagenet_like(x))
    assert torch.equal(model.network.conv1.weight, imagenet_like.conv1.weight)


def test_imagenet_for_vgg_mini_is_refused():
    with pytest.raises(UserError, match="no ImageNet weights for vgg-mini"):
        build("vgg-mini", "image-only", 0, weights="imagenet")


def test_state_dict_file_round_trip_with_prefix(tmp_path):
    torch.manual_seed(0)
    source = build("vgg-mini", "image-only", 0)
    path = tmp_path / "mini.pt"
    torch.save({f"module.{k}": v for k, v in source.network.state_dict().items()}, path)  # as DataParallel saves
    model = build("vgg-mini", "hybrid", 1, weights=path)
    assert torch.equal(model.network.features[0].weight, source.network.features[0].weight)
    assert torch.equal(model.network.classifier[3].weight, source.network.classifier[3].weight)  # same-shape head kept
    assert model.config["weights"] == str(path)


def test_bad_state_dict_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build("vgg-mini", "image-only", 0, weights=tmp_path / "missing.pt")
    other = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(UserError, match=r"do not fit vgg-mini \(missing: features\.0\.weight"):
        build("vgg-mini", "image-only", 0, weights=other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable weights file"):
        build("vgg-mini", "image-only", 0, weights=junk)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match="does not hold a state dict"):
        build("vgg-mini", "image-only", 0, weights=listed)
    wide = build("vgg-mini", "image-only", 0).network.state_dict()
    wide["features.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(UserError, match="wrong shape: features.0.weight"):
        build("vgg-mini", "image-only", 0, weights=Path(tmp_path / "wide.pt"))
