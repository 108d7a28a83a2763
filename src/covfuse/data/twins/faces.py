"""A synthetic CelebA twin: the release's exact file formats, procedurally drawn faces, a planted effect.

Why a twin: tests, the demo and CI need CelebA-shaped data without the 1.4 GB download, and a
known ground truth to check that a covariate-conditioned model can find an interaction a plain
CNN cannot. The target ``Attractive`` follows a stated rule (see :data:`RULES`):

* ``planted``: ``Attractive = Smiling if Young else not Eyeglasses``, flipped with probability
  ``noise``. ``Smiling`` and ``Eyeglasses`` are drawn big and high-contrast (independent, 50/50
  each); ``Young`` is *never drawn* (50/50 per identity), so only the covariate tells which
  visible cue matters. ``Male`` is visible (hair length, beard) but independent of the label.
* ``null``: ``Attractive = Smiling``, flipped with probability ``noise``; same marginal rates, and
  the covariates carry nothing beyond the image.

:func:`bayes_accuracies` computes the best achievable accuracy for each input set exactly, by
enumerating the joint distribution; the numbers go into ``OUT/README.txt`` and ``OUT/synth.json``.
Other attributes follow roughly CelebA's rates (some depend on ``Male``), independently of
``Young``, ``Smiling``, ``Eyeglasses`` and the label, so they cannot change the Bayes rates.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from covfuse.data._workers import run_chunks
from covfuse.data.readers.celeba_release import (
    ATTR_FILE, ATTR_NAMES, BBOX_FILE, IDENTITY_FILE, IMAGE_DIR, LANDMARKS_FILE, PARTITION_FILE,
)
from covfuse.errors import UserError

#: The release's split sizes; a twin of N images keeps these proportions, in contiguous ranges.
OFFICIAL_SPLIT_SIZES = (162_770, 19_867, 19_962)
OFFICIAL_SIZE = (178, 218)  # width, height of the aligned release images
TARGET = "Attractive"
COVARIATES = ("Young", "Male")
EFFECTS = ("planted", "null")
RULES = {
    "planted": "Attractive = Smiling if Young else (not Eyeglasses); then flipped with probability {noise}",
    "null": "Attractive = Smiling; then flipped with probability {noise} (Young and Male carry no information)",
}
LANDMARK_NAMES = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)
# Where the landmarks sit in the release's 178x218 aligned images (their mean positions).
_LANDMARKS_178 = np.array([70, 112, 108, 112, 89, 134, 73, 152, 105, 152], dtype=np.float64)
_CENTRE = (89.0, 125.0)
# Where the planted cues are drawn, as (x0, y0, x1, y1) boxes on the 178x218 reference face, before
# pose jitter: the mouth (a smile's white chord or the closed lips; Smiling) and both eyes with the
# glasses' frames (Eyeglasses). `cue_boxes` maps them onto each image, so explanations can be
# checked against where the evidence really is.
CUE_REGIONS = {"mouth": (64.0, 145.0, 114.0, 175.0), "eyes": (44.0, 96.0, 134.0, 128.0)}
CUE_ATTRIBUTES = {"mouth": "Smiling", "eyes": "Eyeglasses"}
CUE_FILE = "cues.csv"

# Latent probabilities of the rule's inputs. Young is 0.5 (CelebA: 0.77) to make the planted
# interaction as strong as it can be; Eyeglasses is 0.5 (CelebA: 0.065) so both cues are balanced.
P_YOUNG, P_SMILING, P_EYEGLASSES = 0.5, 0.5, 0.5

# name: (P(attribute | female), P(attribute | male), level). Chosen so the marginals are near
# CelebA's; "identity" attributes are shared by all images of a person, "image" ones vary.
_RATES: dict[str, tuple[float, float, str]] = {
    "Arched_Eyebrows": (0.42, 0.05, "identity"),
    "Bags_Under_Eyes": (0.20, 0.20, "image"),
    "Big_Lips": (0.26, 0.21, "identity"),
    "Big_Nose": (0.12, 0.40, "identity"),
    "Bushy_Eyebrows": (0.08, 0.23, "identity"),
    "Chubby": (0.04, 0.09, "identity"),
    "Double_Chin": (0.03, 0.07, "identity"),
    "Narrow_Eyes": (0.12, 0.12, "identity"),
    "Oval_Face": (0.32, 0.23, "identity"),
    "Pale_Skin": (0.05, 0.03, "identity"),
    "Pointy_Nose": (0.33, 0.20, "identity"),
    "Receding_Hairline": (0.04, 0.14, "identity"),
    "Bald": (0.0, 0.05, "identity"),
    "Goatee": (0.0, 0.15, "identity"),
    "Mustache": (0.0, 0.10, "identity"),
    "Sideburns": (0.0, 0.14, "identity"),
    "_Full_Beard": (0.0, 0.25, "identity"),
    "5_o_Clock_Shadow": (0.0, 0.27, "image"),
    "Bangs": (0.20, 0.08, "image"),
    "Blurry": (0.05, 0.05, "image"),
    "Heavy_Makeup": (0.66, 0.0, "image"),
    "High_Cheekbones": (0.45, 0.45, "image"),
    "Mouth_Slightly_Open": (0.48, 0.48, "image"),
    "Rosy_Cheeks": (0.11, 0.0, "image"),
    "Wearing_Earrings": (0.30, 0.02, "image"),
    "Wearing_Hat": (0.05, 0.05, "image"),
    "Wearing_Lipstick": (0.80, 0.01, "image"),
    "Wearing_Necklace": (0.20, 0.01, "image"),
    "Wearing_Necktie": (0.0, 0.17, "image"),
}
P_MALE = 0.42
# Hair colour (one per identity, "other" = unlabelled dark/auburn) and texture.
_HAIR_COLOURS = {"Black_Hair": 0.24, "Blond_Hair": 0.15, "Brown_Hair": 0.20, "Gray_Hair": 0.04, "other": 0.37}
_HAIR_RGB = {
    "Black_Hair": [(22, 18, 16), (35, 28, 24)],
    "Blond_Hair": [(228, 196, 120), (240, 214, 150)],
    "Brown_Hair": [(112, 70, 38), (130, 84, 50)],
    "Gray_Hair": [(170, 170, 172), (196, 196, 198)],
    "other": [(70, 40, 25), (140, 62, 30), (60, 45, 35)],
}
_HAIR_TEXTURE = {"Straight_Hair": 0.21, "Wavy_Hair": 0.32, "other": 0.47}
_SKIN = [(241, 206, 178), (224, 182, 150), (198, 148, 112), (160, 112, 80), (112, 76, 52)]
_PALE_SKIN = (250, 232, 222)


@dataclass
class SynthLabels:
    """Everything a twin's text files hold, plus the per-image drawing style."""

    filenames: list[str]
    attrs: np.ndarray  # uint8 (N, 40) in {0, 1}, official column order
    split: np.ndarray  # int8 (N,)
    identity: np.ndarray  # int64 (N,)
    landmarks: np.ndarray  # int64 (N, 10) in image pixels
    bbox: np.ndarray  # int64 (N, 4): x_1 y_1 width height (of an imagined uncropped photo)
    style: dict[str, np.ndarray]  # per-image drawing parameters
    image_size: tuple[int, int]


def split_sizes(n: int) -> tuple[int, int, int]:
    """The official 162770:19867:19962 proportions scaled to ``n`` (rounded, summing to ``n``)."""
    total = sum(OFFICIAL_SPLIT_SIZES)
    train = round(n * OFFICIAL_SPLIT_SIZES[0] / total)
    valid = round(n * OFFICIAL_SPLIT_SIZES[1] / total)
    return train, valid, n - train - valid


def _identities(rng: np.random.Generator, sizes: tuple[int, ...]) -> np.ndarray:
    """Identity per image: disjoint across splits, several images each, scattered within a split."""
    n = sum(sizes)
    mean = int(min(20, max(4, n // 100)))  # CelebA: about 20 images per person
    groups, next_id = [], 0
    for size in sizes:
        ids = []
        while len(ids) < size:
            k = 1 + rng.poisson(mean - 1)
            ids += [next_id] * k
            next_id += 1
        groups.append(rng.permutation(np.array(ids[:size], dtype=np.int64)))
    ident = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    # Release identity numbers are arbitrary labels, not ordered by split: permute 1..K.
    labels = rng.permutation(next_id) + 1
    return labels[ident] if n else ident


def _rule(effect: str, young: np.ndarray, smiling: np.ndarray, eyeglasses: np.ndarray) -> np.ndarray:
    if effect == "planted":
        return np.where(young, smiling, ~eyeglasses)
    return smiling.copy()


def generate_labels(
    n: int, seed: int = 0, effect: str = "planted", noise: float = 0.05, image_size: tuple[int, int] = OFFICIAL_SIZE
) -> SynthLabels:
    """Draw all attributes, splits, identities and drawing styles of a twin (vectorised, seeded)."""
    if effect not in EFFECTS:
        raise UserError(f"unknown effect {effect!r}; choose one of {', '.join(EFFECTS)}")
    if n < 3:
        raise UserError(f"a twin needs at least 3 images (one per split), got --n {n}")
    if not 0 <= noise < 0.5:
        raise UserError(f"noise must be in [0, 0.5), got {noise}")
    rng = np.random.default_rng(seed)
    sizes = split_sizes(n)
    split = np.repeat(np.arange(3, dtype=np.int8), sizes)
    identity = _identities(rng, sizes)
    _, person = np.unique(identity, return_inverse=True)  # 0..K-1 per image
    k = int(person.max()) + 1
    a: dict[str, np.ndarray] = {}
    male_id = rng.random(k) < P_MALE
    a["Male"] = male_id[person]
    a["Young"] = (rng.random(k) < P_YOUNG)[person]
    a["Smiling"] = rng.random(n) < P_SMILING
    a["Eyeglasses"] = rng.random(n) < P_EYEGLASSES
    for name, (pf, pm, level) in _RATES.items():
        if level == "identity":
            a[name] = (rng.random(k) < np.where(male_id, pm, pf))[person]
        else:
            a[name] = rng.random(n) < np.where(a["Male"], pm, pf)
    hair = rng.choice(len(_HAIR_COLOURS), size=k, p=list(_HAIR_COLOURS.values()))[person]
    for i, name in enumerate(_HAIR_COLOURS):
        if name != "other":
            a[name] = (hair == i) & ~a["Bald"]
    texture = rng.choice(len(_HAIR_TEXTURE), size=k, p=list(_HAIR_TEXTURE.values()))[person]
    a["Straight_Hair"] = (texture == 0) & ~a["Bald"]
    a["Wavy_Hair"] = (texture == 1) & ~a["Bald"]
    a["Bangs"] &= ~a["Bald"]
    a["No_Beard"] = ~(a.pop("_Full_Beard") | a["Goatee"] | a["Mustache"])
    clean = _rule(effect, a["Young"], a["Smiling"], a["Eyeglasses"])
    a[TARGET] = clean ^ (rng.random(n) < noise)
    attrs = np.stack([a[name] for name in ATTR_NAMES], axis=1).astype(np.uint8)

    # Drawing style: identity-level looks plus per-image pose jitter and colours.
    skin_id = rng.integers(0, len(_SKIN), size=k)
    palette = np.array([[rgbs[v % len(rgbs)] for v in range(6)] for rgbs in (_HAIR_RGB[h] for h in _HAIR_COLOURS)])
    hair_rgb = palette[hair, rng.integers(0, 6, size=k)[person]]
    skin = np.where(a["Pale_Skin"][:, None], np.array(_PALE_SKIN), np.array(_SKIN)[skin_id[person]])
    style = {
        "dx": rng.uniform(-4, 4, n), "dy": rng.uniform(-4, 4, n), "scale": rng.uniform(0.94, 1.06, n),
        "face_width": rng.uniform(0.95, 1.05, k)[person],
        "skin": skin.astype(np.int64), "hair": hair_rgb.astype(np.int64),
        "background": rng.integers(30, 226, (n, 3)), "cloth": rng.integers(20, 236, (n, 3)),
        "hat": rng.integers(0, 256, (n, 3)), "eye": rng.integers(0, 3, n),
    }
    w, h = image_size
    sx, sy = w / OFFICIAL_SIZE[0], h / OFFICIAL_SIZE[1]
    lm = _LANDMARKS_178.reshape(5, 2)
    cx, cy = _CENTRE
    xs = (cx + (lm[None, :, 0] - cx) * style["scale"][:, None] + style["dx"][:, None]) * sx
    ys = (cy + (lm[None, :, 1] - cy) * style["scale"][:, None] + style["dy"][:, None]) * sy
    landmarks = np.rint(np.stack([xs, ys], axis=2).reshape(n, 10)).astype(np.int64)
    bbox = np.stack(
        [rng.integers(60, 130, n), rng.integers(40, 110, n), rng.integers(180, 280, n), rng.integers(240, 380, n)], 1
    ).astype(np.int64)
    filenames = [f"{i + 1:06d}.jpg" for i in range(n)]
    return SynthLabels(filenames, attrs, split, identity, landmarks, bbox, style, (w, h))


def face_width(labels: SynthLabels) -> np.ndarray:
    """The horizontal face scale each image is drawn with (identity width, Chubby and Oval_Face)."""
    col = {name: i for i, name in enumerate(ATTR_NAMES)}
    chubby = labels.attrs[:, col["Chubby"]].astype(bool)
    oval = labels.attrs[:, col["Oval_Face"]].astype(bool)
    return labels.style["face_width"] * np.where(chubby, 1.12, 1.0) * np.where(oval, 0.92, 1.0)


def cue_boxes(labels: SynthLabels) -> dict[str, np.ndarray]:
    """{"mouth"|"eyes": float (N, 4) boxes x0, y0, x1, y1 in image pixels}: where each cue is drawn.

    The same mapping as :class:`_Pen` (scale, face width, shift, then image size), vectorised; the
    boxes exist whether or not the cue is present (an unsmiling mouth is still in the mouth box).
    """
    st, (w, h) = labels.style, labels.image_size
    sx, sy = w / OFFICIAL_SIZE[0], h / OFFICIAL_SIZE[1]
    cx, cy = _CENTRE
    fw = face_width(labels)
    out = {}
    for name, (x0, y0, x1, y1) in CUE_REGIONS.items():
        xs = [(cx + (x - cx) * st["scale"] * fw + st["dx"]) * sx for x in (x0, x1)]
        ys = [(cy + (y - cy) * st["scale"] + st["dy"]) * sy for y in (y0, y1)]
        out[name] = np.stack([xs[0], ys[0], xs[1], ys[1]], axis=1)
    return out


def write_cue_boxes(path: Path, labels: SynthLabels) -> None:
    """``cues.csv``: image, then x0, y0, x1, y1 of each cue box (pixels, one decimal)."""
    boxes = cue_boxes(labels)
    header = ["image"] + [f"{cue}_{k}" for cue in boxes for k in ("x0", "y0", "x1", "y1")]
    table = np.concatenate(list(boxes.values()), axis=1)
    rows = [",".join([f, *(f"{v:.1f}" for v in row)]) for f, row in zip(labels.filenames, table.tolist())]
    path.write_text("\n".join([",".join(header), *rows]) + "\n")


def read_cue_boxes(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """File names and {cue: (N, 4) boxes} from a twin's ``cues.csv``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        rows = [line.split(",") for line in lines[1:] if line]
        values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    except (OSError, IndexError, ValueError) as exc:
        raise UserError(f"{path}: not a readable cue box table ({exc})") from None
    names = [r[0] for r in rows]
    cues = [header[i][: -len("_x0")] for i in range(1, len(header), 4)]
    if header[0] != "image" or values.shape[1] != 4 * len(cues):
        raise UserError(f"{path}: expected columns image,<cue>_x0,<cue>_y0,<cue>_x1,<cue>_y1,...")
    return names, {cue: values[:, 4 * i : 4 * i + 4] for i, cue in enumerate(cues)}


def bayes_accuracies(effect: str = "planted", noise: float = 0.05) -> dict[str, float]:
    """Exact best accuracies for predicting the twin's target from each input set.

    Enumerates the joint distribution of the latent inputs (Young, Male, Smiling, Eyeglasses)
    and the label; for each input set, the Bayes accuracy is sum over visible values v of
    max_y P(y, v). The image shows Smiling, Eyeglasses and Male (never Young); the covariates are
    Young and Male. All other attributes are independent of the label and of these inputs.
    """
    views = {
        "image_and_covariates": ("Young", "Male", "Smiling", "Eyeglasses"),
        "image_only": ("Male", "Smiling", "Eyeglasses"),
        "covariates_only": ("Young", "Male"),
    }
    probs = {"Young": P_YOUNG, "Male": P_MALE, "Smiling": P_SMILING, "Eyeglasses": P_EYEGLASSES}
    joint: dict[tuple, float] = {}  # (latent values..., y) -> probability
    for values in itertools.product((False, True), repeat=4):
        latent = dict(zip(probs, values))
        p = np.prod([probs[k] if v else 1 - probs[k] for k, v in latent.items()])
        clean = bool(_rule(effect, np.array(latent["Young"]), np.array(latent["Smiling"]), np.array(latent["Eyeglasses"])))
        for y in (False, True):
            joint[values + (y,)] = joint.get(values + (y,), 0.0) + p * ((1 - noise) if y == clean else noise)
    out = {}
    for view, names in views.items():
        cols = [list(probs).index(name) for name in names]
        best: dict[tuple, list[float]] = {}
        for key, p in joint.items():
            cell = best.setdefault(tuple(key[c] for c in cols), [0.0, 0.0])
            cell[int(key[-1])] += p
        out[view] = float(sum(max(cell) for cell in best.values()))
    return out


class _Pen:
    """Maps coordinates of the 178x218 reference face (with pose jitter) onto the output image."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: tuple[int, int], dx: float, dy: float, scale: float, fw: float):
        self.draw, self.s, self.dx, self.dy, self.fw = draw, scale, dx, dy, fw
        self.sx, self.sy = size[0] / OFFICIAL_SIZE[0], size[1] / OFFICIAL_SIZE[1]

    def p(self, x: float, y: float) -> tuple[float, float]:
        cx, cy = _CENTRE
        return ((cx + (x - cx) * self.s * self.fw + self.dx) * self.sx, (cy + (y - cy) * self.s + self.dy) * self.sy)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = self.p(x0, y0), self.p(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def w(self, width: float) -> int:
        return max(1, round(width * self.s * (self.sx + self.sy) / 2))

    def ellipse(self, box, fill=None, outline=None, width=1):
        self.draw.ellipse(self.box(*box), fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def rect(self, box, fill=None, outline=None, width=1):
        self.draw.rectangle(self.box(*box), fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def line(self, points, fill, width):
        self.draw.line([self.p(x, y) for x, y in points], fill=fill, width=self.w(width), joint="curve")

    def polygon(self, points, fill):
        self.draw.polygon([self.p(x, y) for x, y in points], fill=fill)

    def chord(self, box, start, end, fill=None, outline=None, width=1):
        self.draw.chord(self.box(*box), start, end, fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def arc(self, box, start, end, fill, width):
        self.draw.arc(self.box(*box), start, end, fill=fill, width=self.w(width))


def _shade(rgb: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)  # type: ignore[return-value]


def draw_face(a: dict[str, bool], style: dict[str, object], size: tuple[int, int] = OFFICIAL_SIZE) -> Image.Image:
    """Draw one face whose visible attributes show; ``a`` maps attribute names to booleans.

    The cues a model must learn (Smiling: a wide white toothy mouth; Eyeglasses: thick black
    frames) are drawn large and dark so a small CNN sees them at 64x64 after the centre crop.
    Young is never drawn.
    """
    skin = tuple(int(c) for c in style["skin"])
    hair = tuple(int(c) for c in style["hair"])
    img = Image.new("RGB", size, tuple(int(c) for c in style["background"]))
    d = ImageDraw.Draw(img)
    fw = float(style["face_width"]) * (1.12 if a["Chubby"] else 1.0) * (0.92 if a["Oval_Face"] else 1.0)
    pen = _Pen(d, size, float(style["dx"]), float(style["dy"]), float(style["scale"]), fw)
    male = a["Male"]

    # Shoulders, clothes, neck.
    pen.ellipse((20, 192, 158, 290), fill=tuple(int(c) for c in style["cloth"]))
    pen.rect((76, 160, 102, 200), fill=_shade(skin, 0.9))
    if a["Wearing_Necktie"]:
        pen.polygon([(84, 196), (94, 196), (98, 240), (89, 250), (80, 240)], fill=(150, 20, 30))
    if a["Wearing_Necklace"]:
        pen.arc((72, 165, 106, 205), 20, 160, fill=(235, 200, 60), width=4)
    # Hair behind the head: long for women, short for men.
    if not a["Bald"]:
        if male:
            pen.ellipse((41, 56, 137, 150), fill=hair)
        else:
            pen.ellipse((38, 54, 140, 150), fill=hair)
            pen.rect((38, 100, 140, 205), fill=hair)
            if a["Wavy_Hair"]:
                for y in range(110, 205, 16):
                    pen.ellipse((30, y, 46, y + 16), fill=hair)
                    pen.ellipse((132, y, 148, y + 16), fill=hair)
    # Ears, face, chin.
    pen.ellipse((40, 112, 54, 142), fill=skin)
    pen.ellipse((124, 112, 138, 142), fill=skin)
    pen.ellipse((47, 67, 131, 183), fill=skin)
    if a["Double_Chin"]:
        pen.arc((70, 160, 108, 192), 20, 160, fill=_shade(skin, 0.75), width=3)
    if a["5_o_Clock_Shadow"]:
        pen.chord((49, 100, 129, 182), 20, 160, fill=_shade(skin, 0.8))
    if not a["Bald"]:
        top = 80 if a["Receding_Hairline"] else 88
        pen.chord((47, 60, 131, 2 * top - 60), 180, 360, fill=hair)  # hair cap over the forehead
        if a["Sideburns"]:
            pen.rect((48, 100, 56, 138), fill=hair)
            pen.rect((122, 100, 130, 138), fill=hair)
        if a["Bangs"]:
            pen.rect((55, 72, 123, 98), fill=hair)
    # Beard before the mouth so the mouth stays visible.
    if not a["No_Beard"]:
        if a["Goatee"]:
            pen.ellipse((77, 160, 101, 184), fill=hair)
        if a["Mustache"]:
            pen.rect((72, 141, 106, 147), fill=hair)
        if not (a["Goatee"] or a["Mustache"]):
            pen.chord((49, 96, 129, 184), 15, 165, fill=hair)
    # Brows and eyes.
    brow_w = 6 if a["Bushy_Eyebrows"] else 3
    for ex in (70, 108):
        if a["Arched_Eyebrows"]:
            pen.arc((ex - 13, 95, ex + 13, 111), 200, 340, fill=_shade(hair, 0.8), width=brow_w)
        else:
            pen.line([(ex - 12, 101), (ex + 12, 101)], fill=_shade(hair, 0.8), width=brow_w)
        if a["Heavy_Makeup"]:
            pen.ellipse((ex - 11, 104, ex + 11, 112), fill=(120, 70, 140))
        eh = 2 if a["Narrow_Eyes"] else 5
        pen.ellipse((ex - 9, 112 - eh, ex + 9, 112 + eh), fill=(250, 250, 250))
        iris = [(60, 40, 20), (40, 90, 150), (50, 110, 60)][int(style["eye"])]
        pen.ellipse((ex - 3, 112 - min(eh, 4), ex + 3, 112 + min(eh, 4)), fill=iris)
        if a["Bags_Under_Eyes"]:
            pen.arc((ex - 9, 110, ex + 9, 124), 20, 160, fill=_shade(skin, 0.7), width=2)
    if a["Eyeglasses"]:
        for ex in (70, 108):
            pen.ellipse((ex - 16, 99, ex + 16, 125), outline=(12, 12, 12), width=6)
        pen.line([(86, 110), (92, 110)], fill=(12, 12, 12), width=5)
        pen.line([(54, 110), (46, 108)], fill=(12, 12, 12), width=4)
        pen.line([(124, 110), (132, 108)], fill=(12, 12, 12), width=4)
    # Nose, cheeks.
    nose = _shade(skin, 0.78)
    if a["Big_Nose"]:
        pen.polygon([(89, 114), (77, 142), (101, 142)], fill=nose)
    elif a["Pointy_Nose"]:
        pen.polygon([(89, 114), (84, 140), (94, 140)], fill=nose)
    else:
        pen.polygon([(89, 118), (82, 138), (96, 138)], fill=nose)
    if a["Rosy_Cheeks"]:
        pen.ellipse((56, 130, 72, 144), fill=(235, 120, 130))
        pen.ellipse((106, 130, 122, 144), fill=(235, 120, 130))
    if a["High_Cheekbones"]:
        pen.arc((54, 118, 74, 140), 90, 180, fill=_shade(skin, 0.7), width=2)
        pen.arc((104, 118, 124, 140), 0, 90, fill=_shade(skin, 0.7), width=2)
    # Mouth: the smile is a wide white chord of teeth with a thick dark outline.
    lips = (205, 25, 55) if a["Wearing_Lipstick"] else (130, 45, 45)
    lip_w = 6 if a["Big_Lips"] else 4
    if a["Smiling"]:
        pen.chord((66, 134, 112, 172), 0, 180, fill=(252, 252, 252), outline=lips, width=lip_w)
    else:
        if a["Mouth_Slightly_Open"]:
            pen.ellipse((81, 148, 97, 158), fill=(60, 15, 20))
        pen.line([(76, 153), (102, 153)], fill=lips, width=lip_w)
    # Accessories on top.
    if a["Wearing_Earrings"]:
        pen.ellipse((42, 140, 50, 148), fill=(240, 200, 40))
        pen.ellipse((128, 140, 136, 148), fill=(240, 200, 40))
    if a["Wearing_Hat"]:
        hat = tuple(int(c) for c in style["hat"])
        pen.rect((48, 28, 130, 76), fill=hat)
        pen.ellipse((28, 64, 150, 84), fill=_shade(hat, 0.8))
    if a["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(2.5 * size[0] / OFFICIAL_SIZE[0]))
    return img


def _draw_chunk(folder: str, names: list[str], attrs: np.ndarray, style: dict, size: tuple[int, int], quality: int) -> int:
    """Worker: draw and save one chunk of images; returns how many were written."""
    for i, name in enumerate(names):
        a = dict(zip(ATTR_NAMES, attrs[i].astype(bool).tolist()))
        st = {k: v[i] for k, v in style.items()}
        draw_face(a, st, size).save(os.path.join(folder, name), "JPEG", quality=quality)
    return len(names)


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write with CRLF line endings, as the release does."""
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))


def _attr_lines(labels: SynthLabels) -> list[str]:
    # Rows are "000001.jpg -1  1  1": every value right-aligned in 3 characters, as in the release.
    signed = labels.attrs.astype(np.int8) * 2 - 1
    cell = {1: "  1", -1: " -1"}
    rows = ["".join(cell[v] for v in row) for row in signed.tolist()]
    header = " ".join(ATTR_NAMES) + " "  # the release's header ends with a space
    return [str(len(rows)), header] + [f"{f}{r}" for f, r in zip(labels.filenames, rows)]


def write_labels(folder: Path, labels: SynthLabels) -> None:
    """Write the five release text files into ``folder``."""
    n = len(labels.filenames)
    _write_lines(folder / ATTR_FILE, _attr_lines(labels))
    _write_lines(folder / PARTITION_FILE, [f"{f} {s}" for f, s in zip(labels.filenames, labels.split.tolist())])
    _write_lines(folder / IDENTITY_FILE, [f"{f} {s}" for f, s in zip(labels.filenames, labels.identity.tolist())])
    _write_lines(
        folder / BBOX_FILE,
        [str(n), "image_id x_1 y_1 width height"]
        + [f + "".join(f"{v:>6d}" for v in row) for f, row in zip(labels.filenames, labels.bbox.tolist())],
    )
    _write_lines(
        folder / LANDMARKS_FILE,
        [str(n), " ".join(LANDMARK_NAMES) + " "]
        + [f + "".join(f"{v:>5d}" for v in row) for f, row in zip(labels.filenames, labels.landmarks.tolist())],
    )


def write_manifest(path: Path, labels: SynthLabels, image_dir: str) -> None:
    """The twin as a manifest: ``subject`` (identity), ``path``, ``split`` and one 0/1 column per attribute."""
    names = ("train", "valid", "test")
    lines = [",".join(["subject", "path", "split", *ATTR_NAMES])]
    for f, identity, split, row in zip(labels.filenames, labels.identity.tolist(), labels.split.tolist(),
                                       labels.attrs.tolist()):
        lines.append(",".join([f"id{identity}", f"{image_dir}/{f}", names[split], *map(str, row)]))
    path.write_text("\n".join(lines) + "\n")


def parse_image_size(text: str) -> tuple[int, int]:
    """``'178x218'`` -> (178, 218)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--image-size must look like WIDTHxHEIGHT (e.g. 178x218 or 89x109), got {text!r}") from None
    if w < 16 or h < 16:
        raise UserError(f"--image-size must be at least 16x16, got {text!r}")
    return w, h


def _card(labels: SynthLabels, meta: dict) -> str:
    acc = meta["bayes_accuracy"]
    n = meta["n"]
    counts = np.bincount(labels.split, minlength=3)
    rates = labels.attrs.mean(0)
    lines = [
        "Synthetic CelebA twin (written by `covfuse data synth`)",
        "=" * 55,
        "",
        f"Images: {n} ({counts[0]} train / {counts[1]} valid / {counts[2]} test, contiguous, official proportions),",
        f"{len(np.unique(labels.identity))} identities (disjoint across splits), {labels.image_size[0]}x{labels.image_size[1]} px JPEGs"
        + ("" if meta["images"] else " (NOT written: labels only)") + ".",
        f"Seed {meta['seed']}, effect {meta['effect']!r}, label noise {meta['noise']}.",
        "Layout: celeba/ holds img_align_celeba/ and the five text files in the release's format",
        "(CRLF, count lines, header with a trailing space, right-aligned values), so both",
        "`covfuse data info` and torchvision.datasets.CelebA(root=<this folder>) read it.",
        "",
        "Target and rule",
        "---------------",
        f"Target: {meta['target']}; covariates: {', '.join(meta['covariates'])}.",
        f"Rule: {meta['rule']}",
        "Smiling (wide white toothy mouth) and Eyeglasses (thick black frames) are drawn large; each is",
        "independent, 50/50 per image. Young (50/50 per identity) is NEVER drawn. Male is drawn (long",
        "hair for women, beards for some men) but is independent of the target. All other attributes are",
        "drawn with roughly CelebA's rates, independent of Young, Smiling, Eyeglasses and the target.",
        f"{CUE_FILE} gives, per image, the box (x0,y0,x1,y1 pixels) where each cue is drawn: mouth",
        "(Smiling) and eyes (Eyeglasses), present or not, so explanations can be checked against them.",
        "",
        "Best achievable accuracy (Bayes, exact, computed from the rule):",
        f"  image + covariates : {acc['image_and_covariates']:.4f}",
        f"  image only         : {acc['image_only']:.4f}",
        f"  covariates only    : {acc['covariates_only']:.4f}",
        "",
        "Attribute positive rates in this twin:",
    ]
    lines += [f"  {name:<20} {rate:.3f}" for name, rate in zip(ATTR_NAMES, rates)]
    return "\n".join(lines) + "\n"


def write_synth(
    out: str | os.PathLike,
    n: int = 10_000,
    seed: int = 0,
    effect: str = "planted",
    *,
    image_size: tuple[int, int] = OFFICIAL_SIZE,
    noise: float = 0.05,
    images: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    quality: int = 90,
    progress: bool = True,
    format: str = "celeba",
) -> Path:
    """Write a twin to ``out`` (``out/celeba/...`` plus ``out/README.txt``, ``out/synth.json`` and the cue boxes,
    ``out/cues.csv``).

    ``format="manifest"`` writes the same images to ``out/images/`` and, instead of the release's
    text files, ``out/manifest.csv`` (subject = identity, path, split, the 40 attributes as 0/1):
    the layout of a user's own photo collection, read by the manifest reader.

    Everything is written into a temporary sibling folder first and renamed at the end, so an
    error or interrupt leaves nothing behind. An existing non-empty ``out`` is replaced only with
    ``overwrite=True``. ``images=False`` writes the text files only (fast; for statistics tests).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
    labels = generate_labels(n, seed, effect, noise, image_size)
    meta = {
        "target": TARGET,
        "covariates": list(COVARIATES),
        "rule": RULES[effect].format(noise=noise),
        "noise": noise,
        "effect": effect,
        "seed": seed,
        "n": n,
        "image_size": list(image_size),
        "images": images,
        "bayes_accuracy": bayes_accuracies(effect, noise),
        "latent_rates": {"Young": P_YOUNG, "Male": P_MALE, "Smiling": P_SMILING, "Eyeglasses": P_EYEGLASSES},
        "cue_boxes": {"file": CUE_FILE, "cues": CUE_ATTRIBUTES,
                      "format": "x0,y0,x1,y1 per cue, pixels of the image as stored (before any crop or resize)"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if format not in ("celeba", "manifest"):
        raise UserError(f"unknown twin format {format!r}; choose celeba or manifest")
    try:
        if format == "celeba":
            base = tmp / "celeba"
            image_dir = base / IMAGE_DIR
            image_dir.mkdir(parents=True)
            write_labels(base, labels)
        else:
            image_dir = tmp / "images"
            image_dir.mkdir(parents=True)
            write_manifest(tmp / "manifest.csv", labels, "images")
        if images:
            _draw_all(image_dir, labels, workers, quality, progress)
        write_cue_boxes(tmp / CUE_FILE, labels)
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.txt").write_text(_card(labels, meta))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _draw_all(folder: Path, labels: SynthLabels, workers: int, quality: int, progress: bool) -> None:
    from tqdm import tqdm

    n, chunk = len(labels.filenames), 500
    tasks = [
        (str(folder), labels.filenames[i : i + chunk], labels.attrs[i : i + chunk],
         {k: v[i : i + chunk] for k, v in labels.style.items()}, labels.image_size, quality)
        for i in range(0, n, chunk)
    ]
    with tqdm(total=n, desc="drawing faces", unit="img", disable=not progress) as bar:
        for _, done in run_chunks(_draw_chunk, tasks, workers):
            bar.update(done)
