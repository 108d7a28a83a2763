"""The demo's finding must depend on the planted effect: a slow, end-to-end check on twins large
enough for identity-clustered intervals (image-only vs hybrid only, to keep it to about a minute
of CPU per twin)."""
from __future__ import annotations

import json

import pytest

from covfuse.cli.main import main as covfuse


@pytest.mark.slow
@pytest.mark.parametrize("effect", ["planted", "null"])
def test_hybrid_beats_image_only_only_when_the_effect_is_planted(tmp_path, effect):
    out = tmp_path / "out"
    assert covfuse(["demo", "--effect", effect, "--n", "4000", "--out", str(out), "--data", str(tmp_path / "twin"),
                    "--methods", "image-only,hybrid", "--bootstrap", "500"]) == 0
    c = json.loads((out / "results.json").read_text())["comparisons"]["hybrid"]
    lo, hi = c["ci"]
    if effect == "planted":
        assert lo > 0 and c["verdict"] == "better", c
    else:
        assert lo <= 0 <= hi and c["verdict"] == "no evidence", c
