"""The uint8 memmap cache: equal to decoding the JPEGs, atomic, resumable, invalidated by new labels."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch

from covfuse.cli.main import main as cli
from covfuse.data import cache as cache_mod
from covfuse.data.cache import build_cache, cache_paths, open_cache
from covfuse.data.readers.celeba_release import read_celeba
from covfuse.data.dataset import CelebADataset
from covfuse.data.decode import decode_image
from covfuse.errors import UserError

from data_fixtures import copy_twin


@pytest.fixture
def twin(tmp_path_factory, tmp_path):
    return copy_twin(tmp_path_factory, tmp_path / "twin")


def test_cache_equals_decoding_and_feeds_the_dataset(twin, caplog):
    meta = read_celeba(twin)
    assert open_cache(meta, 32, "research") is None
    built = build_cache(meta, 32, "research", chunk=64, progress=False)
    data, info = cache_paths(meta, 32, "research")
    assert data.parent == meta.root / ".covfuse-cache" and built.path == data
    assert data.stat().st_size == len(meta) * 3 * 32 * 32
    decoded = torch.stack([torch.from_numpy(decode_image(meta.image_dir / f, 32, "research")) for f in meta.filenames])
    assert torch.equal(built.get_batch(np.arange(len(meta))), decoded)
    with caplog.at_level(logging.INFO, logger="covfuse.data.cache"):
        cache = open_cache(meta, 32, "research")
    assert f"using image cache at {data}" in caplog.text
    rows = np.array([17, 3, 150, 3, 0])
    assert torch.equal(cache.get_batch(rows), decoded[rows]) and torch.equal(cache[42], decoded[42])
    # The dataset gives identical samples from the cache, item by item and batch by batch.
    idx = np.arange(10, 60)
    plain = CelebADataset(meta, idx, "Attractive", ["Young"], image_size=32, preset="research")
    cached = CelebADataset(meta, idx, "Attractive", ["Young"], image_size=32, preset="research", cache=cache)
    for i in (0, 7, 49):
        a, b = plain[i], cached[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    batch = cached.__getitems__([5, 1, 30])
    assert all(torch.equal(s["image"], plain[i]["image"]) and int(s["index"]) == idx[i] for s, i in zip(batch, [5, 1, 30]))
    assert len(pickle.dumps(cache)) < 10_000  # DataLoader workers reopen the memmap, nothing is copied
    json_info = json.loads(info.read_text())
    assert json_info["count"] == len(meta) and json_info["shape"] == [len(meta), 3, 32, 32]
    assert set(json_info["sources"]) == {"list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"}
    with pytest.raises(UserError, match="needs 200 at 64 px"):
        CelebADataset(meta, idx, "Attractive", image_size=64, preset="research", cache=cache)


def test_cached_training_batches_flip_like_decoded_ones(twin):
    meta = read_celeba(twin)
    cache = build_cache(meta, 24, chunk=100, progress=False)
    ds = CelebADataset(meta, np.arange(8), "Smiling", image_size=24, train=True, cache=cache)
    torch.manual_seed(0)
    flips = 0
    for _ in range(10):
        for j, s in enumerate(ds.__getitems__(list(range(8)))):
            plain = cache[j]
            assert torch.equal(s["image"], plain) or torch.equal(s["image"], plain.flip(-1))
            flips += not torch.equal(s["image"], plain)
    assert 20 < flips < 60


def test_stale_cache_is_ignored(twin, caplog):
    meta = read_celeba(twin)
    build_cache(meta, 16, progress=False)
    attr = meta.root / "list_attr_celeba.txt"
    attr.write_bytes(attr.read_bytes().replace(b"000001.jpg -1", b"000001.jpg  1", 1))
    with caplog.at_level(logging.WARNING, logger="covfuse.data.cache"):
        assert open_cache(read_celeba(twin), 16) is None
    assert "sources" in caplog.text and "covfuse data cache" in caplog.text


def test_interrupted_build_leaves_no_cache_and_resumes(twin, monkeypatch):
    meta = read_celeba(twin)
    real_fill = cache_mod._fill_chunk
    calls: list[int] = []

    def failing_fill(path, shape, start, files, size, preset, *rest):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(start)
        return real_fill(path, shape, start, files, size, preset, *rest)

    monkeypatch.setattr(cache_mod, "_fill_chunk", failing_fill)
    with pytest.raises(KeyboardInterrupt):
        build_cache(meta, 20, chunk=50, workers=0, progress=False)
    data, info = cache_paths(meta, 20, "center-crop")
    assert not data.exists() and not info.exists() and open_cache(meta, 20) is None
    assert json.loads(data.with_name("celeba-center-crop-20.progress.json").read_text())["done"] == [0, 50]

    calls.clear()
    monkeypatch.setattr(cache_mod, "_fill_chunk", lambda *a: (calls.append(a[2]), real_fill(*a))[1])
    resumed = build_cache(meta, 20, chunk=50, workers=0, progress=False)
    assert calls == [100, 150]  # only the chunks not done before
    assert not data.with_name("celeba-center-crop-20.progress.json").exists()
    decoded = torch.stack([torch.from_numpy(decode_image(meta.image_dir / f, 20)) for f in meta.filenames])
    assert torch.equal(resumed.get_batch(np.arange(len(meta))), decoded)


def test_worker_processes_build_the_same_cache(twin, tmp_path):
    meta = read_celeba(twin)
    one = build_cache(meta, 16, chunk=80, workers=0, progress=False, cache_dir=tmp_path / "a")
    two = build_cache(meta, 16, chunk=80, workers=2, progress=False, cache_dir=tmp_path / "b")
    assert one.path.read_bytes() == two.path.read_bytes()


def test_cache_command(twin, capsys, tmp_path):
    assert cli(["data", "cache", str(twin), "--size", "16", "--preset", "research", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "200 images, 16 px, research" in out and (tmp_path / "c" / "celeba-research-16.json").is_file()
    (read_celeba(twin).image_dir / "000007.jpg").write_bytes(b"not a jpeg")
    assert cli(["data", "cache", str(twin), "--size", "16"]) == 2
    assert "000007.jpg: cannot decode the image" in capsys.readouterr().err


def test_two_builders_at_once_decode_every_chunk_once(twin, monkeypatch):
    """Two runs starting together on a new folder: one builds under the cache's lock, the other waits and reads it."""
    import threading
    import time

    meta = read_celeba(twin)
    real_fill = cache_mod._fill_chunk
    calls: list[int] = []

    def slow_fill(*args):
        calls.append(args[2])
        time.sleep(0.05)  # long enough for the second builder to arrive mid-build
        return real_fill(*args)

    monkeypatch.setattr(cache_mod, "_fill_chunk", slow_fill)
    results, errors = [], []

    def build():
        try:
            results.append(build_cache(meta, 16, chunk=25, workers=0, progress=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert sorted(calls) == list(range(0, len(meta), 25))  # each chunk decoded once, not once per builder
    decoded = torch.stack([torch.from_numpy(decode_image(meta.image_dir / f, 16)) for f in meta.filenames])
    for cache in results:
        assert torch.equal(cache.get_batch(np.arange(len(meta))), decoded)
    assert not list(results[0].path.parent.glob("*.partial"))


def _volumes(folder, n: int) -> list:
    import nibabel as nib

    files = []
    for i in range(n):
        data = np.random.default_rng(i).normal(size=(9, 10, 11)).astype(np.float32)
        if i == 3:
            data[0, 0, :2] = np.nan  # counted in the cache's record (data.nonfinite)
        files.append(folder / f"v{i}.nii")
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(files[-1]))
    return files


def test_interrupted_volume_build_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """The volume cache shares the image cache's chunked build: an interrupted build keeps its finished
    chunks, the next build fills only the rest, and the file equals an uninterrupted build byte for byte
    (and each row equals the volume preprocessed on its own)."""
    from covfuse.data.decoders.volume import Preprocessing, load_volume, transform

    files, settings = _volumes(tmp_path, 7), Preprocessing(size=8)
    whole = cache_mod.build_volume_cache(files, settings, tmp_path / "whole", chunk=2, workers=0, progress=False)
    real_fill = cache_mod._fill_volumes
    calls: list[int] = []

    def failing_fill(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2])
        return real_fill(*args)

    monkeypatch.setattr(cache_mod, "_fill_volumes", failing_fill)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.build_volume_cache(files, settings, tmp_path / "resumed", chunk=2, workers=0, progress=False)
    data, info = cache_mod.volume_cache_paths(files, settings, tmp_path / "resumed")
    assert not data.exists() and not info.exists()
    assert cache_mod.open_volume_cache(files, settings, tmp_path / "resumed") is None
    assert json.loads(data.with_suffix(".progress.json").read_text())["done"] == [0, 2]

    calls.clear()
    monkeypatch.setattr(cache_mod, "_fill_volumes", lambda *a: (calls.append(a[2]), real_fill(*a))[1])
    resumed = cache_mod.build_volume_cache(files, settings, tmp_path / "resumed", chunk=2, workers=0, progress=False)
    assert calls == [4, 6]  # only the chunks not done before
    assert resumed.path.read_bytes() == whole.path.read_bytes()
    assert not list((tmp_path / "resumed").glob("*.progress.json")) and not list((tmp_path / "resumed").glob("*.partial"))
    assert resumed.info["nonfinite"] == whole.info["nonfinite"] == {"3": 2}
    pipeline = transform(settings)
    for i, f in enumerate(files):
        assert torch.equal(resumed[i], load_volume(f, settings, pipeline).half())

