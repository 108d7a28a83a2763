"""The twin's cue boxes: drawing a cue changes pixels only inside its box, and cues.csv round-trips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from covfuse.data.readers.celeba_release import ATTR_NAMES
from covfuse.data.twins.faces import CUE_ATTRIBUTES, cue_boxes, draw_face, generate_labels, read_cue_boxes, write_synth


@pytest.mark.parametrize("size", [(178, 218), (89, 109)])
def test_each_cue_is_drawn_inside_its_box(size):
    labels = generate_labels(12, seed=4, image_size=size)
    boxes = cue_boxes(labels)
    for i in range(12):
        a = dict(zip(ATTR_NAMES, labels.attrs[i].astype(bool).tolist()))
        a["Blurry"] = False  # a blur would spread any change over the whole face
        style = {k: v[i] for k, v in labels.style.items()}
        for cue, attr in CUE_ATTRIBUTES.items():
            on = np.asarray(draw_face({**a, attr: True}, style, size), dtype=int)
            off = np.asarray(draw_face({**a, attr: False}, style, size), dtype=int)
            ys, xs = np.nonzero(np.abs(on - off).sum(axis=2))
            assert len(xs) > 0
            x0, y0, x1, y1 = boxes[cue][i]
            assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
            # and the box is not much larger than what is drawn (it locates the cue)
            assert (x1 - x0) * (y1 - y0) < 2.5 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)


def test_cues_csv_is_written_and_read_back(tmp_path):
    out = write_synth(tmp_path / "t", n=30, seed=1, image_size=(44, 54), images=False, progress=False)
    names, boxes = read_cue_boxes(out / "cues.csv")
    meta = json.loads((out / "synth.json").read_text())
    assert meta["cue_boxes"]["file"] == "cues.csv" and meta["cue_boxes"]["cues"] == CUE_ATTRIBUTES
    assert names == [f"{i:06d}.jpg" for i in range(1, 31)]
    expected = cue_boxes(generate_labels(30, seed=1, image_size=(44, 54)))
    for cue in CUE_ATTRIBUTES:
        np.testing.assert_allclose(boxes[cue], expected[cue], atol=0.051)
