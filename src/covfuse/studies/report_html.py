"""`covfuse report STUDY --format html`: the study report as one self-contained page to send a colleague.

Figures are embedded as data URIs, tables sort on a click of their header (a few lines of inline
JavaScript, no library, no network). Everything that comes from the user's data or config (cell and
run names, settings, covariate names and values) goes through :func:`html.escape`; on top of that a
Content-Security-Policy allows only this file's own script (by its hash), so even a missed escape could
not run a script from the data. Written by hand: no report library here does sortable, offline,
CSP-locked pages, and the page is a few templates over the report dict.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any, Sequence

from covfuse.io import atomic_write_text
from covfuse.studies.format import DASH, Notes, num_text, p_text, sd_text, settings_text, shown, sig
from covfuse.studies.report import (
    ALSO_TITLES, ASSUMPTIONS, CLINICAL_FIGURES, affected, also_entry, also_names, clinical_figures, difference_text,
    estimate_text, figure_files, headline, missing_lines, threshold_words, verdict_text,
)
from covfuse.studies.search import space_words
from covfuse.studies.sweep import Study
from covfuse.training.metrics import SUBGROUP_STATS

FIGURES = (("forest", "Differences from the baseline (95% CI)"), ("metric", "Metric per cell (95% CI)"),
           ("loss_curves", "Training curves"))

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var down = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "ascending" : "descending");
      function key(row) {
        var cell = row.cells[column];
        var v = cell.getAttribute("data-value");
        return v === null ? cell.textContent.trim() : (v === "" ? NaN : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), r;
        if (typeof x === "number" && typeof y === "number") {
          if (isNaN(x)) { return 1; } if (isNaN(y)) { return -1; } r = x - y;
        } else { r = String(x).localeCompare(String(y)); }
        return down ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f4; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #c62828; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f5f5f7; padding: 0 0.2em; word-break: break-all; }
.wrap { overflow-x: auto; } .notes { color: #555; font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    """Text for the page: everything user-supplied is escaped, quotes included (it may sit in attributes)."""
    return html.escape(str(value), quote=True)


def _md(text: str) -> str:
    """The report's fixed prose (ASSUMPTIONS) with **bold**, *emphasis* and `code` rendered, escaped first."""
    text = esc(text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


def _num(value, digits: int = 3) -> tuple[str, str]:
    """(shown text, data-value for sorting) of a number that may be missing (shown as the markdown shows it)."""
    text = num_text(value, digits)
    return text, ("" if text == DASH else repr(float(value)))


def _value(value) -> str:
    """A sort key (data-value): the number, or empty for a missing one (sorted last)."""
    return "" if num_text(value) == DASH else repr(float(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """A sortable table; a cell is text, or (text, sort value) for numbers, or (text, sort value, css class)."""
    out = ['<div class="wrap"><table class="sortable">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in headers) + "</tr></thead><tbody>")
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                text, value, *cls = cell
                classes = " ".join(["num", *cls])
                cells.append(f'<td class="{esc(classes)}" data-value="{esc(value)}">{esc(text)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _figure(path: Path, name: str, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img id="{name}" alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _settings(settings: dict) -> str:
    return settings_text(settings) or "base config"


def notes_list(notes: Notes) -> str:
    """The footnotes not listed yet, under the table that used them."""
    items = notes.flush()
    if not items:
        return ""
    return '<p class="notes">' + "<br>".join(f"{esc(mark)} {esc(reason)}" for mark, reason in items) + "</p>"


def also_table(report: dict, notes: Notes) -> str:
    """The report's other scores (:data:`covfuse.studies.report.ALSO`), one row per score and cell, with CIs,
    differences from the baseline and Holm-adjusted p ('' when the report has none); — with a footnote
    where a number cannot be computed."""
    names = also_names(report)
    if not names:
        return ""
    base = report["baseline"]
    body = []
    for n in names:
        for r in report["rows"]:
            e = also_entry(report, r, n)
            is_base = r["setting"] == base
            diff = (difference_text(e, notes, n, is_base), _value(None if is_base else e.get("difference")))
            if is_base or e.get("difference") is None:
                p = (DASH, "")
            else:
                p = (p_text(e.get("p_adjusted")), _value(e.get("p_adjusted")))
            body.append([n, r["setting"], (estimate_text(e, notes, n), _value(e.get("estimate"))), diff, p])
    title, reading = ALSO_TITLES[report.get("task", "binary")]
    words = threshold_words(report)
    return (f'<h2 id="also">{esc(title)}</h2><p>People resampled for every interval; p Holm-adjusted over the compared '
            f"cells of that score. {_md(reading)}</p>"
            + table(["score", "setting", "estimate [95% CI]", f"difference vs {base} [95% CI]", "p (Holm)"], body)
            + notes_list(notes) + (f"<p>{_md(words)}</p>" if words else ""))


def render(report: dict, study: Study) -> str:
    """The page as one string."""
    metric, base = report["metric"], report["baseline"]
    root = Path(study.study_dir)
    notes = Notes()
    figures = figure_files(report)
    drawn = report.get("figures", [])
    parts = [f"<h1>Study {esc(study.name)}</h1>",
             f"<p>{esc(headline(report, study))} Baseline: <strong>{esc(base)}</strong>.</p>",
             f"<p>Base config: <code>{esc(' '.join(study.base))}</code></p>"]
    if report.get("missing"):
        parts.append(f"<p><strong>Made of the runs that finished</strong>: {esc(len(report['missing']))} of "
                     f"{esc(len(study.runs))} missing (†: cells without all their runs; listed under "
                     '<a href="#missing">Runs missing</a>).</p>')
    rows = []
    for r in report["rows"]:
        is_base = r["setting"] == base
        mean = shown(r["mean"], r.get("mean_reason"), notes)
        diff = difference_text(r, notes, is_base=is_base)
        rows.append([r["setting"] + (" †" if affected(r) else ""), (str(r["n_runs"]), str(r["n_runs"])),
                     (f"{mean} ± {sd_text(r['sd'])}", _value(r["mean"])),
                     (estimate_text(r, notes), _value(r.get("estimate"))), (diff, _value(r["difference"])),
                     (DASH if is_base else p_text(r["p_value"]), _value(r["p_value"])),
                     (DASH if is_base else p_text(r["p_adjusted"]), _value(r["p_adjusted"])),
                     verdict_text(r, notes) if r["verdict"] not in ("better", "worse")
                     else (r["verdict"], r["verdict"], r["verdict"])])
    parts.append('<h2 id="results">Results</h2>')
    parts.append(table(["setting", "runs", "mean ± sd", f"pooled {metric} [95% CI]", f"difference vs {base} [95% CI]",
                        "p", "p (Holm)", "verdict"], rows))
    parts.append(notes_list(notes))
    parts.append(also_table(report, notes))
    for name, caption in FIGURES[:2]:
        if name in drawn:
            parts.append(_figure(root / figures[name], name, caption))
    for name in clinical_figures(report):
        if name in drawn:
            parts.append(_figure(root / figures[name], name, CLINICAL_FIGURES[name]))
    tests = []
    for r in report["rows"]:
        if r["setting"] == base or not r["n_runs"]:
            continue
        st, mc = r.get("seed_test"), r.get("mcnemar_clustered")
        across = DASH if not st or st.get("t") is None else f"{st['method']}: t = {st['t']:.2f}, p = {p_text(st['p_value'])}"
        tests.append([r["setting"], (p_text(r["bootstrap_p"]), _value(r["bootstrap_p"])), across,
                      f"{mc['a_only']} / {mc['b_only']}, p = {p_text(mc['p_value'])}" if mc else DASH])
    if tests:
        parts += ['<h2 id="tests">Tests behind each row</h2>',
                  table(["setting", "bootstrap p", "across runs (method: t, p)", "clustered McNemar"], tests)]
    parts += ["<p>What each number assumes:</p><ul>", *[f"<li>{_md(a)}</li>" for a in ASSUMPTIONS], "</ul>"]
    search = report.get("search")
    if search:
        parts += ['<h2 id="search">Search (equal budget per method)</h2>',
                  f"<p>Optuna {esc(search['sampler'])} (seed {esc(search['seed'])}), pruner {esc(search['pruner'])}; "
                  f"{esc(search['trials'])} trials per cell on the validation split ({esc(search['objective'])}, "
                  f"{esc(search['direction'])}); space: {esc(space_words(search['space']))}. The best "
                  "trial's settings were scored once on test.</p>"]
        srows = []
        for cell, c in search["cells"].items():
            best, spread = c.get("best"), c.get("spread")
            srows.append([cell, (str(c["budget"]), str(c["budget"])), f"{c['complete']} / {c['pruned']} / {c['fail']}",
                          _settings(best["params"]) if best else DASH,
                          (sig(best["value"]), repr(float(best["value"]))) if best else (DASH, ""),
                          DASH if not spread else f"{sig(spread['min'])} / {sig(spread['median'])} / {sig(spread['max'])}"])
        parts.append(table(["setting", "budget", "complete / pruned / failed", "best settings",
                            f"best {search['objective']}", "min / median / max"], srows))
    tuned = [r for r in report["rows"] if r.get("tuned")]
    if tuned:
        parts += ['<h2 id="tuning">Equal tuning budget</h2>',
                  table(["setting", "chosen", f"valid {metric} per value"],
                        [[r["setting"], _settings(r["tuned"]["chosen"]),
                          "; ".join(f"{_settings(json.loads(k))}: {num_text(v)}" for k, v in r["tuned"][f"valid_{metric}"].items())]
                         for r in tuned])]
    gap_keys = sorted({k for r in report["rows"] for k in r.get("gaps", {})}, key=lambda k: ("&" in k, k))
    if gap_keys:
        stat = SUBGROUP_STATS[report.get("task", "binary")][0]
        parts += ['<h2 id="gaps">Subgroup gaps</h2>',
                  f"<p>{esc(stat)} gap (largest minus smallest subgroup {esc(stat)}), mean over runs.</p>",
                  table(["setting", *gap_keys], [[r["setting"], *(_num(r["gaps"].get(k)) for k in gap_keys)]
                                                 for r in report["rows"]])]
    if "loss_curves" in drawn:
        parts += ['<h2 id="curves">Training curves</h2>', _figure(root / figures["loss_curves"], "loss_curves",
                                                                 FIGURES[2][1])]
    lines = missing_lines(report)
    if lines:
        parts += ['<h2 id="missing">Runs missing</h2>',
                  f"<p>The report is made of the finished runs; these are not in it (<code>covfuse status "
                  f"{esc(study.study_dir)}</code>; rerun the study's command to finish them):</p><ul>",
                  *[f"<li>{esc(line)}</li>" for line in lines], "</ul>"]
    runs = [[r["setting"], _settings(r["settings"]),
             ", ".join(str(Path(run.dir).relative_to(root)) for run in study.runs if run.cell == r["setting"]
                       and str(Path(run.dir).relative_to(root)) not in r.get("missing_runs", [])) or DASH]
            for r in report["rows"]]
    parts += ['<h2 id="runs">Runs</h2>', table(["setting", "settings", "run folders"], runs)]
    return page(f"Study {study.name}", "\n".join(p for p in parts if p))


def page(title: str, body: str) -> str:
    """The HTML document around ``body``, with a CSP that admits only the inline script below (by hash)."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def write_html(report: dict, study: Study) -> Path:
    """``<study>/report.html`` (call after :func:`covfuse.studies.report.write_report`, which draws the figures)."""
    return atomic_write_text(Path(study.study_dir) / "report.html", render(report, study))
