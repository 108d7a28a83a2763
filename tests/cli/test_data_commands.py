"""`covfuse data info|verify` against independent computations (torchvision's parser, hashlib)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CelebA

from covfuse.data import inspect as data_inspect
from covfuse.cli.main import main as cli

from data_fixtures import copy_twin, make_twin, write_handmade


def test_info_json_matches_torchvision(tmp_path_factory, capsys, monkeypatch):
    root = make_twin(tmp_path_factory)
    assert cli(["data", "info", str(root), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {"num_images", "splits", "attributes"} <= set(got)  # the original contract keys
    assert {"kind", "format", "num_subjects", "num_samples", "columns", "shape"} <= set(got)  # every source's keys
    assert (got["kind"], got["format"], got["num_samples"]) == ("image", "celeba", got["num_images"])
    assert got["shape"][:2] == list(np.asarray(Image.open(root / "celeba" / "img_align_celeba" / "000001.jpg")).shape[:2])
    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)
    ref = CelebA(str(root), split="all", target_type="attr")
    assert got["num_images"] == len(ref)
    assert got["splits"] == {s: len(CelebA(str(root), split=s, target_type="attr")) for s in ("train", "valid", "test")}
    rates = ref.attr.float().mean(0).tolist()
    assert list(got["attributes"]) == ref.attr_names[:40]
    assert np.allclose(list(got["attributes"].values()), rates, atol=1e-6)


def test_info_with_target_and_covariates(tmp_path, capsys):
    write_handmade(tmp_path)
    assert cli(["data", "info", str(tmp_path), "--target", "smiling", "--covariates", "young,male", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # Hand-counted from data_fixtures.ROWS: Smiling on rows 1, 4, 6 of 7; Young on 1, 3, 4, 6, 7.
    assert got["target"]["name"] == "Smiling" and got["target"]["positive_rate"]["all"] == pytest.approx(3 / 7, abs=1e-6)
    assert got["target"]["positive_rate"]["valid"] == pytest.approx(0.5)
    young = got["covariates"]["Young"]
    assert young["count_given"] == {"0": 2, "1": 5} and young["target_rate_given"]["1"] == pytest.approx(3 / 5, abs=1e-6)
    assert young["target_rate_given"]["0"] == 0.0
    assert cli(["data", "info", str(tmp_path), "--target", "smiling", "--covariates", "young,male"]) == 0
    text = capsys.readouterr().out
    assert "7 images" in text and "Smiling" in text and "<- target" in text and "<- covariate" in text
    assert "Smiling rate given Young=0: 0.000 (n=2), Young=1: 0.600 (n=5)" in text


def test_help_and_usage_errors(capsys):
    assert cli(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("info", "synth", "cache", "verify"))
    assert cli(["data", "info", "--help"]) == 0
    assert "--covariates" in capsys.readouterr().out
    assert cli(["data"]) == 2 and cli(["data", "infos", "x"]) == 2
    assert cli(["data", "info", "/no/such/folder"]) == 2
    assert "no such folder" in capsys.readouterr().err


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_checks_checksums_and_decodes_every_image(tmp_path_factory, tmp_path, capsys, monkeypatch):
    root = copy_twin(tmp_path_factory, tmp_path / "twin")
    base = root / "celeba"
    assert cli(["data", "verify", str(root)]) == 2  # a twin is not the official release
    out, err = capsys.readouterr()
    assert "list_attr_celeba.txt" in out and "MISMATCH" in out and "verification failed" in err
    # With the twin's own checksums as the reference, it verifies.
    official = {name: _md5(base / name) for name in data_inspect.OFFICIAL_MD5 if (base / name).exists()}
    official["img_align_celeba.zip"] = "0" * 32
    monkeypatch.setattr(data_inspect, "OFFICIAL_MD5", official)
    assert cli(["data", "verify", str(root)]) == 0
    out = capsys.readouterr().out
    assert "img_align_celeba.zip" in out and "absent (optional)" in out and "200 of 200 decode" in out
    # A truncated JPEG is found and named.
    jpeg = base / "img_align_celeba" / "000123.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    assert cli(["data", "verify", str(root), "--workers", "2"]) == 2
    out, err = capsys.readouterr()
    assert "cannot decode" in out and "000123.jpg" in err and "199 of 200 decode" in out


def test_verify_explains_lf_copies(tmp_path, capsys, monkeypatch):
    write_handmade(tmp_path, newline="\r\n")
    crlf = {name: _md5(tmp_path / name) for name in data_inspect.OFFICIAL_MD5 if (tmp_path / name).exists()}
    for name in crlf:
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes().replace(b"\r\n", b"\n"))
    monkeypatch.setattr(data_inspect, "OFFICIAL_MD5", crlf)
    assert cli(["data", "verify", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert out.count("same content with LF line endings") == len(crlf)
