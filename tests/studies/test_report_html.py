"""`covfuse report --format html`: one self-contained page, checked in a real headless Chromium (Debian's package):
no console errors, the forest plot and the table on screen, sortable tables, and HTML in covariate names shown as
text without running."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from browser import Browser, chromium_path
from covfuse.cli.main import main as covfuse
from data_fixtures import copy_twin

SCRIPT_NAME = "<script>alert(1)</script>"
ATTR_NAME = '"><svg/onload=alert(2)>'


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished two-cell study on a twin whose covariates are named with HTML."""
    root = copy_twin(tmp_path_factory, tmp_path_factory.mktemp("xss") / "data", n=96, size=(24, 28)) / "celeba"
    attr = root / "list_attr_celeba.txt"
    lines = attr.read_bytes().decode().split("\r\n")
    names = lines[1].split(" ")
    names[names.index("Young")], names[names.index("Male")] = SCRIPT_NAME, ATTR_NAME
    lines[1] = " ".join(names)
    attr.write_bytes("\r\n".join(lines).encode())
    work = tmp_path_factory.mktemp("html")
    base = work / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"root": str(root), "covariates": [SCRIPT_NAME, ATTR_NAME], "image_size": 16, "batch_size": 16,
                 "cache": "off"},
        "trainer": {"max_epochs": 1, "summary": False, "progress": "none", "accelerator": "cpu"}, "bootstrap": 50,
        "sweep": {"cells": {"image-only": {"model.fusion": "image-only"}, "hybrid": {"model.fusion": "hybrid"}}}},
        sort_keys=False))
    assert covfuse(["sweep", "--config", str(base), "--name", "xss", "--runs-dir", str(work / "runs")]) == 0
    folder = work / "runs" / "xss"
    assert covfuse(["report", str(folder), "--format", "html", "--bootstrap", "200"]) == 0
    return folder


def test_the_page_is_self_contained_and_escapes_everything_from_the_data(study):
    page = (study / "report.html").read_text()
    assert SCRIPT_NAME not in page and ATTR_NAME not in page  # never raw, anywhere
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&quot;&gt;&lt;svg/onload=alert(2)&gt;" in page
    assert page.count("<script>") == 1  # the page's own sorting script, nothing else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loads from a network
    images = re.findall(r'<img id="(\w+)" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in images] == ["forest", "metric", "reliability", "decision_curve", "loss_curves"]
    forest = dict(images)["forest"]
    assert base64.b64decode(forest) == (study / "figures" / "forest.png").read_bytes()


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (as root: apt-get install -y chromium); the browser check is skipped")
    pytest.importorskip("websocket", reason="websocket-client (the test extra) is not installed")
    b = Browser()
    yield b
    b.close()


def test_the_page_renders_in_chromium_without_errors_and_shows_the_forest_plot_and_table(study, browser):
    from PIL import Image

    browser.open(study / "report.html")
    assert browser.errors() == []
    assert browser.evaluate("document.title") == "Study xss"
    # the forest plot: loaded, on the page, and the screenshot of its box is the figure itself
    assert browser.evaluate("document.getElementById('forest').complete && document.getElementById('forest').naturalWidth") > 0
    box = browser.rect("#forest")
    original = Image.open(study / "figures" / "forest.png").convert("RGB")
    assert (round(box["width"]), round(box["height"])) == original.size  # shown at its own size, not squeezed
    small = (original.size[0] // 2, original.size[1] // 2)  # the box may sit on half pixels: compare at 1/2 scale
    shot = np.asarray(browser.screenshot(box).resize(small, Image.BOX), dtype=float)
    assert np.abs(shot - np.asarray(original.resize(small, Image.BOX), dtype=float)).mean() < 4
    metric = Image.open(study / "figures" / "metric.png").convert("RGB").resize(small, Image.BOX)
    assert np.abs(shot - np.asarray(metric, dtype=float)).mean() > 10  # the comparison tells figures apart
    # the results table: on screen, with text (dark pixels) in its box, and one row per cell
    table = browser.rect("table.sortable")
    assert table["width"] > 300 and table["height"] > 40
    pixels = np.asarray(browser.screenshot(table).convert("L"))
    assert (pixels < 100).mean() > 0.01
    assert browser.evaluate("[...document.querySelectorAll('table.sortable')[0].tBodies[0].rows].map(r => r.cells[0].textContent)") \
        == ["image-only", "hybrid"]
    # no horizontal overflow of the page (a layout error)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    whole = browser.screenshot()
    assert whole.size[0] == 1400 and whole.size[1] > 1000


def test_html_in_covariate_names_shows_as_text_and_runs_no_script(study, browser):
    browser.open(study / "report.html")
    text = browser.evaluate("document.body.innerText")
    assert SCRIPT_NAME in text and ATTR_NAME in text  # shown, as text
    assert browser.evaluate("window.__alerts") == []
    assert browser.evaluate("document.querySelectorAll('script').length") == 1
    assert browser.evaluate("document.querySelectorAll('svg').length") == 0
    assert browser.errors() == []


def test_a_click_on_a_header_sorts_the_table(study, browser):
    browser.open(study / "report.html")
    first_column = "[...document.querySelectorAll('table.sortable')[0].tBodies[0].rows].map(r => r.cells[{}].getAttribute('data-value') ?? r.cells[{}].textContent)"
    browser.evaluate("document.querySelectorAll('table.sortable')[0].tHead.rows[0].cells[2].click()")
    ascending = [float(v) for v in browser.evaluate(first_column.format(2, 2))]
    assert ascending == sorted(ascending)
    browser.evaluate("document.querySelectorAll('table.sortable')[0].tHead.rows[0].cells[2].click()")
    descending = [float(v) for v in browser.evaluate(first_column.format(2, 2))]
    assert descending == sorted(ascending, reverse=True)
    browser.evaluate("document.querySelectorAll('table.sortable')[0].tHead.rows[0].cells[0].click()")
    assert browser.evaluate(first_column.format(0, 0).replace(".getAttribute('data-value') ?? r.cells[0]", "")) \
        == ["hybrid", "image-only"]
    assert browser.errors() == []


def test_numbers_settings_and_prose_read_alike_in_markdown_and_html(study, tmp_path):
    """Significant digits with trailing zeros kept, the search space in words, markdown rendered (not shown), —
    for the SD of a one-run cell, and user text escaped in the markdown tables too."""
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    lr = 0.0007035737028722148
    space = {"optim.lr": ["log:1e-4..1e-2"], "optim.weight_decay": ["0", "0.01"]}
    cells = {cell: {"budget": 2, "complete": 2, "pruned": 0, "fail": 0, "interrupted": 0,
                    "best": {"number": 1, "params": {"optim.lr": lr, "optim.weight_decay": 0.01}, "value": 0.694,
                             "dir": f"{cell}/trials/t001"},
                    "trials": [], "spread": {"min": 0.694, "median": 0.69395, "max": 0.6939}}
             for cell in ("image-only", "hybrid")}
    (copy / "search.json").write_text(json.dumps({
        "sampler": "TPE", "seed": 0, "pruner": "median (after 2 finished trials)", "objective": "valid loss",
        "direction": "minimize", "space": space, "trials": 2, "cells": cells}))
    assert covfuse(["report", str(copy), "--format", "html", "--bootstrap", "200"]) == 0
    page, md = (copy / "report.html").read_text(), (copy / "report.md").read_text()
    for text in (page, md):
        assert "optim.lr=0.0007036" in text and "0.0007035" not in text  # 4 significant digits
        assert "0.6940" in text and "0.6939" in text  # trailing zeros kept, so 0.6940 and 0.6939 line up
        assert "optim.lr log-uniform from 1e-4 to 1e-2" in text  # the space in words, its numbers as written
        assert "optim.weight\\_decay one of 0, 0.01" in text or "optim.weight_decay one of 0, 0.01" in text
        assert '{"optim.lr"' not in text and "{&quot;" not in text  # no raw JSON
    # one run per cell: the SD across runs is undefined, not 0
    assert md.count(" ± — |") == 2 and page.count(" ± —</td>") == 2
    report = json.loads((copy / "report.json").read_text())
    assert all(r["sd"] is None and r["n_runs"] == 1 for r in report["rows"])
    # the page renders the prose's markdown instead of showing it
    body = re.sub(r"<[^>]+>", "", page.split("<body>", 1)[1])
    assert "**" not in body and "*and*" not in body and "<em>and</em>" in page
    # markdown tables: user text escaped everywhere, column names (covariates) included
    tables = [line for line in md.splitlines() if line.startswith("|")]  # (the base config is a code span: literal)
    assert not any(SCRIPT_NAME in line or ATTR_NAME in line for line in tables)
    gap_header = next(line for line in md.splitlines() if line.startswith("| setting | ") and "script" in line)
    assert "\\<script\\>alert(1)\\</script\\>" in gap_header
    assert all(line.count("|") - line.count("\\|") == gap_header.count("|") - gap_header.count("\\|")
               for line in md.splitlines()[md.splitlines().index(gap_header):][:4])


def test_the_metric_bars_start_at_zero(study, monkeypatch):
    import json

    from covfuse.studies import report as report_mod

    drawn = {}
    monkeypatch.setattr(report_mod, "save_figure", lambda fig, out: drawn.setdefault("axes", fig.axes[0]) and out)
    report = json.loads((study / "report.json").read_text())
    report_mod.plot_metric(report, study / "figures" / "unused.png")
    bottom, top = drawn["axes"].get_ylim()
    assert bottom == 0.0 and top >= max(r["ci"][1] for r in report["rows"])
    assert [round(p.get_y(), 9) for p in drawn["axes"].patches] == [0.0] * len(report["rows"])
