"""Explanations and subgroup metrics in the data's units (issue 17, item 9).

A photo manifest with a continuous age (some missing), a two-level sex, a three-level site and an
allele count with missing values. The references are independent of the code under test: the
counterfactual probabilities equal `covfuse predict --csv` on manifests edited by hand in the
user's units (age + its training SD in years, F <-> M, every row moved to site "leg"); groups,
counts and rates are recomputed here from the manifest and the written CSV files.
"""
from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.data.groups import covariate_groups, covariate_values
from covfuse.data.readers import read_table
from covfuse.data.table import CovariateEncoder
from covfuse.studies.explain.counterfactual import plan_changes

SITES = ("arm", "head", "leg")
HEADER = ["subject", "path", "split", "y", "age", "sex", "site", "APOE4"]


def _manifest(folder, n_subjects=40, per_subject=3, seed=1):
    """Photos whose label shows as a bright patch; the covariates vary by subject; split by subject."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for s in range(n_subjects):
        split = "train" if s < 26 else "valid" if s < 32 else "test"
        age = "" if s % 8 == 3 else str(int(rng.integers(20, 90)))
        sex = "FM"[s % 2]
        site = SITES[s % 3]
        apoe = "" if s % 5 == 2 else str(int(rng.choice(3, p=[0.5, 0.35, 0.15])))
        for k in range(per_subject):
            y = int(rng.integers(0, 2))
            pixels = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
            if y:
                pixels[4:12, 4:12] = 200
            name = f"img/s{s:02d}_{k}.png"
            Image.fromarray(pixels).save(folder / name)
            rows.append([f"S{s:02d}", name, split, str(y), age, sex, site, apoe])
    path = folder / "manifest.csv"
    _write(path, rows)
    return path, rows


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    base = tmp_path_factory.mktemp("units")
    manifest, rows = _manifest(base / "photos")
    runs = base / "runs"
    assert covfuse(["fit", "--data.root", str(manifest), "--data.target", "y", "--data.covariates",
                    "[age,sex,site,APOE4]", "--data.image_size", "16", "--data.batch_size", "32",
                    "--model.backbone", "vgg-mini", "--model.fusion", "hybrid", "--model.hybrid_layers", "last",
                    "--model.options", "{hybrid_init: kaiming}", "--trainer.max_epochs", "1", "--bootstrap", "20",
                    "--trainer.summary", "false", "--trainer.progress_every", "0", "--runs_dir", str(runs),
                    "--name", "r"]) == 0
    assert covfuse(["explain", "r", "--runs_dir", str(runs), "--n-boot", "50", "--examples", "2", "--steps", "2",
                    "--accelerator", "cpu"]) == 0
    return manifest, rows, runs, runs / "r" / "explain"


def _train_ages(rows):
    return np.array([float(r[4]) for r in rows if r[2] == "train" and r[4]])


def _predict(runs, manifest_path, capsys) -> dict[str, float]:
    """{path: P(y=1)} from `covfuse predict --csv` (stdout CSV)."""
    capsys.readouterr()
    assert covfuse(["predict", "r", "--runs_dir", str(runs), "--csv", str(manifest_path), "--accelerator", "cpu"]) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    return {"img/" + r["path"].replace("\\", "/").split("/")[-1]: float(r["P(y=1)"]) for r in out}


def test_counterfactuals_equal_predictions_on_hand_edited_manifests(explained, capsys):
    manifest, rows, runs, out = explained
    table = {r["id"]: r for r in _read(out / "counterfactuals.csv")}
    test_rows = [r for r in rows if r[2] == "test"]
    assert set(table) == {r[1] for r in test_rows}
    # the covariates are written as the manifest has them, missing as empty
    for r in test_rows:
        assert [table[r[1]][c] for c in ("age", "sex", "site", "APOE4")] == r[4:8]
    sd = float(_train_ages(rows).std())
    edits = {
        "probability_age+1sd": lambda r: [*r[:4], f"{float(r[4]) + sd!r}" if r[4] else "", *r[5:]],
        "probability_sex": lambda r: [*r[:5], {"F": "M", "M": "F"}[r[5]], *r[6:]],
        "probability_site=leg": lambda r: [*r[:6], "leg", r[7]],
    }
    for column, edit in edits.items():
        path = manifest.parent / f"edited-{column.removeprefix('probability_')}.csv"  # beside the photos
        _write(path, [edit(r) for r in test_rows])
        expected = _predict(runs, path, capsys)
        for r in test_rows:
            applies = {"probability_age+1sd": bool(r[4]), "probability_sex": True,
                       "probability_site=leg": r[6] != "leg"}[column]
            got = table[r[1]][column]
            if applies:
                assert float(got) == pytest.approx(expected[r[1]], abs=2e-6), (column, r)
            else:  # no value to change (age missing) or already at that level: no counterfactual
                assert got == "", (column, r)
    # random covariate kernels: the edits really change the output
    changes = [abs(float(t["probability_sex"]) - float(t["probability"])) for t in table.values()]
    assert max(changes) > 1e-4


def test_explain_json_speaks_in_the_tables_units(explained):
    manifest, rows, runs, out = explained
    result = json.loads((out / "explain.json").read_text())
    cov = result["covariates"]
    assert list(cov) == ["age", "sex", "site", "APOE4"]
    assert [cov[c]["kind"] for c in cov] == ["continuous", "categorical", "categorical", "continuous"]
    sd = _train_ages(rows).std()
    assert cov["age"]["counterfactual"] == f"age +{sd:.3g} (+1 SD) and age -{sd:.3g} (-1 SD)"
    assert cov["sex"]["counterfactual"] == "sex: F <-> M"
    assert "arm, head, leg" in cov["site"]["counterfactual"]
    test_rows = [r for r in rows if r[2] == "test"]
    # groups are values as the manifest spells them; no standardised number, no one-hot "sex=F=1"
    keys = set(cov["age"]["groups"])
    apoe = {f"APOE4={r[7] or 'missing'}" for r in test_rows}
    assert apoe <= keys and {"sex=F", "sex=M"} <= keys and {f"site={s}" for s in SITES} <= keys
    assert not any(k.count("=") > 1 for k in keys)  # no one-hot feature ("sex=F=1")
    # the missing-APOE4 group holds exactly the rows without a genotype (and a known age: age's edits)
    missing = [r for r in test_rows if not r[7]]
    assert missing and cov["age"]["groups"]["APOE4=missing"]["count"] == sum(1 for r in missing if r[4])
    assert "APOE4=missing" not in cov["APOE4"]["groups"]  # nothing to change there
    # the overall numbers are the pooled hand computations over the edits that apply
    table = _read(out / "counterfactuals.csv")
    deltas = [float(t[c]) - float(t["probability"]) for t in table for c in ("probability_age+1sd", "probability_age-1sd")
              if t[c] != ""]
    assert cov["age"]["count"] == sum(1 for t in table if t["age"])
    assert cov["age"]["mean_abs_change"] == pytest.approx(np.mean(np.abs(deltas)), abs=1e-6)  # the CSV has 6 decimals
    flips = [(float(t[c]) >= 0.5) != (float(t["probability"]) >= 0.5) for t in table
             for c in ("probability_site=arm", "probability_site=head", "probability_site=leg") if t[c] != ""]
    assert len(flips) == 2 * len(table)  # each sample moves to each of the two other sites
    assert cov["site"]["decision_flip_rate"] == pytest.approx(np.mean(flips))
    md = (out / "explain.md").read_text()
    assert "sex: F <-> M" in md and "APOE4=missing" in md


def test_run_metrics_group_by_the_tables_values(explained):
    manifest, rows, runs, out = explained
    metrics = json.loads((runs / "r" / "metrics.json").read_text())["test"]
    predictions = {p["id"]: p for p in _read(runs / "r" / "predictions.csv") if p["split"] == "test"}
    test_rows = [r for r in rows if r[2] == "test"]
    # age bins: tertiles of the (whole-year) training ages, rounded up to whole years
    e1, e2 = (int(np.ceil(q)) for q in np.quantile(_train_ages(rows), [1 / 3, 2 / 3]))
    expected: dict[str, list[str]] = {}
    for r in test_rows:
        age = "age=missing" if not r[4] else f"age<{e1}" if float(r[4]) < e1 else \
            f"age=[{e1}, {e2})" if float(r[4]) < e2 else f"age>={e2}"
        for key in (age, f"sex={r[5]}", f"site={r[6]}", f"APOE4={r[7] or 'missing'}"):
            expected.setdefault(key, []).append(r[1])
    singles = {k: v for k, v in metrics["groups"].items() if "&" not in k}
    assert set(singles) == set(expected)
    for key, ids in expected.items():
        assert singles[key]["count"] == len(ids)
        correct = [(float(predictions[i]["probability"]) >= 0.5) == (predictions[i]["label"] == "1") for i in ids]
        assert singles[key]["accuracy"] == pytest.approx(np.mean(correct))
    assert {k for k in metrics["gaps"] if "&" not in k} == {"age", "sex", "site", "APOE4"}


def test_groups_and_edits_on_a_hand_made_table(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = [["a", "img/0.png", "train", "0", "30", "F", "arm", "0"], ["b", "img/1.png", "train", "1", "40", "M", "leg", "2"],
            ["c", "img/2.png", "train", "0", "50", "F", "head", ""], ["d", "img/3.png", "train", "1", "", "M", "arm", "1"],
            ["e", "img/4.png", "test", "0", "95", "F", "knee", "1"], ["f", "img/5.png", "test", "1", "45", "", "leg", ""]]
    for r in rows:
        Image.new("RGB", (4, 4)).save(tmp_path / r[1])
    _write(tmp_path / "m.csv", rows)
    table = read_table(tmp_path / "m.csv")
    train = np.arange(4)
    enc = CovariateEncoder.fit(table, ["age", "sex", "site", "APOE4"], train)
    groups = covariate_groups(enc, table, np.arange(6), train)
    # five ages in train+test: few values, grouped one per value; missing last
    assert groups["age"].values() == ["30", "40", "50", "missing", "95", "45"]
    assert groups["sex"].values() == ["F", "M", "F", "M", "F", "missing"]
    assert groups["site"].labels == ("arm", "head", "leg", "knee")  # training levels, then unseen ones
    assert groups["APOE4"].masks("APOE4")["APOE4=missing"].tolist() == [False, False, True, False, False, True]
    assert covariate_values(enc, table, np.array([3, 5]))["age"] == ["", "45"]

    x = enc.transform(table)
    plan = plan_changes(enc, {"age": "years"})
    assert [e.label for e in plan["age"]] == [f"age +{np.std([30, 40, 50]):.3g} years (+1 SD)",
                                              f"age -{np.std([30, 40, 50]):.3g} years (-1 SD)"]
    up = plan["age"][0].apply(x)
    age = enc.feature_names.index("age")
    # +1 SD in feature units is +1; the row with a missing age is left alone
    assert (up[:, age] - x[:, age]).tolist() == pytest.approx([1, 1, 1, 0, 1, 1])
    assert plan["age"][0].applies(x).tolist() == [True, True, True, False, True, True]
    swap = plan["sex"][0].apply(x)
    f, m = enc.feature_names.index("sex=F"), enc.feature_names.index("sex=M")
    assert swap[:, [f, m]].tolist() == [[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [0, 0]]  # missing sex kept
    to_leg = next(e for e in plan["site"] if e.column == "probability_site=leg")
    cols = [enc.feature_names.index(f"site={s}") for s in SITES]
    assert to_leg.apply(x)[:, cols].tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert to_leg.applies(x).tolist() == [True, False, True, True, False, False]  # "knee" was never trained on
    assert x.tolist() == enc.transform(table).tolist()  # nothing edited in place


@pytest.mark.parametrize("train,edges", [
    (np.arange(1000, 1011), [1004, 1007]),                  # integers: whole-number edges
    (np.arange(2001, 2021), [2008, 2014]),                  # years: three bins, not two
    (np.linspace(55.0, 90.0, 40), [67, 78]),                # two significant digits of the range (35): whole units
    (np.linspace(0.0, 1.0, 40), [0.3, 0.7]),                # a range of 1: tenths
    (np.r_[np.zeros(70), np.linspace(0.5, 9.5, 30)], [0.5]),  # mostly 0: "x<0.5" is "x = 0"
])
def test_bin_edges(train, edges):
    from covfuse.data.groups import _edges

    assert _edges(np.asarray(train, dtype=float)) == pytest.approx(edges)


def test_groups_are_decided_on_the_training_split_and_labels_stay_exact():
    from covfuse.data.groups import _binned, _by_value, _levels

    from covfuse.data.table import SampleTable

    n = 16
    table = SampleTable(path=__import__("pathlib").Path("t.csv"), header=["subject", "path", "score", "batch", "site"],
                        columns={"score": [str(v) for v in [*range(1, 10), 10, 11, 12, 13, 14, 15, 16]],
                                 "batch": ["20190101", "20190102"] * 8, "site": ["missing", "", "a", "b"] * 4},
                        files=[f"{i}.png" for i in range(n)], subjects=np.arange(n).astype(str),
                        split=np.full(n, -1, dtype=np.int8), line=np.arange(2, n + 2), kind="image")
    train = np.arange(9)  # scores 1..9: few values, so grouped by value in every split
    enc = CovariateEncoder.fit(table, ["score", "batch", "site"], train, categorical=["site"])
    valid = covariate_groups(enc, table, np.arange(9, 12), train)["score"]
    test = covariate_groups(enc, table, np.arange(12, 16), train)["score"]
    assert valid.kind == test.kind == "values" and test.values() == ["13", "14", "15", "16"]
    assert set(covariate_groups(enc, table, np.arange(n), train)["batch"].labels) == {"20190101", "20190102"}
    site = covariate_groups(enc, table, np.arange(n), train)["site"]
    # a level called "missing" and an empty cell stay two groups
    assert site.values()[:4] == ["missing", "(missing)", "a", "b"]
    assert _by_value(np.array([0.5, np.nan]), np.array([0.5])).labels == ("0.5", "missing")
    neg = _binned(np.array([-3.0, -0.5, 2.0]), np.linspace(-3, 3, 30))
    assert neg.masks("z") .keys() == {"z<-1", "z=[-1, 1)", "z>=1"}
    assert _levels(["<5", ">=5"], ["<5", ">=5"]).masks("dose").keys() == {"dose=<5", "dose=>=5"}  # levels keep "="


def test_covariates_with_nothing_to_change_are_reported_not_crashed(tmp_path):
    """A covariate named with a space (`body site`). A number constant in training, a category with one training level, a column empty in the whole test
    split and a category whose test samples all sit at its first level: explain says so and goes on."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    header = ["subject", "path", "split", "y", "age", "const", "one", "gone", "body site"]
    rows = []
    for s in range(30):
        split = "train" if s < 20 else "valid" if s < 25 else "test"
        for k in range(2):
            y = int(rng.integers(0, 2))
            Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(tmp_path / f"img/{s}_{k}.png")
            rows.append([f"S{s}", f"img/{s}_{k}.png", split, str(y), str(20 + s), "5" if split == "train" else "7",
                         "a" if split == "train" else "b", "" if split == "test" else str(s % 4 / 3),
                         "arm" if split == "test" else SITES[s % 3]])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    runs = tmp_path / "runs"
    assert covfuse(["fit", "--data.root", str(tmp_path / "m.csv"), "--data.target", "y", "--data.covariates",
                    "[age,const,one,gone,body site]", "--data.image_size", "16", "--model.backbone", "vgg-mini",
                    "--model.fusion", "hybrid", "--model.hybrid_layers", "last", "--trainer.max_epochs", "1",
                    "--bootstrap", "10", "--trainer.summary", "false", "--trainer.progress_every", "0",
                    "--runs_dir", str(runs), "--name", "r"]) == 0
    assert covfuse(["explain", "r", "--runs_dir", str(runs), "--n-boot", "10", "--examples", "2", "--steps", "2",
                    "--accelerator", "cpu"]) == 0
    result = json.loads((runs / "r" / "explain" / "explain.json").read_text())
    assert set(result["not_changed"]) == {"const", "one"} and set(result["covariates"]) == {"age", "gone", "body site"}
    assert result["covariates"]["gone"]["count"] == 0 and result["covariates"]["gone"]["mean_abs_change"] is None
    assert "skipped" in result["attribution"]["examples"]["gone"]
    # every test sample is at "arm": the maps move them to another site, not to "arm"
    table = _read(runs / "r" / "explain" / "counterfactuals.csv")
    assert all(t["probability_body site=arm"] == "" and t["probability_body site=head"] != "" for t in table)
    assert result["attribution"]["examples"]["body site"]["figure"] == "figures/maps_body site.png"
    # a column name with a space still gives markdown links that lead to the files
    from urllib.parse import unquote

    md = (runs / "r" / "explain" / "explain.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert "figures/maps_body%20site.png" in links
    assert all((runs / "r" / "explain" / unquote(link)).is_file() for link in links)
