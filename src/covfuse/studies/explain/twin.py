"""Ground truth from a synthetic twin: its rule, where its cues are drawn, and what an explanation should show.

The planted twin's rule is ``Attractive = Smiling if Young else not Eyeglasses``. Flipping Young
can change the label only where the two branches disagree, i.e. where Smiling differs from "no
glasses" (``cues_disagree``); elsewhere both branches give the same answer (``cues_agree``). With
Young = 1 the evidence is the mouth, with Young = 0 the eyes, so a model that learned the rule moves
its attribution from the eye box to the mouth box when Young goes from 0 to 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covfuse.data.decode import crop_box
from covfuse.data.twins.faces import CUE_FILE, read_cue_boxes
from covfuse.studies.explain.attribution import METHODS, box_share, input_boxes
from covfuse.studies.stats import cluster_bootstrap_mean


@dataclass
class TwinTruth:
    card: dict  # synth.json
    boxes: dict[str, np.ndarray]  # cue -> (N, 4) boxes in model-input pixels, metadata row order
    smiling: np.ndarray  # (N,) bool
    eyeglasses: np.ndarray  # (N,) bool

    def groups(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Masks for the samples at metadata rows ``index``: do the rule's two branches disagree?"""
        disagree = self.smiling[index] != ~self.eyeglasses[index]
        return {"cues_disagree": disagree, "cues_agree": ~disagree}

    def input_boxes(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {cue: b[index] for cue, b in self.boxes.items()}

    def describe(self) -> dict:
        return {"effect": self.card.get("effect"), "rule": self.card.get("rule"), "cues": self.card["cue_boxes"]["cues"],
                "groups": {"cues_disagree": "Smiling != not Eyeglasses: the rule's branches give different labels",
                           "cues_agree": "Smiling == not Eyeglasses: both branches give the same label"}}

    def mass_shift(self, index: np.ndarray, groups: np.ndarray, change, lo: dict, hi: dict, *,
                   n_boot: int, seed: int) -> dict:
        """Share of each map inside each cue box with the covariate at its low and its high value, and
        the shift of (mouth share - eyes share) from low to high, per method, with group-resampled CIs."""
        boxes = self.input_boxes(index)
        size = lo[METHODS[0]].shape[-1]
        # what a map spread evenly over the image would put in each box: the reference for the shares
        area = {cue: float(np.nanmean(box_share(np.ones((len(index), size, size)), b))) for cue, b in boxes.items()}
        out: dict = {"low": change.lo, "high": change.hi, "images": int(len(index)), "area": area}
        for method in METHODS:
            entry: dict = {}
            contrast = {}
            for label, maps in (("low", lo[method]), ("high", hi[method])):
                shares = {cue: box_share(maps, b) for cue, b in boxes.items()}
                entry[label] = {cue: float(np.nanmean(s)) if np.isfinite(s).any() else None for cue, s in shares.items()}
                contrast[label] = shares["mouth"] - shares["eyes"]
            shift = contrast["high"] - contrast["low"]
            ok = np.isfinite(shift)
            stat = cluster_bootstrap_mean(shift[ok], groups[ok], n_boot=n_boot, seed=seed)
            entry["mouth_minus_eyes_shift"] = stat["estimate"]
            entry["ci"] = stat["ci"]
            entry["share_positive"] = float((shift[ok] > 0).mean()) if ok.any() else None
            out[method] = entry
        return out


def load_twin(meta, preset: str, image_size: int) -> TwinTruth | None:
    """The twin's truth when ``meta`` comes from `covfuse data synth` with cue boxes; otherwise None."""
    root = Path(meta.root)
    card_path = next((p for p in (root.parent / "synth.json", root / "synth.json") if p.is_file()), None)
    if card_path is None:
        return None
    card = json.loads(card_path.read_text())
    cues_path = card_path.parent / card.get("cue_boxes", {}).get("file", CUE_FILE)
    if "cue_boxes" not in card or not cues_path.is_file():
        return None
    names, boxes = read_cue_boxes(cues_path)
    if names != list(meta.filenames):
        return None
    width, height = card["image_size"]
    crop = crop_box(width, height, preset)
    return TwinTruth(
        card=card,
        boxes={cue: input_boxes(b, crop, image_size) for cue, b in boxes.items()},
        smiling=meta.attrs[:, meta.column("Smiling")].astype(bool),
        eyeglasses=meta.attrs[:, meta.column("Eyeglasses")].astype(bool),
    )
