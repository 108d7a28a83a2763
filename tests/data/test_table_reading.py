"""Tables as spreadsheets write them (issue 32): .xlsx workbooks, cp1252 and UTF-16 text, decimal commas,
Windows paths, spellings of one level, date columns. Each table is written here by the library that makes
such files (openpyxl, Python's codecs and csv, datetime) and read back against that library's values;
level merging is checked against pandas' one-hot encoding of the case-folded values."""
from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from covfuse.cli.main import main as covfuse
from covfuse.data.readers import read_table
from covfuse.data.table import CovariateEncoder, describe_columns, encode_target, numeric_values
from covfuse.errors import UserError

ROWS = [  # (subject, file, split, age, sex, site, scan date) as Python values
    ("s1", "a.png", "train", 63.5, "M", 1, datetime.date(2021, 3, 4)),
    ("s2", "b.png", "train", 70, "m", 2, datetime.date(2021, 5, 17)),
    ("s3", "c.png", "train", 58.25, "F", 1, datetime.date(2022, 1, 9)),
    ("s4", "d.png", "valid", None, "male", 2, datetime.date(2022, 7, 30)),
    ("s5", "e.png", "valid", 81.0, "Male", 3, datetime.date(2023, 2, 1)),
    ("s6", "f.png", "test", 45.75, "f", 1, datetime.date(2023, 11, 12)),
]
HEADER = ["subject", "path", "split", "age", "sex", "site", "scan_date"]


def _images(folder: Path) -> None:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(ROWS):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(folder / "img" / row[1])


def _xlsx(path: Path, rows=ROWS, sheets=("data",)) -> Path:
    book = openpyxl.Workbook()
    for k, name in enumerate(sheets):
        sheet = book.active if k == 0 else book.create_sheet()
        sheet.title = name
        sheet.append(HEADER)
        for row in rows[k:]:  # a later sheet leaves out its first rows
            sheet.append([row[0], f"img/{row[1]}", *row[2:]])
    book.save(path)
    return path


def _text(path: Path, rows=ROWS, *, delimiter=",", encoding="utf-8", number=str, paths="img/{}") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(HEADER)
        for s, file, split, age, sex, site, date in rows:
            writer.writerow([s, paths.format(file), split, "" if age is None else number(age), sex, site, date.isoformat()])
    return path


def test_an_xlsx_reads_as_the_same_table_written_as_csv(tmp_path):
    _images(tmp_path)
    book = read_table(_xlsx(tmp_path / "m.xlsx"))
    text = read_table(_text(tmp_path / "m.csv", number=lambda v: f"{v:g}"))
    assert book.header == text.header and book.files == text.files
    assert book.columns == text.columns
    loaded = openpyxl.load_workbook(tmp_path / "m.xlsx").active  # openpyxl's own cells
    ages = [c.value for c in loaded["D"][1:]]
    assert np.array_equal(numeric_values(book, "age"), [np.nan if a is None else a for a in ages], equal_nan=True)
    assert book.columns["scan_date"] == [c.value.date().isoformat() for c in loaded["G"][1:]]


def test_an_xlsx_reads_its_first_sheet_or_data_sheet(tmp_path, capsys):
    from covfuse.training.datamodule import CovfuseDataModule

    _images(tmp_path)
    path = _xlsx(tmp_path / "m.xlsx", sheets=("first", "second"))
    table = read_table(path)
    assert table.columns["subject"] == [r[0] for r in ROWS]
    assert table.notes == ["m.xlsx: read sheet 'first', the first of 2 (data.sheet picks another)"]
    assert read_table(path, sheet="second").columns["subject"] == [r[0] for r in ROWS[1:]]
    # as docs/data.md runs it: `covfuse data info clinic.xlsx --sheet visits`, and data.sheet in a fit
    assert covfuse(["data", "info", str(path), "--sheet", "second", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == len(ROWS) - 1
    assert summary["notes"] == ["sex: spellings that differ only in case or surrounding spaces are one level: "
                                "F ('F' = 'f'); Male ('Male' = 'male')"]  # no sheet note: data.sheet chose it
    data = CovfuseDataModule({"root": str(path), "sheet": "second", "target": "sex", "covariates": ["age"]},
                             head="multiclass")
    data._validate()
    assert data.table.columns["subject"] == [r[0] for r in ROWS[1:]]
    with pytest.raises(UserError, match=r"m\.xlsx: no sheet 'secnd' \(did you mean 'second'\?\); its sheets: first, "
                                        r"second \(set data.sheet, or --sheet, to one of them\)"):
        read_table(path, sheet="secnd")
    with pytest.raises(UserError, match=r"data.sheet 'x' picks a sheet of an .xlsx workbook; m.csv is a text table"):
        read_table(_text(tmp_path / "m.csv"), sheet="x")


def test_old_and_broken_workbooks_say_what_to_do(tmp_path, capsys):
    (tmp_path / "m.xls").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    assert covfuse(["data", "info", str(tmp_path / "m.xls")]) == 2
    assert "m.xls: covfuse reads .xlsx workbooks and CSV/TSV, not .xls files: save it as .xlsx" in capsys.readouterr().err
    assert covfuse(["data", "info", str(tmp_path / "bad.xlsx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable .xlsx workbook" in err[0] and "save it again" in err[0]
    book = openpyxl.Workbook()
    book.active.append(["subject", "path"])
    book.active.append(["s1", "a.png", "a stray note"])  # a cell right of the last named column
    book.save(tmp_path / "stray.xlsx")
    with pytest.raises(UserError, match=r"stray\.xlsx, row 2: 3 cells, the header has 2; name every column in the "
                                        r"first row, or clear the cells beyond it"):
        read_table(tmp_path / "stray.xlsx")


@pytest.mark.parametrize("encoding,note", [("utf-8", False), ("utf-8-sig", False), ("utf-16", False),
                                           ("cp1252", True)])
def test_text_encodings_are_detected(tmp_path, encoding, note):
    _images(tmp_path)
    rows = [(s, f, sp, a, {"M": "Müller", "m": "Éva"}.get(x, "Zoë"), *rest) for s, f, sp, a, x, *rest in ROWS]
    table = read_table(_text(tmp_path / "m.csv", rows, encoding=encoding))
    assert table.columns["sex"] == [r[4] for r in rows]  # the strings Python's codec wrote
    if note:
        at = (tmp_path / "m.csv").read_bytes().index("ü".encode("cp1252"))
        assert table.notes == [f"m.csv is not UTF-8 (byte 0xfc at offset {at}): read as cp1252 (Windows-1252, as Excel "
                               "on Windows saves CSV); save it as UTF-8 to be sure of its accents"]
    else:
        assert table.notes == []


def test_decimal_commas_in_a_semicolon_table_are_numbers(tmp_path, capsys):
    _images(tmp_path)
    path = _text(tmp_path / "m.csv", delimiter=";", number=lambda v: f"{v:g}".replace(".", ","))
    assert "63,5" in path.read_text()
    table = read_table(path)
    want = [np.nan if r[3] is None else float(r[3]) for r in ROWS]
    assert np.array_equal(numeric_values(table, "age"), want, equal_nan=True)
    assert describe_columns(table)["age"]["type"] == "numeric"
    assert covfuse(["data", "info", str(path), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "age: numbers written with a decimal comma (in a semicolon-separated table), read as numbers (age 63,5 = 63.5)" \
        in summary["notes"]
    assert summary["columns"]["age"]["min"] == 45.75
    # a comma-separated file keeps a quoted "63,5" as a word: there the comma is the delimiter
    comma = _text(tmp_path / "c.csv", number=lambda v: f"{v:g}".replace(".", ","))
    with pytest.raises(UserError, match=r"non-numeric value '63,5' in numeric column 'age' .* decimal comma"):
        CovariateEncoder.fit(read_table(comma), ["age"], np.arange(3))


def test_windows_backslash_paths_name_the_same_files(tmp_path):
    _images(tmp_path)
    slashes = read_table(_text(tmp_path / "a.csv"))
    backslashes = read_table(_text(tmp_path / "b.csv", paths="img\\{}"))
    assert backslashes.files == slashes.files and all(f.is_file() for f in backslashes.files)
    (tmp_path / "c.csv").write_text("subject,path\ns1,C:\\scans\\a.png\n")
    with pytest.raises(UserError, match=r"not found \(paths are relative to the manifest's folder\) \(a Windows drive "
                                        r"path: give paths relative to the manifest's folder\)"):
        read_table(tmp_path / "c.csv")


def test_spellings_of_one_level_are_one_level(tmp_path):
    import pandas as pd

    _images(tmp_path)
    rows = [(*r[:4], f"  {r[4]} " if i == 2 else r[4], *r[5:]) for i, r in enumerate(ROWS)]  # " F " in a workbook
    table = read_table(_xlsx(tmp_path / "m.xlsx", rows))
    train = np.arange(len(rows))
    encoder = CovariateEncoder.fit(table, ["sex"], train)
    assert encoder.specs[0]["levels"] == ["F", "M", "Male"]  # the most frequent spelling names each level (ties: sorted)
    # pandas' one-hot of the case-folded, stripped values is the same matrix, column for column
    folded = pd.get_dummies(pd.Series([r[4] for r in rows]).str.strip().str.casefold()).astype(float)
    assert np.array_equal(encoder.transform(table), folded[["f", "m", "male"]].to_numpy())
    info = describe_columns(table)["sex"]
    assert info["levels"] == {"F": 2, "M": 2, "Male": 2}
    assert info["merged"] == {"F": ["F", "f"], "M": ["M", "m"], "Male": ["Male", "male"]}
    # a run's encoder takes a new spelling of a known level too, and the target merges alike
    assert encode_target(table, "sex", classes=["f", "m", "MALE"])[0].tolist() == [1, 1, 0, 2, 2, 0]
    values, classes = encode_target(table, "sex")
    assert classes == ["F", "M", "Male"] and values.tolist() == [1, 1, 0, 2, 2, 0]


def test_a_date_column_is_refused_as_a_covariate_unless_declared(tmp_path, capsys):
    _images(tmp_path)
    path = _text(tmp_path / "m.csv")
    table = read_table(path)
    assert describe_columns(table)["scan_date"] == {"type": "date", "missing": 0, "distinct": 6, "example": "2021-03-04"}
    with pytest.raises(UserError, match=r"column 'scan_date' holds dates \(e.g. '2021-03-04'\); a date is no covariate "
                                        r"as it is: convert it to a number .*age at scan.*declare 'scan_date' in "
                                        r"data.categorical"):
        CovariateEncoder.fit(table, ["scan_date"], np.arange(3))
    assert CovariateEncoder.fit(table, ["scan_date"], np.arange(3), categorical=["scan_date"]).specs[0]["levels"] == \
        [r[6].isoformat() for r in ROWS[:3]]
    for fmt in ("%d.%m.%Y", "%m/%d/%Y", "%Y/%m/%d", "%Y-%m-%dT%H:%M:%S"):  # as spreadsheets in other locales write them
        other = tmp_path / f"d{fmt.count('.')}{fmt.count('/')}{fmt.count('T')}.csv"
        other.write_text("subject,path,scan_date\n" + "".join(
            f"{r[0]},img/{r[1]},{datetime.datetime.combine(r[6], datetime.time(9, 30)).strftime(fmt)}\n" for r in ROWS))
        assert describe_columns(read_table(other))["scan_date"]["type"] == "date", fmt
    assert covfuse(["data", "info", str(path)]) == 0
    assert "scan_date           date                0  6 dates, e.g. 2021-03-04 (no covariate as it is)" in \
        capsys.readouterr().out


def test_each_rule_that_applied_is_one_line_in_the_fit_log(tmp_path, monkeypatch):
    """A ';' table in cp1252 with decimal commas, two spellings of a level and EXIF-turned photos: fit's
    log.txt says each rule once."""
    from data.test_decoder_rules import _photo

    (tmp_path / "img").mkdir()
    lines = ["subject;path;split;age;sex;label"]
    for i in range(12):
        _photo(tmp_path / f"img/{i}.jpg", 6 if i % 4 == 0 else 1, size=(20, 14))
        split = ["train", "train", "valid", "test"][i % 4] if i < 8 else "train"
        lines.append(f"s{i};img\\{i}.jpg;{split};{60 + i},5;{['M', 'm', 'Müller'][i % 3]};{i % 2}")
    (tmp_path / "m.csv").write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    monkeypatch.chdir(tmp_path)
    assert covfuse(["fit", "--data.root", "m.csv", "--data.target", "label", "--data.covariates", "age,sex",
                    "--data.image_size", "16", "--data.batch_size", "4", "--trainer.max_epochs", "1",
                    "--trainer.accelerator", "cpu", "--trainer.progress", "none", "--trainer.summary", "false",
                    "--bootstrap", "0", "--name", "r"]) == 0
    log = (tmp_path / "runs/r/log.txt").read_text()
    state = json.loads((tmp_path / "runs/r/data_state.json").read_text())
    assert state["encoder"]["specs"][1]["levels"] == ["M", "Müller"]  # named as the note names them
    for said in ("data: m.csv is not UTF-8", "data: age: numbers written with a decimal comma",
                 "data: sex: spellings that differ only in case or surrounding spaces are one level: M ('M' = 'm')",
                 "data: 3 of 12 image files carry an EXIF orientation"):
        assert log.count(said) == 1, said
