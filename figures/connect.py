"""Mode connectivity figure: loss and accuracy along the straight line and the trained curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from figures.landscape import metric_label
from figures.style import new_figure

PATH_STYLE = {"line": ("C0", "--", "straight line"), "curve": ("C3", "-", "Bezier curve")}


def plot_connect(
    paths: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    split: str = "test",
    title: str | None = None,
) -> Figure:
    """Loss (left) and accuracy (right) of one split along each path, natural and robust.

    Args:
        paths: path name ("line", "curve") -> records ordered by t, each with ``t`` and the
            landscape's metric names (``test_loss``, ``test_adv_loss``, ``test_acc``, ...).
        split: "test" or "train".
        title: the pair's label (e.g. "AT -> AT-AWP").

    Reference: Garipov et al., NeurIPS 2018, Fig. 2; Zhao et al., ICLR 2020, Fig. 1.
    """
    fig, axes = new_figure(1, 2, width=4.2, height=3.2, squeeze=False)
    for ax, kind in zip(axes[0], ("loss", "acc")):
        for path, rows in paths.items():
            color, style, name = PATH_STYLE.get(path, ("C7", "-", path))
            t = [r["t"] for r in rows]
            for prefix, marker in (("", "o"), ("adv_", "s")):
                key = f"{split}_{prefix}{kind}"
                if key not in rows[0]:
                    continue
                kind_name = "robust" if prefix else "natural"
                ax.plot(
                    t,
                    [r[key] for r in rows],
                    color=color,
                    linestyle=style,
                    marker=marker,
                    markersize=3,
                    alpha=1.0 if prefix else 0.55,
                    label=f"{name}, {kind_name}",
                )
        ax.set_xlabel("t (0: first checkpoint, 1: second)")
        ax.set_ylabel(metric_label(f"{split}_{kind}"))
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
