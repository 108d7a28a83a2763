"""Image presets against torchvision's transforms, normalisation, and the dataset's sample format."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from covfuse.data.readers.celeba_release import read_celeba
from covfuse.data.dataset import CelebADataset
from covfuse.data.decode import decode_image
from covfuse.data.transforms import hflip, normalize
from covfuse.errors import UserError

from data_fixtures import make_twin


def _photo(path, size, mode="RGB"):
    """A smooth test picture (gradients and a disc), saved as JPEG or PNG."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)], -1)
    rgb[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 4) ** 2] = (250, 30, 30)
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).convert(mode)
    img.save(path, quality=95)
    return path


def _reference(path, size, crop: bool) -> torch.Tensor:
    """torchvision's pipeline: full decode, CenterCrop(min side) if cropping, Resize((S, S)) antialiased."""
    img = v2.functional.pil_to_tensor(Image.open(path).convert("RGB"))
    if crop:
        img = v2.functional.center_crop(img, [min(img.shape[1:])] * 2)
    return v2.functional.resize(img, [size, size], antialias=True)


@pytest.mark.parametrize("shape", [(178, 218), (89, 109), (120, 80), (300, 300), (640, 480)])
@pytest.mark.parametrize("size", [32, 64, 100, 224])  # 100 and 224 enlarge most crops (torch kernel)
@pytest.mark.parametrize("preset", ["center-crop", "research"])
def test_presets_match_torchvision_transforms(tmp_path, shape, size, preset):
    path = _photo(tmp_path / "x.jpg", shape)
    out = torch.from_numpy(decode_image(path, size, preset))
    assert out.dtype == torch.uint8 and out.shape == (3, size, size) and out.is_contiguous()
    ref = _reference(path, size, crop=preset == "center-crop")
    diff = (out.float() - ref.float()).abs()
    # libjpeg's reduced-scale decoding (draft) and PIL's filter differ from a full decode by a little.
    assert diff.mean() < 2.0, diff.mean()
    # ...but the geometry is the same: a wrong crop or a squeeze would move the disc by pixels.
    assert np.corrcoef(out.float().flatten(), ref.float().flatten())[0, 1] > 0.999


def test_grayscale_and_png_become_rgb(tmp_path):
    path = _photo(tmp_path / "g.png", (50, 60), mode="L")
    out = torch.from_numpy(decode_image(path, 16))
    assert out.shape == (3, 16, 16) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_normalize_matches_torchvision_normalize():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ref = v2.functional.normalize(x.float() / 255, [0.5] * 3, [0.5] * 3)
    for preset in ("center-crop", "research"):
        assert torch.allclose(normalize(x, preset), ref, atol=1e-6)
    assert torch.allclose(normalize(x[0]), ref[0], atol=1e-6)
    assert normalize(x, dtype=torch.float64).dtype == torch.float64
    assert normalize(torch.tensor([[[0]], [[255]], [[128]]], dtype=torch.uint8)).flatten().tolist()[:2] == [-1.0, 1.0]
    with pytest.raises(UserError, match="did you mean 'center-crop'"):
        normalize(x, "centre-crop")


def test_hflip_mirrors_width():
    x = torch.arange(24, dtype=torch.uint8).view(1, 2, 3, 4)
    assert torch.equal(hflip(x), x[..., [3, 2, 1, 0]])


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return read_celeba(make_twin(tmp_path_factory))


def test_samples_have_the_documented_format(meta):
    idx = np.flatnonzero(meta.split == 1)  # the official valid rows
    ds = CelebADataset(meta, idx, "Attractive", ["Young", "male"], image_size=32)
    assert len(ds) == len(idx) and "CelebADataset(" in repr(ds) and ds.covariate_names == ["Young", "Male"]
    sample = ds[3]
    assert set(sample) == {"image", "covariates", "target", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 32)
    assert sample["covariates"].dtype == torch.float32 and sample["covariates"].shape == (2,)
    assert sample["target"].dtype == torch.float32 and sample["target"].shape == ()
    assert sample["index"].dtype == torch.int64 and sample["index"].shape == ()
    row = int(sample["index"])
    assert row == idx[3]
    assert torch.equal(sample["image"], torch.from_numpy(decode_image(meta.image_dir / meta.filenames[row], 32)))
    cols = [meta.column("Young"), meta.column("Male")]
    assert sample["covariates"].tolist() == meta.attrs[row, cols].tolist()
    assert float(sample["target"]) == meta.attrs[row, meta.column("Attractive")]
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["covariates"].shape == (5, 2)
    assert batch["target"].shape == (5,) and batch["index"].tolist() == idx[:5].tolist()


def test_training_flips_about_half_the_images(meta):
    ds = CelebADataset(meta, np.arange(4), "Smiling", [], image_size=24, train=True)
    plain = [torch.from_numpy(decode_image(meta.image_dir / meta.filenames[i], 24)) for i in range(4)]
    torch.manual_seed(0)
    flips = 0
    for _ in range(25):
        for i in range(4):
            img = ds[i]["image"]
            assert torch.equal(img, plain[i]) or torch.equal(img, plain[i].flip(-1))
            flips += not torch.equal(img, plain[i])
    assert 25 < flips < 75


def test_dataset_rejects_bad_arguments(meta):
    with pytest.raises(UserError, match="did you mean 'Smiling'"):
        CelebADataset(meta, [0], "Smilng")
    with pytest.raises(UserError, match="unknown image preset"):
        CelebADataset(meta, [0], "Smiling", preset="crop")
    with pytest.raises(UserError, match="indices must lie"):
        CelebADataset(meta, [len(meta)], "Smiling")
    with pytest.raises(UserError, match="at least 8"):
        CelebADataset(meta, [0], "Smiling", image_size=4)
