"""A survival run's figures as a clinician reads them: Kaplan-Meier curves with round time ticks, the numbers at
risk at those ticks (as lifelines' event table counts them), censoring marks and a legend outside the curves;
calibration with the number of bins in its titles, each bin's size beside its point and nothing clipped."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from lifelines.datasets import load_rossi  # noqa: E402

from covfuse.training.survival_reference import Reference  # noqa: E402
from covfuse.training.survival_run import GROUPS, calibration_figure, km_figure, round_ticks  # noqa: E402


@pytest.mark.parametrize("end,expected", [(52.0, [0, 10, 20, 30, 40, 50]), (4910.0, [0, 1000, 2000, 3000, 4000]),
                                          (2.5, [0, 0.5, 1, 1.5, 2, 2.5])])
def test_time_ticks_are_round_numbers(end, expected):
    assert round_ticks(end) == pytest.approx(expected)


def _rossi(n: int | None = None):
    df = load_rossi()
    labels = np.c_[df["week"].to_numpy(float), df["arrest"].to_numpy(float)]
    risk = 0.09 * df["prio"].to_numpy(float) - 0.06 * df["age"].to_numpy(float)
    return (labels, risk) if n is None else (labels[:n], risk[:n])


def test_km_figure_counts_at_risk_at_its_ticks_marks_censoring_and_keeps_the_legend_off_the_curves():
    labels, risk = _rossi()
    group = np.searchsorted(np.quantile(risk, [1 / 3, 2 / 3]), risk, side="right")
    fig = km_figure(labels, group, "test", "week")
    ax, table = fig.axes
    ticks = list(table.get_xticks())
    assert ticks == [0, 10, 20, 30, 40, 50] and [t.get_text() for t in table.get_xticklabels()] == \
        ["0", "10", "20", "30", "40", "50"]
    shown = {(round(t.get_position()[0], 9), round(t.get_position()[1])): t.get_text() for t in table.texts}
    for g, name in enumerate(GROUPS):
        mask = group == g
        table_ = KaplanMeierFitter().fit(labels[mask, 0], labels[mask, 1]).event_table  # lifelines' own count
        for t in ticks:
            later = table_.index[table_.index >= t]
            expected = int(table_.loc[later[0], "at_risk"]) if len(later) else 0
            assert shown[(t, 2 - g)] == str(expected), (name, t)
        marks = [line for line in ax.lines if line.get_marker() == "+" and line.get_color() == f"C{g}"]
        assert len(marks) == 1
        np.testing.assert_array_equal(np.sort(marks[0].get_xdata()), np.sort(labels[mask & (labels[:, 1] == 0), 0]))
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the plot, over no curve
    assert "censored" in [t.get_text() for t in ax.get_legend().get_texts()]
    matplotlib.pyplot.close(fig)


def test_calibration_says_how_many_bins_it_draws_their_sizes_and_clips_nothing():
    labels, risk = _rossi(32)
    ref = Reference.from_training(*_rossi(), grid=[10.0, 30.0])
    fig = calibration_figure(ref, labels, risk, "test")
    assert "6 bins of predicted risk" in fig._suptitle.get_text()  # 32 people: at most 32 // 5 = 6 bins
    for ax, t in zip(fig.axes, (10, 30)):
        assert ax.get_title() == f"t = {t}: 6 bins"
        points = ax.collections[0]
        assert not points.get_clip_on()
        assert sum(int(a.get_text()) for a in ax.texts) == 32  # each bin's size beside its point
        x, y = points.get_offsets().T
        lo, hi = ax.get_ylim()
        assert lo < 0 and hi > 1 and ((y >= lo) & (y <= hi)).all() and (y == 1.0).any()  # observed 1.0 drawn whole
    matplotlib.pyplot.close(fig)
