"""What the user sees: one-line errors, tables, the per-epoch line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from awp.method_config import WEIGHT_METHOD_SPECS


class CLIError(Exception):
    """A user error the CLI reports as one line, without a traceback."""


def say(message: str) -> None:
    """Print a line to stdout now (also into a log file that is tailed)."""
    print(message, flush=True)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of dict rows (floats with 4 digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep, *("  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body)])


def epoch_line(r: Mapping[str, Any]) -> str:
    """One line per epoch for the terminal."""
    parts = [
        f"epoch {r['epoch']:3d}",
        f"lr {r['lr']:.4f}",
        f"loss {r['train_loss']:.4f}",
        f"train acc {r['train_acc']:.3f}",
    ]
    for key, label in (
        ("train_robust_acc", "train rob"),
        ("val_robust_acc", "val rob"),
        ("test_nat_acc", "test nat"),
        ("test_robust_acc", "test rob"),
        ("ema_test_robust_acc", "EMA test rob"),
        ("swa_test_robust_acc", "SWA test rob"),
    ):
        if key in r:
            parts.append(f"{label} {r[key]:.3f}")
    parts.append(f"{r['seconds']:.0f}s+{r['eval_seconds']:.0f}s")
    # The weight perturbation that ran this epoch ([AWP], [SAM], [ASAM], [RWP]).
    on = [name.upper() for name in WEIGHT_METHOD_SPECS if r.get(name)]
    return " | ".join(parts) + "".join(f" [{name}]" for name in on)
