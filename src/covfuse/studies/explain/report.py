"""``explain.md``: the numbers of explain.json as tables a person reads, with links to the figures."""
from __future__ import annotations

from urllib.parse import quote


def _num(v, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None or ci[1] is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rate(entry: dict) -> str:
    return f"{_num(entry['decision_flip_rate'])}{_ci(entry['ci'])}"


def _change(entry: dict) -> str:
    return f"{_num(entry['mean_abs_change'])}{_ci(entry['mean_abs_change_ci'])}"


def markdown(r: dict) -> str:
    people = r["resampled"].split()[0]  # identities (CelebA) or subjects (a manifest)
    lines = [
        f"# What the covariates change: {r['run']}",
        "",
        f"Split `{r['split']}`: {r['count']} samples from {r['clusters']} {people}; target {r['target']}, "
        f"fusion `{r['fusion']}`, accuracy {_num(r.get('accuracy'))} with the real covariates. 95% intervals come "
        f"from {r['n_boot']} bootstrap resamples of whole {people}, never of single images "
        "(bootstrap standard error, t with G − 1 degrees of freedom; covfuse.studies.stats).",
    ]
    if r["covariates_mode"] != "real":
        lines += ["", f"**Note:** this run was trained with `covariates_mode: {r['covariates_mode']}` (a control); "
                  "it is fed what it was trained with, so counterfactual covariates may change nothing."]
    lines += [
        "",
        "## Counterfactual covariates",
        "",
        "Every sample is scored again with one covariate changed (0/1: flipped; a number: plus and minus "
        "one training-split standard deviation, shown in the data's units; a category: swapped to the other "
        "level, or set to each other level in turn), the others held fixed. A sample whose value is missing is "
        "left out of that covariate's edits. *Change*: mean |P(counterfactual) − P(real)|; *flips*: share of "
        "decisions (P ≥ 0.5) that change. Subgroups are the covariates' values as the data has them (numbers "
        "with many values in training-split tertiles; `=missing`: no value).",
        "",
        "| covariate | counterfactual | mean abs change | decision flips | mean signed change |",
        "|---|---|---|---|---|",
    ]
    for name, e in r["covariates"].items():
        lines.append(f"| {name} | {e['counterfactual']} | {_change(e)} | {_rate(e)} | {_num(e['mean_change'], '+.3f')} |")
    for name, why in r.get("not_changed", {}).items():
        lines.append(f"| {name} | none: {why} | — | — | — |")
    lines += ["", f"![changes]({_link(r['figures']['changes'])})", "", "### By subgroup", ""]
    if r.get("twin"):
        t = r["twin"]
        lines += [f"This is a synthetic twin (`{t['effect']}`): {t['rule']}. "
                  f"`cues_disagree`: {t['groups']['cues_disagree']}; `cues_agree`: {t['groups']['cues_agree']}.", ""]
    for name, e in r["covariates"].items():
        lines += [f"**{name}**", "", f"| subgroup | samples | {people} | mean abs change | decision flips |", "|---|---|---|---|---|"]
        for g, s in e["groups"].items():
            lines.append(f"| {g} | {s['count']} | {s['clusters']} | {_change(s)} | {_rate(s)} |")
        lines.append("")
    a = r["attribution"]
    lines += ["## Where the model looks", ""]
    if a.get("skipped"):
        lines += [f"No attribution maps: {a['skipped']}.", ""]
    else:
        lines += [f"Grad-CAM at `{a['layer']}` and integrated gradients ({a['steps']} steps, mid-grey baseline), both "
                  "explaining the log-odds of the target, computed with Captum. Each row: the image, then per method "
                  "the map with the real covariates, with the counterfactual, and the difference.", ""]
        for name, ex in a.get("examples", {}).items():
            lines += [f"![maps {name}]({_link(ex['figure'])})" if "figure" in ex else f"No maps for {name}: {ex['skipped']}.", ""]
        if a.get("cue_mass"):
            lines += ["### Attribution inside the twin's cue boxes", "",
                      "Share of each map inside the mouth box and the eye box, with the covariate set to its low and "
                      "its high value for the same images; *shift* is the mean change of (mouth share − eyes share) "
                      "from low to high (the planted rule predicts a positive shift for Young).", "",
                      "| covariate | method | images | mouth (low → high) | eyes (low → high) | shift | images with shift > 0 |",
                      "|---|---|---|---|---|---|---|"]
            for name, e in a["cue_mass"].items():
                for method in ("grad-cam", "integrated-gradients"):
                    m = e[method]
                    lines.append(
                        f"| {name} {e['low']:g}→{e['high']:g} | {method} | {e['images']} | {_num(m['low']['mouth'])} → "
                        f"{_num(m['high']['mouth'])} | {_num(m['low']['eyes'])} → {_num(m['high']['eyes'])} | "
                        f"{_num(m['mouth_minus_eyes_shift'], '+.3f')}{_ci(m['ci'])} | {_num(m['share_positive'])} |")
            area = next(iter(a["cue_mass"].values()))["area"]
            lines += ["", "A map spread evenly over the image would put " + " and ".join(
                f"{v:.3f} in the {k} box" for k, v in area.items()) + ".", "",
                f"![cue mass]({_link(r['figures']['cue_mass'])})", ""]
    lines += ["## Inside the conditioning layers", ""]
    if not r["layers"]:
        lines += ["No conditioning layer with weights to summarise.", ""]
    for lname, s in r["layers"].items():
        if s["kind"] in ("hybrid", "concat", "mlpcatmlp"):
            rel = ", ".join(f"{k} {_num(v)}" for k, v in s["relative_norm"].items())
            what = {"hybrid": "‖W_j‖ / ‖W_0‖", "concat": "covariate column / image column norm",
                    "mlpcatmlp": "covariate path ‖C T_j‖ / image column norm"}[s["kind"]]
            lines.append(f"- `{lname}` ({s['kind']}): {what}: {rel}")
        else:
            first, second = s.get("quantities", ["scale", "shift"])
            diffs = ", ".join(f"{k}: {first} {v['scale']:.3f}, {second} {v['shift']:.3f}" for k, v in s["difference"].items())
            lines.append(f"- `{lname}` ({s['kind']}, {s['channels']} channels): mean |difference| of the per-channel "
                         f"mean {first} and {second} between the two values of {diffs or '—'}")
        if s.get("figure"):
            lines.append(f"  ![{lname}]({_link(s['figure'])})")
    lines += ["", f"Written by `covfuse explain` in {r['seconds']} s.", ""]
    return "\n".join(lines)


def _link(path: str) -> str:
    """A relative file path as a markdown link target: spaces and brackets percent-encoded (a covariate
    column named "body site" gives figures/maps_body%20site.png, which every renderer follows)."""
    return quote(str(path), safe="/")
