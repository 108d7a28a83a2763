"""The error catalogue: every user mistake is exit status 2, one short stderr line, no traceback, nothing written.

Each case runs the real command in-process from a scratch folder holding a small twin (``twin/``)
and a finished run (``runs/tiny``), with relative paths, so messages read as a user would see them.
docs/errors.md lists every case; ``COVFUSE_WRITE_ERRORS_DOC=1`` regenerates its table from this file.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from covfuse.cli.main import main as covfuse

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROOT = "twin/celeba"
FIT = ["fit", "--data.root", ROOT, "--data.image_size", "16", "--data.batch_size", "8", "--data.covariates",
       "Young,Male", "--bootstrap", "0", "--trainer.summary", "false", "--trainer.progress", "none",
       "--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """twin/ (60 images, 24x28) and runs/tiny (vgg-mini, one epoch) in a folder the cases copy."""
    from data_fixtures import make_twin

    base = tmp_path_factory.mktemp("catalogue")
    shutil.copytree(make_twin(tmp_path_factory, n=60, size=(24, 28), seed=5), base / "twin")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        assert covfuse([*FIT, "--name", "tiny", "--trainer.limit_train_batches", "2"]) == 0
    finally:
        os.chdir(cwd)
    (base / "runs/tiny/.lock").unlink()
    return base


# -- helpers that prepare a case's folder -------------------------------------------------
def attr_lines(work: Path) -> list[str]:
    return (work / ROOT / "list_attr_celeba.txt").read_text().splitlines()


def write_attr(work: Path, lines: list[str]) -> None:
    (work / ROOT / "list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")


def edit_row(work: Path, line: int, old: str, new: str) -> None:
    lines = attr_lines(work)
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    write_attr(work, lines)


def first_train_image(work: Path) -> Path:
    name = (work / ROOT / "list_eval_partition.txt").read_text().split()[0]
    return work / ROOT / "img_align_celeba" / name


def other_model_checkpoint(work: Path) -> None:
    """runs/tiny's checkpoint, relabelled as a concat model (as if two files had been mixed up)."""
    ckpt = torch.load(work / "runs/tiny/checkpoints/best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["model"]["fusion"] = "concat"
    torch.save(ckpt, work / "other.ckpt")


class Payload:
    """Unpickling this would create the file MARKER (it must never happen)."""

    def __reduce__(self):
        return (Path.touch, (Path("MARKER").absolute(),))


def pickle_checkpoint(work: Path) -> None:
    ckpt = torch.load(work / "runs/tiny/checkpoints/best.ckpt", weights_only=True)
    ckpt["payload"] = Payload()
    torch.save(ckpt, work / "runs/tiny/checkpoints/best.ckpt")


def disk_full(monkeypatch) -> None:
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)


def hold_lock(work: Path, held: list) -> None:
    from covfuse.training.lock import RunLock

    held.append(RunLock(work / "runs/tiny"))


def finished_study(work: Path) -> None:
    """runs/st: a one-run study whose run is runs/tiny (as if `covfuse sweep --config runs/tiny/config.yaml`)."""
    from covfuse.studies.sweep import plan_study, write_study

    study = plan_study(name="st", configs=[str(work / "runs/tiny/config.yaml")], runs_dir=work / "runs")
    write_study(study)
    shutil.copytree(work / "runs/tiny", work / "runs/st/base/s0")


SWEEP = ["sweep", "--config", "runs/tiny/config.yaml"]


def unreadable(work: Path, monkeypatch) -> None:
    path = work / ROOT / "identity_CelebA.txt"
    path.chmod(0)
    if os.geteuid() == 0:  # root reads mode-000 files: make reading it fail as it would for a user
        real = Path.read_bytes

        def denied(self):
            if self.name == path.name:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", denied)


def data_moved(work: Path) -> None:
    """runs/tiny as if trained on work/twin (recorded as given, as runs before absolute roots did), which then
    moved to work/moved."""
    import yaml

    config = yaml.safe_load((work / "runs/tiny/config.yaml").read_text())
    config["data"]["root"] = ROOT
    (work / "runs/tiny/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "twin").rename(work / "moved")


def threshold_unscored(work: Path) -> None:
    """runs/tiny as if its metrics.threshold were youden and it had not been scored yet (no metrics.json)."""
    import yaml

    config = yaml.safe_load((work / "runs/tiny/config.yaml").read_text())
    config["metrics"]["threshold"] = "youden"
    (work / "runs/tiny/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "runs/tiny/metrics.json").unlink()


def other_data(work: Path) -> None:
    """``other``: the twin with one attribute of one image flipped (another data set, same layout)."""
    shutil.copytree(work / ROOT, work / "other")
    lines = (work / "other/list_attr_celeba.txt").read_text().splitlines()
    lines[2] = lines[2][:-2] + ("-1" if lines[2].endswith(" 1") else " 1")
    (work / "other/list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")


@dataclass
class Case:
    id: str
    what: str
    argv: list[str]
    expect: str
    setup: Callable | None = None  # setup(work) or setup(work, monkeypatch)


def image_manifest(work: Path, rows: list[str], header: str = "subject,path,split,label,age") -> None:
    """``m.csv`` in ``work`` naming 8x8 PNGs under ``img/`` (written for every row whose file ends in .png)."""
    from PIL import Image

    (work / "img").mkdir(exist_ok=True)
    for row in rows:
        path = row.split(",")[1]
        if path.endswith(".png") and not (work / path).exists():
            Image.new("L", (8, 8), 100).save(work / path)
    (work / "m.csv").write_text("\n".join([header, *rows]) + "\n")


def truncated_png(work: Path) -> None:
    image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/b.png,valid,1,50", "s3,img/c.png,test,0,60"])
    data = (work / "img/b.png").read_bytes()
    (work / "img/b.png").write_bytes(data[: len(data) // 2])


def bids(work: Path, damage: str) -> None:
    """``study/``: a small BIDS dataset (tests/data/test_bids.py) with one thing wrong."""
    from data.test_bids import _damage, make_bids

    make_bids(work / "study")
    _damage(damage, work / "study")


def truncated_dicom(work: Path) -> None:
    """A manifest whose second DICOM file lost its second half (a broken PACS transfer)."""
    from data.test_decoders import _write_dicom as write_dicom

    (work / "img").mkdir()
    for name in ("a", "b", "c"):
        write_dicom(work / "img" / f"{name}.dcm", np.full((16, 16), 300, dtype=np.uint16))
    data = (work / "img/b.dcm").read_bytes()
    (work / "img/b.dcm").write_bytes(data[: len(data) - 300])
    (work / "m.csv").write_text("subject,path,label\ns1,img/a.dcm,0\ns2,img/b.dcm,1\ns3,img/c.dcm,1\n")


def id_twice(work: Path) -> None:
    image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/b.png,valid,1,50", "s3,img/c.png,test,0,60"])
    (work / "m.csv").write_text("id,subject,path,split,label,age\nr1,s1,img/a.png,train,0,40\n"
                                "r2,s2,img/b.png,valid,1,50\nr1,s3,img/c.png,test,0,60\n")


def nan_volumes(work: Path) -> None:
    """A volume manifest whose second NIfTI masks its background with NaN (as SPM/FSL write it)."""
    import nibabel as nib

    (work / "vol").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        data = rng.normal(100, 10, (8, 8, 8)).astype(np.float32)
        if i == 1:
            data[:2] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(work / f"vol/v{i}.nii.gz"))
    (work / "m.csv").write_text("subject,path,split,label,age\ns0,vol/v0.nii.gz,train,0,40\n"
                                "s1,vol/v1.nii.gz,valid,1,50\ns2,vol/v2.nii.gz,test,1,60\n")


def volume_files(work: Path, damage: str) -> None:
    """``m.csv`` naming three volumes as scanners deliver them (a DICOM series folder, NIfTI files), one of them as
    ``damage`` says: a folder of two series, a series missing a slice, a 4-D NIfTI."""
    import nibabel as nib
    from data_fixtures import write_dicom_series

    affine = np.array([[0.0, 0.0, -2.5, 40.0], [1.25, 0.0, 0.0, -30.0], [0.0, -1.0, 0.0, 20.0], [0, 0, 0, 1]])
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    files = write_dicom_series(work / "MR700", data, affine, uid="1.2.826.0.1.1", description="T1 MPRAGE")
    nib.save(nib.Nifti1Image(np.stack([data] * 3, axis=-1) if damage == "4-D" else data, affine), str(work / "v.nii.gz"))
    if damage == "two series":
        write_dicom_series(work / "MR700", data[:, :, :2], affine, uid="1.2.826.0.1.2", description="localizer", seed=1)
    if damage == "gap":
        import pydicom

        sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[0]))[1].unlink()
    nib.save(nib.Nifti1Image(data, affine), str(work / "w.nii.gz"))
    (work / "m.csv").write_text("subject,path,label,age\ns1,MR700,0,40\ns2,v.nii.gz,1,50\ns3,w.nii.gz,1,60\n")


def survival_volumes(work: Path, event_times=(1.0, 2.0, 3.0, 4.0)) -> None:
    """A survival manifest of 12 tiny volumes followed up to week 52 (age, time, event), the training
    split's events at ``event_times``."""
    import nibabel as nib

    (work / "vol").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    train = [(t, 1) for t in event_times] + [(52.0, 0)] * (6 - len(event_times))
    for i, (split, (time, event)) in enumerate([*(("train", te) for te in train), ("valid", (3.0, 1)),
                                                ("valid", (52.0, 0)), ("valid", (20.0, 1)), ("test", (5.0, 1)),
                                                ("test", (52.0, 0)), ("test", (30.0, 1))]):
        nib.save(nib.Nifti1Image(rng.normal(100, 10, (8, 8, 8)).astype(np.float32), np.eye(4)),
                 str(work / f"vol/v{i}.nii.gz"))
        rows.append(f"s{i},vol/v{i}.nii.gz,{split},{time},{event},{40 + i}")
    (work / "m.csv").write_text("subject,path,split,time,event,age\n" + "\n".join(rows) + "\n")


SURVIVAL = ["fit", "--data.root", "m.csv", "--data.target", "time", "--data.event", "event", "--data.covariates",
            "age", "--model.head", "survival", "--model.backbone", "resnet3d-compact", "--data.image_size", "8",
            "--data.batch_size", "2", "--data.cache", "off", "--trainer.accelerator", "cpu"]


def float_tiff(work: Path) -> None:
    import tifffile

    image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/b.tif,valid,1,50"])
    pixels = np.ones((8, 8), np.float32)
    pixels[0] = np.nan
    tifffile.imwrite(work / "img/b.tif", pixels)


def old_workbook(work: Path) -> None:
    """An Excel 97-2003 workbook (what "Save as Excel 97" writes: an OLE2 container)."""
    (work / "m.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)


def workbook(work: Path) -> None:
    """m.xlsx (openpyxl) with the sheets baseline and visits, naming three PNGs."""
    import openpyxl

    image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/b.png,valid,1,50", "s3,img/c.png,test,0,60"])
    book = openpyxl.Workbook()
    book.active.title = "baseline"
    book.create_sheet("visits")
    for sheet in book.worksheets:
        for line in (work / "m.csv").read_text().splitlines():
            sheet.append(line.split(","))
    book.save(work / "m.xlsx")


def date_column(work: Path) -> None:
    image_manifest(work, ["s1,img/a.png,train,0,2021-03-04", "s2,img/b.png,valid,1,2021-05-17",
                          "s3,img/c.png,test,0,2022-01-09"], header="subject,path,split,label,scan_date")


def dicomdir(work: Path) -> None:
    """A manifest row naming the DICOMDIR pydicom's FileSet writes beside a disc's images."""
    import pydicom
    from pydicom.fileset import FileSet

    from data.test_decoders import _write_dicom as write_dicom

    image_manifest(work, ["s1,img/a.png,train,0,40", "s2,disc/DICOMDIR,valid,1,50", "s3,img/c.png,test,0,60"])
    write_dicom(work / "x.dcm", np.full((8, 8), 300, dtype=np.uint16))
    ds = pydicom.dcmread(work / "x.dcm")
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "p1", "A^B", "1.2.3", "1.2.3.4"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", "1", 1, 1
    fs = FileSet()
    fs.add(ds)
    fs.write(work / "disc")
    (work / "x.dcm").unlink()


def without_module(name: str, then: Callable | None = None):
    """A setup that makes ``import name`` (and importlib's find_spec) fail, as on a machine without the extra."""
    def setup(work, monkeypatch):
        import importlib.util
        import sys

        if then is not None:
            then(work)
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))
        monkeypatch.setitem(sys.modules, name, None)
    return setup


SEARCH = ["sweep", "--config", "sweep.yaml", "--name", "search", "--search", "optuna", "--trials", "2"]


def SEARCH_CONFIG(work):  # noqa: N802 (a setup, named like the command list it goes with)
    (work / "sweep.yaml").write_text(f"data:\n  root: {ROOT}\n  image_size: 16\n")


def resume(*extra):
    return ["fit", "--name", "tiny", "--resume", *extra]


CASES = [
    Case("manifest-mixed", "a manifest naming 2D images and volumes", ["data", "info", "m.csv"],
         "m.csv, line 3: 'img/v.nii.gz' is a volume but earlier rows name 2D images; one manifest holds one kind",
         lambda work: image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/v.nii.gz,test,1,50"])),
    Case("manifest-two-splits", "a subject in two splits", ["data", "info", "m.csv"],
         "m.csv, line 3: subject s1 is in split test but line 2 puts it in train; a subject must stay in one split",
         lambda work: image_manifest(work, ["s1,img/a.png,train,0,40", "s1,img/b.png,test,1,50"])),
    Case("manifest-column", "a column named in the config but absent", ["data", "info", "m.csv", "--target", "lable"],
         "m.csv: no column 'lable' (did you mean 'label'?)",
         lambda work: image_manifest(work, ["s1,img/a.png,train,0,40", "s2,img/b.png,test,1,50"])),
    Case("manifest-truncated", "a truncated PNG in a manifest", ["data", "info", "m.csv"],
         "m.csv, line 3 (subject s2): img/b.png: cannot decode the image", truncated_png),
    Case("manifest-truncated-dicom", "a truncated DICOM file in a manifest", ["data", "info", "m.csv"],
         "m.csv, line 3 (subject s2): img/b.dcm: cannot decode the image", truncated_dicom),
    Case("manifest-id-twice", "an id column naming a row twice", ["data", "info", "m.csv"],
         "m.csv, line 4: id 'r1' is also on line 2; the id column names each row once", id_twice),
    Case("verify-truncated-dicom", "data verify on a manifest with a truncated DICOM", ["data", "verify", "m.csv"],
         "verification failed: m.csv, line 3 (subject s2): img/b.dcm does not decode (DICOM:", truncated_dicom),
    Case("image-float-nan", "a float TIFF with NaN pixels in a manifest", ["data", "info", "m.csv"],
         "img/b.tif: cannot read the image (float32 samples, 8 of them NaN/Inf", float_tiff),
    Case("manifest-xls", "an Excel 97-2003 workbook as data.root", ["data", "info", "m.xls"],
         "m.xls: covfuse reads .xlsx workbooks and CSV/TSV, not .xls files: save it as .xlsx", old_workbook),
    Case("manifest-sheet", "an .xlsx manifest and a sheet it does not have", ["data", "info", "m.xlsx", "--sheet", "visit"],
         "m.xlsx: no sheet 'visit' (did you mean 'visits'?); its sheets: baseline, visits (set data.sheet", workbook),
    Case("covariate-date", "a date column as a covariate",
         ["fit", "--data.root", "m.csv", "--data.target", "label", "--data.covariates", "scan_date", "--data.image_size",
          "16", "--trainer.accelerator", "cpu"],
         "m.csv: column 'scan_date' holds dates (e.g. '2021-03-04'); a date is no covariate as it is: convert it to a "
         "number", date_column),
    Case("manifest-dicomdir", "a manifest row naming a DICOMDIR", ["data", "info", "m.csv"],
         "disc/DICOMDIR: cannot read the image (a DICOMDIR: the index of a DICOM disc or folder, not an image; list the "
         "image files it indexes", dicomdir),
    Case("volume-nonfinite-refuse", "NaN voxels with data.nonfinite refuse",
         ["fit", "--data.root", "m.csv", "--data.target", "label", "--data.covariates", "age", "--data.image_size",
          "8", "--data.nonfinite", "refuse", "--trainer.accelerator", "cpu"],
         "m.csv, line 3 (subject s1): vol/v1.nii.gz has 128 NaN/Inf voxel(s); set data.nonfinite zero", nan_volumes),
    Case("volume-series-several", "a folder holding two DICOM series", ["data", "info", "m.csv"],
         "m.csv, line 2 (subject s1): MR700: holds 2 DICOM series: 1.2.826.0.1.1 'T1 MPRAGE' (4 files); 1.2.826.0.1.2 "
         "'localizer' (2 files); choose one with data.series (its SeriesInstanceUID or description; "
         "`covfuse data info --series`)", lambda work: volume_files(work, "two series")),
    Case("volume-series-gap", "a DICOM series missing a slice", ["data", "info", "m.csv"],
         "m.csv, line 2 (subject s1): MR700: uneven slice spacing: 5.000 mm from", lambda work: volume_files(work, "gap")),
    Case("volume-4d", "a 4-D NIfTI without data.volume_index", ["data", "info", "m.csv"],
         "m.csv, line 3 (subject s2): v.nii.gz holds 3 volumes (4-D, 6x5x4x3); choose one with data.volume_index (0 to 2, "
         "-1 the last; `covfuse data info --volume_index N`)", lambda work: volume_files(work, "4-D")),
    Case("bids-no-participants", "a BIDS dataset without participants.tsv", ["data", "info", "study"],
         "participants.tsv: not found; a BIDS dataset lists its subjects there",
         lambda work: bids(work, "no participants.tsv")),
    Case("bids-unlisted", "a BIDS subject missing from participants.tsv", ["data", "info", "study"],
         "participants.tsv: subject folder sub-05/ is not listed", lambda work: bids(work, "folder not listed")),
    # -- run folders and resuming --
    Case("resume-covariates", "--resume with a different covariate list", resume("--data.covariates", "Young"),
         "--resume: data.covariates is ['Young', 'Male'] in runs/tiny/config.yaml but ['Young'] here"),
    Case("resume-model", "--resume with another model", resume("--model.fusion", "concat"),
         "--resume: model.fusion is 'hybrid'"),
    Case("resume-missing", "--resume of a run that does not exist", ["fit", "--name", "nope", "--resume"],
         "runs/nope: no run to resume (no config.yaml there); start it without --resume"),
    Case("resume-overwrite", "--resume and --overwrite together", resume("--overwrite"),
         "--resume continues a run and --overwrite replaces it: pass only one"),
    Case("resume-unreadable", "--resume of a run whose last checkpoint is damaged", resume(),
         "runs/tiny/checkpoints/last.ckpt: not a readable checkpoint",
         lambda work: (work / "runs" / "tiny" / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04junk")),
    Case("run-exists", "a run name that is taken", [*FIT, "--name", "tiny"],
         "runs/tiny already exists; pass --overwrite to replace it, --resume to continue it"),
    Case("run-locked", "a second process on a run in use", resume(), "runs/tiny is in use by another covfuse process",
         lambda work, held: hold_lock(work, held)),
    Case("run-name-path", "a run name with a path separator", [*FIT, "--name", "../escape"],
         "run name '../escape' must be a plain folder name"),
    # -- hardware --
    Case("no-gpu", "--trainer.accelerator gpu on a machine without one", [*FIT, "--trainer.accelerator", "gpu"],
         "--trainer.accelerator gpu: this machine has no usable GPU"),
    Case("devices-exist", "more devices than the machine has", [*FIT, "--trainer.devices", "4096"],
         "--trainer.devices 4096: this machine has"),
    Case("devices-fill", "more processes than the data can fill",
         [*FIT, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "32"],
         "--trainer.devices"),
    # -- numbers and names in the config --
    Case("lr", "a learning rate <= 0", [*FIT, "--optim.lr", "0"], "optim.lr must be a positive number"),
    Case("batch-size", "batch size 0", [*FIT, "--data.batch_size", "0"], "data.batch_size must be at least 1"),
    Case("epochs", "epochs < 1", [*FIT, "--trainer.max_epochs", "0"], "trainer.max_epochs must be at least 1"),
    Case("folds", "one fold", [*FIT, "--data.folds", "1"], "data.folds must be 0 (the official split) or at least 2"),
    Case("target-typo", "a misspelt target", [*FIT, "--data.target", "Atractive"],
         "unknown attribute 'Atractive' (did you mean 'Attractive'?)"),
    Case("covariate-typo", "a misspelt covariate", [*FIT, "--data.covariates", "Yuong"],
         "unknown attribute 'Yuong' (did you mean 'Young'?)"),
    Case("categorical-typo", "a data.categorical name that is not a covariate", [*FIT, "--data.categorical", "[Yuong]"],
         "data.categorical names 'Yuong', which is not in data.covariates (Young, Male) (did you mean 'Young'?)"),
    Case("target-is-covariate", "a covariate equal to the target", [*FIT, "--data.covariates", "Attractive,Male"],
         "data.target Attractive is also in data.covariates"),
    Case("head-celeba", "a multi-class head on CelebA's binary attributes", [*FIT, "--model.head", "multiclass"],
         "model.head multiclass needs a target with several classes or numbers; twin/celeba holds binary attributes only"),
    Case("monitor-head", "a monitor the head does not log", [*FIT, "--monitor", "val/mae"],
         "monitor val/mae does not exist for head binary; use val/loss, val/acc, val/brier"),
    Case("monitor-survival", "a monitor a survival head does not log",
         [*FIT, "--model.head", "survival", "--data.event", "Male", "--monitor", "val/acc"],
         "monitor val/acc does not exist for head survival; use val/c_index, val/loss, val/ibs"),
    Case("ties-head", "Efron ties on a head without times", [*FIT, "--model.ties", "efron"],
         "model.ties efron is for model.head survival; head binary has no tied times to handle"),
    Case("eval-times-head", "survival evaluation times on another head", [*FIT, "--data.eval_times", "[1,2]"],
         "data.eval_times and metrics.tau are for model.head survival; head binary does not use them"),
    Case("threshold-rule", "a decision threshold that is no rule", [*FIT, "--metrics.threshold", "sensitivity=1.5"],
         "metrics.threshold must be a probability in (0, 1) (e.g. 0.5), youden, sensitivity=S or specificity=S with S "
         "in (0, 1] (e.g. --metrics.threshold sensitivity=0.9); got 'sensitivity=1.5'"),
    Case("threshold-head", "a decision threshold on a head without one",
         [*FIT, "--model.head", "multiclass", "--metrics.threshold", "youden"],
         "metrics.threshold is for binary heads (binary, two-class); head multiclass predicts the most probable class"),
    Case("flag-typo", "a misspelt option", [*FIT, "--optim.lrr", "1"], "unknown option --optim.lrr (did you mean 'optim.lr'?)"),
    Case("config-key-typo", "a misspelt key in a config file", ["fit", "--config", "my.yaml"],
         "my.yaml: unknown config key optim.learning_rat",
         lambda work: (work / "my.yaml").write_text("optim:\n  learning_rat: 0.1\n")),
    Case("no-data", "no data folder given", ["fit", "--name", "x"],
         "no data: set data.root in the config or pass --data.root (a CelebA folder, a manifest CSV or a BIDS folder)"),
    # -- the data folder --
    Case("root-missing", "data root missing", [*FIT, "--data.root", "nowhere"], "nowhere: no such folder"),
    Case("root-manifest-folder", "the folder holding a manifest given instead of the manifest", ["data", "info", "mf"],
         "mf: a folder holding manifests, not a dataset folder; give the manifest itself (mf/a.csv or mf/b.tsv)",
         lambda work: [(work / "mf").mkdir(), (work / "mf/a.csv").write_text("subject,path\n"),
                       (work / "mf/b.tsv").write_text("subject\tpath\n")]),
    Case("root-empty", "data root empty", [*FIT, "--data.root", "empty"], "empty: not a CelebA folder",
         lambda work: (work / "empty").mkdir()),
    Case("root-unreadable", "a release file that cannot be read", [*FIT],
         "twin/celeba/identity_CelebA.txt: permission denied", lambda work, mp: unreadable(work, mp)),
    Case("file-missing", "a release file missing", [*FIT], "twin/celeba/identity_CelebA.txt: required file is missing",
         lambda work: (work / ROOT / "identity_CelebA.txt").unlink()),
    Case("file-truncated", "a release file truncated", [*FIT], "twin/celeba/list_attr_celeba.txt",
         lambda work: write_attr(work, attr_lines(work)[:-3])),
    Case("file-count", "a wrong image count", [*FIT], "declares 61 images but the file has 60 rows",
         lambda work: write_attr(work, ["61", *attr_lines(work)[1:]])),
    Case("value-range", "an attribute value outside {-1, 1}", [*FIT], "list_attr_celeba.txt: line 3: expected -1 or 1",
         lambda work: edit_row(work, 3, " 1", " 2") if " 1" in attr_lines(work)[2] else edit_row(work, 3, "-1", " 2")),
    Case("split-code", "an unknown split code", [*FIT], "list_eval_partition.txt: line 1: expected split code 0 (train), 1 (valid) or 2 (test)",
         lambda work: (work / ROOT / "list_eval_partition.txt").write_text(
             (work / ROOT / "list_eval_partition.txt").read_text().replace(" 0", " 7", 1))),
    Case("image-absent", "a row naming an absent image", [*FIT], "image is missing (listed on line 3",
         lambda work: first_train_image(work).unlink()),
    Case("image-corrupt", "a corrupt JPEG while training (cache off)", [*FIT, "--data.cache", "off", "--name", "c"],
         "cannot decode the image",
         lambda work: first_train_image(work).write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")),
    Case("image-empty", "a zero-byte image (cache off)", [*FIT, "--data.cache", "off"],
         "cannot decode the image (empty file, 0 bytes)", lambda work: first_train_image(work).write_bytes(b"")),
    Case("image-empty-cache", "a zero-byte image while building the cache", ["data", "cache", ROOT, "--size", "16"],
         "cannot decode the image (empty file, 0 bytes)", lambda work: first_train_image(work).write_bytes(b"")),
    Case("disk-full", "the disk fills up while writing", [*FIT, "--name", "full"], "the disk is full",
         lambda work, mp: disk_full(mp)),
    Case("method-layer-typo", "a misspelt placement of a method from docs/methods.md",
         [*FIT, "--model.fusion", "hyper", "--model.options", "{hyper_layers: features.99}"],
         "'features.99' is not one of the hyper layers (convolutions) of vgg-mini"),
    Case("fusion-init-typo", "an unknown initialisation for the methods of docs/methods.md",
         [*FIT, "--model.fusion", "film", "--model.options", "{fusion_init: paper}"],
         "fusion_init must be one of identity, reference, got 'paper'"),
    Case("weights-pickle", "a weights file carrying a pickle payload", [*FIT, "--model.weights", "evil.pt"],
         "evil.pt: refused: this weights file carries pickled Python objects",
         lambda work: torch.save({"features.0.weight": torch.zeros(1), "x": Payload()}, work / "evil.pt")),
    # -- evaluating and predicting --
    Case("test-no-run", "test a run that does not exist", ["test", "nope"], "no run 'nope'"),
    Case("cache-folder", "a cache folder that cannot be made", [*FIT, "--name", "c", "--data.cache", "build",
         "--data.cache_dir", "afile/caches"], "afile/caches: cannot create the cache folder (Not a directory); set "
         "data.cache_dir DIR (fit) or --cache_dir DIR (data cache) to a writable folder",
         lambda work: (work / "afile").write_text("not a folder")),
    Case("test-data-moved", "test a run whose data moved away", ["test", "tiny"],
         "twin/celeba: the run's data is not there any more; if it moved, pass --data.root NEW", data_moved),
    Case("test-other-data", "test a run with --data.root naming other data", ["test", "tiny", "--data.root", "other"],
         "other: other data than the run was trained on", other_data),
    Case("ckpt-other-model", "a checkpoint from another model", ["test", "tiny", "--ckpt", "other.ckpt"],
         "other.ckpt: its weights do not fit the model", other_model_checkpoint),
    Case("ckpt-corrupt", "a corrupt checkpoint", ["test", "tiny", "--ckpt", "junk.ckpt"],
         "junk.ckpt: not a readable checkpoint", lambda work: (work / "junk.ckpt").write_bytes(b"PK\x03\x04junk")),
    Case("ckpt-pickle", "a checkpoint carrying a pickle payload", ["test", "tiny"],
         "runs/tiny/checkpoints/best.ckpt: refused: this checkpoint carries pickled Python objects", pickle_checkpoint),
    Case("predict-not-image", "predict on a file that is not an image", ["predict", "tiny", "notes.txt",
         "--covariates", "Young=1,Male=0"], "notes.txt: cannot decode the image (not an image file)",
         lambda work: (work / "notes.txt").write_text("hello")),
    Case("predict-times-head", "predict --times on a run without a survival head",
         ["predict", "tiny", "x.jpg", "--covariates", "Young=1,Male=0", "--times", "1,2"],
         "--times gives survival probabilities; runs/tiny has head binary, not survival"),
    Case("predict-threshold-unscored", "predict from a run whose threshold was never chosen",
         ["predict", "tiny", "x.jpg", "--covariates", "Young=1,Male=0"],
         "runs/tiny: no metrics.json, so metrics.threshold youden has not been chosen on the valid split yet; score "
         "the run first: covfuse test runs/tiny", lambda work: threshold_unscored(work)),
    Case("predict-times-word", "predict --times with a word", ["predict", "tiny", "x.jpg", "--covariates",
                                                                "Young=1,Male=0", "--times", "1,soon"],
         "--times: 'soon' is not a number"),
    Case("predict-times-empty", "predict --times with an empty item", ["predict", "tiny", "x.jpg", "--covariates",
                                                                      "Young=1,Male=0", "--times", "1,,2"],
         "--times: '1,,2' has an empty item"),
    Case("predict-times-separator", "predict --times with a digit separator",
         ["predict", "tiny", "x.jpg", "--covariates", "Young=1,Male=0", "--times", "1_000"],
         "--times: '1_000' is not a number"),
    Case("fit-eval-times-outside", "survival evaluation times after the end of follow-up",
         [*SURVIVAL, "--data.eval_times", "[60,100]"],
         "data.eval_times [60, 100] lie outside the training split's follow-up (1 <= t < 52)",
         lambda work: survival_volumes(work)),
    Case("fit-tau-outside", "Uno's tau after the end of follow-up", [*SURVIVAL, "--metrics.tau", "1000"],
         "metrics.tau 1000 lies outside the training split's follow-up (1 < τ <= 52)",
         lambda work: survival_volumes(work)),
    Case("fit-grid-one-time", "every training event at one time, no evaluation grid given", SURVIVAL,
         "the default evaluation grid (quartiles of the training event times) needs at least two distinct times",
         lambda work: survival_volumes(work, (0.0, 0.0, 0.0))),
    Case("predict-folder", "predict given a folder", ["predict", "tiny", "twin", "--covariates", "Young=1,Male=0"],
         "twin: a folder, not an image file"),
    Case("predict-missing-cov", "predict with a covariate missing", ["predict", "tiny", "x.jpg", "--covariates",
         "Young=1"], "--covariates: missing Male"),
    Case("predict-extra-cov", "predict with an extra covariate", ["predict", "tiny", "x.jpg", "--covariates",
         "Young=1,Male=0,Smiling=1"], "the model has no covariate 'Smiling'"),
    Case("predict-minus-one", "predict with CelebA's -1 convention", ["predict", "tiny", "x.jpg", "--covariates",
         "Young=-1,Male=1"], "Young=-1 was never seen in training, which had Young in {0, 1}"),
    Case("predict-out-of-range", "predict with a value never seen in training", ["predict", "tiny", "x.jpg",
         "--covariates", "Young=5,Male=1"], "Young=5 was never seen in training"),
    Case("predict-nan", "predict with a NaN covariate", ["predict", "tiny", "x.jpg", "--covariates",
         "Young=nan,Male=1"], "covariate Young is nan; give a finite number"),
    Case("predict-strict", "predict --strict on a table with a value training never saw",
         ["predict", "tiny", "--csv", "in.csv", "--strict"], "in.csv row 3: Young=5 was never seen in training",
         lambda work: (work / "in.csv").write_text("image,Young,Male\nx.jpg,1,0\nx.jpg,5,1\n")),
    # -- studies --
    Case("sweep-grid-value", "a misspelt grid value (found before any run trains)",
         [*SWEEP, "--name", "s", "--grid", "model.fusion=image-only,hybird"],
         "run fusion=hybird/s0 (model.fusion=hybird): unknown fusion 'hybird' (did you mean 'hybrid'?)"),
    Case("sweep-changed", "a study rerun with a setting its finished runs did not have",
         [*SWEEP, "--name", "st", "--optim.lr", "0.5"],
         "1 run(s) of study st were trained with other settings (base/s0: optim.lr", finished_study),
    Case("sweep-samples", "a study whose runs would be scored on different samples",
         [*SWEEP, "--name", "sp", "--data.folds", "2", "--grid", "data.split_seed=0,1"],
         "would be scored on different samples (data.split_seed differ)"),
    Case("status-no-study", "status of a study that does not exist", ["status", "nope"], "no study 'nope'"),
    Case("predict-inf-csv", "predict from a CSV with an infinite covariate", ["predict", "tiny", "--csv", "in.csv"],
         "in.csv:2: covariate Male is inf; give a finite number",
         lambda work: (work / "in.csv").write_text("image,Young,Male\nx.jpg,1,inf\n")),
    # -- trackers and the Optuna search (issue 20) --
    Case("logger-unknown", "a misspelt tracker", [*FIT, "--trainer.logger", "[csv,tensorbord]"],
         "trainer.logger: unknown logger 'tensorbord' (did you mean 'tensorboard'?)"),
    Case("logger-missing", "a tracker whose package is not installed", [*FIT, "--trainer.logger", "mlflow"],
         "trainer.logger mlflow needs the mlflow package: pip install 'covfuse[mlflow]'", without_module("mlflow")),
    Case("search-missing", "--search optuna without optuna installed", [*SEARCH, "--tune", "optim.lr=log:1e-4..1e-2"],
         "--search optuna needs the optuna package: pip install 'covfuse[search]'", without_module("optuna", SEARCH_CONFIG)),
    Case("search-space", "a range whose ends are the wrong way round", [*SEARCH, "--tune", "optim.lr=log:1e-2..0"],
         "--tune optim.lr=log:1e-2..0: a range is LO..HI with numbers LO < HI", SEARCH_CONFIG),
    Case("search-no-space", "--search optuna without a space", SEARCH,
         "--search optuna needs a space: --tune KEY=V1,V2 | KEY=LO..HI | KEY=log:LO..HI", SEARCH_CONFIG),
    # -- values of the wrong type (issue 32; every option: tests/cli/test_option_values.py) --
    Case("option-type", "a word where a number belongs", [*FIT, "--data.image_size", "big"],
         "--data.image_size big: data.image_size takes an integer, e.g. --data.image_size 224"),
    Case("option-choice", "a value outside an option's choices", [*FIT, "--monitor", "val/auc"],
         "--monitor val/auc: monitor takes one of val/loss, val/acc, val/brier, val/mae, val/c_index, val/ibs, null, "
         "e.g. --monitor val/loss"),
    Case("option-numbers-as-names", "class names that YAML reads as numbers", [*FIT, "--data.classes", "[0,1]"],
         "--data.classes [0,1]: data.classes takes a list of names such as [a,b] or null, e.g. --data.classes [a,b]; "
         "numbers and yes/no are read as numbers and booleans: quote them, e.g. --data.classes '[\"0\",\"1\"]'"),
    Case("config-value-type", "a value of the wrong type in a config file", ["fit", "--config", "my.yaml"],
         "my.yaml: optim.lr: fast is not allowed; optim.lr takes a number (e.g. lr: 0.001 under optim:)",
         lambda work: (work / "my.yaml").write_text("optim:\n  lr: fast\n")),
    Case("argparse-type", "a word where a command's number belongs", ["data", "synth", "out", "--n", "many"],
         "--n many: expected an integer; see `covfuse data synth --help`"),
    # -- covfuse data show (issue 32) --
    Case("show-unknown-id", "data show with an id no row has", ["data", "show", ROOT, "--ids", "000999.jpg",
                                                                 "--out", "s.png"],
         "--ids: no row of twin/celeba has the id '000999.jpg'"),
    Case("show-out-suffix", "data show --out neither .png nor .npy", ["data", "show", ROOT, "--out", "s.jpg"],
         "--out s.jpg: name a .png (the montage) or a .npy (one row's decoded array), e.g. --out s.png"),
    Case("show-out-folder", "data show --out in a folder that is a file", ["data", "show", ROOT, "--out", "afile/s.png"],
         "--out afile/s.png: afile is a file, not a folder; choose another --out",
         lambda work: (work / "afile").write_text("not a folder")),
    Case("show-npy-rows", "data show --out FILE.npy for several rows", ["data", "show", ROOT, "--rows", "4", "--out",
                                                                       "s.npy"],
         "--out s.npy: a .npy holds one row's array; give --rows 1 or --ids ID (a .png shows several)"),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file's size and mtime (folders: only that they exist; the lock file is allowed to appear)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.name != ".lock" and not p.is_symlink()}


def is_progress_bar(line: str) -> bool:
    return "\r" in line or ("%|" in line and "/s]" in line)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case, base, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(base, work, symlinks=True)
    monkeypatch.chdir(work)
    held: list = []
    if case.setup is not None:
        nargs = case.setup.__code__.co_argcount
        case.setup(*(work, monkeypatch if case.id not in ("run-locked",) else held)[:nargs])
    capsys.readouterr()
    before = snapshot(work)
    try:
        code = covfuse(case.argv)
    finally:
        monkeypatch.undo()
        monkeypatch.chdir(work)
        for lock in held:
            lock.release()
        (work / ROOT / "identity_CelebA.txt").chmod(0o644) if (work / ROOT / "identity_CelebA.txt").exists() else None
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip() and not is_progress_bar(line)]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    command = case.argv[0]
    assert lines[0].startswith(f"covfuse {command}: error: ") and case.expect in lines[0], lines[0]
    assert len(lines[0]) < 400
    assert snapshot(work) == before  # nothing written, nothing replaced, nothing left half-made
    assert not (work / "MARKER").exists()  # no pickled code ran
    message = lines[0].split(": error: ", 1)[1]
    if os.environ.get("COVFUSE_WRITE_ERRORS_DOC"):
        rows = Path(os.environ["COVFUSE_WRITE_ERRORS_DOC"])
        rows.mkdir(parents=True, exist_ok=True)
        (rows / f"{CASES.index(case):03d}.json").write_text(json.dumps(
            {"id": case.id, "what": case.what, "argv": case.argv, "message": message}))
    else:
        row = next((line for line in DOC.read_text().splitlines() if line.startswith(f"| `{case.id}` |")), None)
        assert row is not None, f"docs/errors.md has no row for {case.id}"
        assert case.expect.replace("|", "\\|") in row, f"docs/errors.md row for {case.id} lacks its message"


def test_skip_corrupt_counts_and_lists_the_images_it_leaves_out(base, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(base, work, symlinks=True)
    monkeypatch.chdir(work)
    partition = (work / ROOT / "list_eval_partition.txt").read_text().split()
    names = dict(zip(partition[::2], partition[1::2]))
    bad_train = next(n for n, s in names.items() if s == "0")
    bad_test = next(n for n, s in names.items() if s == "2")
    (work / ROOT / "img_align_celeba" / bad_train).write_bytes(b"")
    (work / ROOT / "img_align_celeba" / bad_test).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    assert covfuse([*FIT, "--name", "skip", "--data.cache", "off", "--trainer.limit_train_batches", "1",
                    "--skip-corrupt"]) == 0
    run = work / "runs/skip"
    assert (run / "skipped.txt").read_text().split() == sorted([bad_train, bad_test])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_images"] == 2
    predicted = {line.split(",")[0] for line in (run / "predictions.csv").read_text().splitlines()[1:]}
    assert bad_test not in predicted and len(predicted) == sum(s != "0" for s in names.values()) - 1
    assert "skipped 2 image(s) that do not decode" in (run / "log.txt").read_text()
