"""The paired-differences figure: one point per seed, the mean, the t interval's ends."""

import dataclasses

import numpy as np
import pytest

from analysis.replicates import paired_difference, verdict


def _measures():
    three = paired_difference("test robust acc", [0, 1, 2], [0.40, 0.42, 0.41], [0.45, 0.44, 0.47])
    five = paired_difference("gap", [0, 1, 2, 3, 4], [0.3, 0.2, 0.25, 0.3, 0.2], [0.1] * 5)
    two = paired_difference("flatness", [0, 1], [0.01, 0.02], [0.015, 0.01])
    # As replicates.json writes them: dicts with a verdict (None for intervals it lacks).
    return [dataclasses.asdict(m) | {"verdict": verdict(m)} for m in (three, five, two)]


def _interval_lines(ax):
    return [line for line in ax.lines if line.get_linewidth() == 2]


def test_each_panel_has_the_seeds_the_mean_and_the_t_interval():
    from matplotlib.collections import PathCollection

    from figures.replicates import plot_paired_differences

    measures = _measures()
    fig = plot_paired_differences(measures)
    assert len(fig.axes) == 3
    for ax, m in zip(fig.axes, measures):
        points = [c for c in ax.collections if isinstance(c, PathCollection)]
        offsets = np.concatenate([c.get_offsets() for c in points])
        assert len(offsets) == len(m["seeds"])
        d = np.array(m["awp"]) - np.array(m["at"])
        assert sorted(offsets[:, 0]) == pytest.approx(sorted(d))  # the differences, per seed
        mean = [line for line in ax.lines if line.get_marker() == "D"]
        assert mean and mean[0].get_xdata()[0] == pytest.approx(d.mean())
        lines = _interval_lines(ax)
        if m["t_low"] is None:
            assert lines == [] and "no interval possible with 2 seeds" in ax.get_title(loc="left")
        else:
            (line,) = lines
            assert list(line.get_xdata()) == pytest.approx([m["t_low"], m["t_high"]])
            lo, hi = ax.get_xlim()
            assert lo <= min(m["t_low"], 0) and hi >= max(m["t_high"], 0)  # zero in view
            assert "95% t interval" in ax.get_title(loc="left")


def test_bad_records_are_refused_with_the_fix():
    from figures.replicates import plot_paired_differences

    with pytest.raises(ValueError, match="no measures"):
        plot_paired_differences([])
    bad = _measures()[0]
    del bad["t_low"]
    with pytest.raises(ValueError, match=r"lacks \['t_low'\].*replicates.json"):
        plot_paired_differences([bad])
    short = _measures()[0] | {"at": [0.4]}
    with pytest.raises(ValueError, match="3 seeds but 1 AT"):
        plot_paired_differences([short])
