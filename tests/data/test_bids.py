"""BIDS datasets (covfuse.data.bids) written here file by file, and the MNI152 twin in BIDS form."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.data.readers.bids import is_bids, read_bids
from covfuse.data.readers.manifest import read_manifest
from covfuse.data.table import CovariateEncoder, column_kind, is_missing, subject_split
from covfuse.errors import UserError

PARTICIPANTS = [  # participant_id, age, sex, group (levels 0/1: categorical although numeric), site
    ("sub-01", "71.5", "F", "1", "A"),
    ("sub-02", "n/a", "M", "0", "B"),
    ("sub-03", "64", "n/a", "1", "A"),
    ("sub-04", "58.25", "F", "0", "n/a"),
]
SESSIONS = {"01": ["1", "2"], "02": ["1"], "03": ["1", "2"], "04": ["2"]}
SESSION_TABLE = {"01": [("ses-1", "3T", "n/a"), ("ses-2", "1.5T", "12")], "03": [("ses-2", "3T", "30")]}


def _volume(path, seed):
    data = np.random.default_rng(seed).normal(size=(4, 4, 4)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return data


def _tsv(path, header, rows):
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")


def make_bids(root):
    """A small study: 4 participants with sessions, n/a values, a sessions.tsv, a second run, files to ignore.
    Returns the expected rows: (subject, session, run, volume)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    _tsv(root / "participants.tsv", ["participant_id", "age", "sex", "group", "site"], PARTICIPANTS)
    (root / "participants.json").write_text(json.dumps({
        "age": {"Description": "age at baseline", "Units": "years"},
        "sex": {"Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "0 control, 1 patient", "Levels": {"0": "control", "1": "patient"}},
    }))
    expected = []
    for k, (subject, sessions) in enumerate(SESSIONS.items()):
        for ses in sessions:
            anat = root / f"sub-{subject}" / f"ses-{ses}" / "anat"
            runs = ["", "_run-2"] if (subject, ses) == ("01", "2") else [""]
            for run in runs:
                path = anat / f"sub-{subject}_ses-{ses}{run}_T1w.nii.gz"
                expected.append((subject, ses, path, _volume(path, seed=100 * k + len(expected))))
            _volume(anat / f"sub-{subject}_ses-{ses}_T2w.nii.gz", seed=999)  # another suffix: not read
        if subject in SESSION_TABLE:
            _tsv(root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv", ["session_id", "field", "months"],
                 SESSION_TABLE[subject])
    _volume(root / "derivatives" / "x" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", seed=5)  # not raw data
    return expected


def test_rows_follow_participants_sessions_and_files(tmp_path):
    root = tmp_path / "study"
    expected = make_bids(root)
    assert is_bids(root) and not is_bids(tmp_path)
    m = read_bids(root)
    assert m.header == ["subject", "path", "session", "age", "sex", "group", "site", "field", "months"]
    assert list(m.subjects) == [s for s, *_ in expected] and m.columns["session"] == [ses for _, ses, *_ in expected]
    assert m.files == [p for *_, p, _ in expected]
    for file, (*_, volume) in zip(m.files, expected):
        assert np.array_equal(nib.load(str(file)).get_fdata(dtype=np.float32), volume)
    by_id = {p[0][4:]: p for p in PARTICIPANTS}
    for i, (subject, ses, *_) in enumerate(expected):
        assert [m.columns[c][i] for c in ("age", "sex", "group", "site")] == list(by_id[subject][1:])
        session_row = dict((r[0][4:], r[1:]) for r in SESSION_TABLE.get(subject, [])).get(ses, ("n/a", "n/a"))
        assert (m.columns["field"][i], m.columns["months"][i]) == session_row
    lines = {p[0]: n + 2 for n, p in enumerate(PARTICIPANTS)}
    assert list(m.line) == [lines[f"sub-{s}"] for s, *_ in expected]
    assert m.where(0) == f"{root / 'participants.tsv'}, line 2 (subject 01)"
    assert (m.split == -1).all() and "split" not in m.columns
    assert m.levels["group"] == {"0": "control", "1": "patient"} and list(m.categorical) == ["sex", "group"]
    assert m.units == {"age": "years"}


def test_the_table_feeds_the_covariate_encoder_and_subject_splits(tmp_path):
    make_bids(tmp_path / "study")
    m = read_bids(tmp_path / "study")
    assert column_kind(m, "group") == "categorical"  # declared by its Levels, though its values are numbers
    rows = np.arange(len(m))
    encoder = CovariateEncoder.fit(m, ["age", "group"], rows, categorical=m.categorical)
    assert encoder.feature_names == ["age", "age_missing", "group=0", "group=1"]
    ages = np.asarray([np.nan if is_missing(v) else float(v) for v in m.columns["age"]])
    x = encoder.transform(m)
    z = (ages - np.nanmean(ages)) / np.nanstd(ages)
    assert np.allclose(x[:, 0], np.where(np.isnan(ages), 0, z), atol=1e-6) and np.array_equal(x[:, 1], np.isnan(ages))
    split = subject_split(m, seed=3)
    for subject in set(m.subjects):  # sessions of one subject stay together
        assert len(set(split[m.subjects == subject])) == 1
    # subgroups and counterfactuals name a coded level by its Levels meaning; a word level stays as it is
    from covfuse.data.groups import covariate_groups
    from covfuse.studies.explain.counterfactual import plan_changes

    encoder = CovariateEncoder.fit(m, ["group", "sex"], rows, categorical=m.categorical)
    groups = covariate_groups(encoder, m, rows, rows)
    want = {"1": "1 (patient)", "0": "0 (control)"}
    assert groups["group"].values() == [want[v] for v in m.columns["group"]]
    assert set(groups["sex"].labels) == {"F", "M", "missing"}
    plan = plan_changes(encoder, m.units, levels=m.levels)
    assert plan["group"][0].label == "group: 0 (control) <-> 1 (patient)" and plan["sex"][0].label == "sex: F <-> M"


def test_a_dataset_without_sessions(tmp_path):
    root = tmp_path / "flat"
    (root / "sub-a1" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text("{}")
    _tsv(root / "participants.tsv", ["participant_id", "age"], [("sub-a1", "30")])
    _volume(root / "sub-a1" / "anat" / "sub-a1_acq-mprage_T1w.nii", seed=1)
    m = read_bids(root)
    assert m.header == ["subject", "path", "age"] and m.columns["path"] == ["sub-a1/anat/sub-a1_acq-mprage_T1w.nii"]


def _damage(case, root):
    if case == "no participants.tsv":
        (root / "participants.tsv").unlink()
    elif case == "folder not listed":
        _volume(root / "sub-05" / "ses-1" / "anat" / "sub-05_ses-1_T1w.nii.gz", seed=1)
    elif case == "no image":
        for p in (root / "sub-02").rglob("*_T1w.nii.gz"):
            p.unlink()
    elif case == "csv, not tsv":
        text = (root / "participants.tsv").read_text()
        (root / "participants.tsv").write_text(text.replace("\t", ","))
    elif case == "bad id":
        text = (root / "participants.tsv").read_text()
        (root / "participants.tsv").write_text(text.replace("sub-03", "03"))
    elif case == "misnamed file":
        (root / "sub-04" / "ses-2" / "anat" / "sub-04_ses-2_T1w.nii.gz").rename(
            root / "sub-04" / "ses-2" / "anat" / "sub-04_ses-1_T1w.nii.gz")


CASES = {
    "no participants.tsv": ("participants.tsv: not found; a BIDS dataset lists its subjects there", None),
    "folder not listed": ("participants.tsv: subject folder sub-05/ is not listed", None),
    "no image": ("participants.tsv, line 3: sub-02 has no image sub-02/[ses-<label>/]anat/", None),
    "csv, not tsv": ("participants.tsv, line 1: the first column must be 'participant_id'", None),
    "bad id": ("participants.tsv, line 4: participant_id '03' is not sub-<label>", None),
    "misnamed file": ("sub-04_ses-1_T1w.nii.gz: the name does not follow BIDS in this folder", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_datasets_are_one_line_naming_the_file(tmp_path, case):
    root = tmp_path / "study"
    make_bids(root)
    _damage(case, root)
    with pytest.raises(UserError) as err:
        read_bids(root)
    message = str(err.value)
    assert CASES[case][0] in message and "\n" not in message, message


def test_a_column_named_but_absent_suggests_the_closest(tmp_path):
    make_bids(tmp_path / "study")
    m = read_bids(tmp_path / "study")
    with pytest.raises(UserError, match=r"participants\.tsv: no column 'agee' \(did you mean 'age'\?\)"):
        m.column("agee")
    with pytest.raises(UserError, match="not a BIDS dataset"):
        read_bids(tmp_path)


def test_the_twin_in_bids_form_equals_the_manifest_twin(tmp_path):
    manifest_twin, bids_twin = tmp_path / "m", tmp_path / "b"
    for out, extra in ((manifest_twin, []), (bids_twin, ["--format", "bids"])):
        assert covfuse(["data", "synth3d", str(out), "--n", "6", "--size", "16", "--seed", "4", *extra]) == 0
    reference = read_manifest(manifest_twin / "manifest.csv")
    bids = read_bids(bids_twin)
    assert ["sub-" + s for s in bids.subjects] == list(reference.subjects)
    for column in ("diagnosis", "age", "sex", "APOE4"):
        for a, b in zip(reference.columns[column], bids.columns[column]):
            assert a == b or (is_missing(a) and is_missing(b))
    raw = [line.split("\t") for line in (bids_twin / "participants.tsv").read_text().splitlines()[1:]]
    assert [r[4] for r in raw] == [v or "n/a" for v in reference.columns["APOE4"]]  # BIDS writes n/a for missing
    assert list(bids.categorical) == ["diagnosis", "sex"] and bids.units == {"age": "years"}
    for a, b in zip(reference.files, bids.files):
        assert np.array_equal(np.asanyarray(nib.load(str(a)).dataobj), np.asanyarray(nib.load(str(b)).dataobj))
    assert "split" not in (bids_twin / "participants.tsv").read_text().splitlines()[0]
