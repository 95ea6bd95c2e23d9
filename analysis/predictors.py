"""Which flatness measure predicts the robust gap across methods, and each method against AT.

Two tables from records (no files, no models):

- :func:`rank_measures`: for each measure, Kendall's tau-b between the measure and the robust
  gap over every (method, seed, checkpoint), stratified by seed
  (:func:`analysis.replicates.stratified_kendall`: pairs of checkpoints of the same seed only,
  every method's checkpoints of that seed pooled), with a stratified bootstrap interval and a
  two-sided permutation p-value (the gap permuted within each seed). A measure "ranks" the
  gaps when its interval excludes zero; tau > 0 means a sharper (higher) measure goes with a
  larger gap. With ``within=("seed", "checkpoint")`` only checkpoints of the same seed and the
  same epoch are paired: the methods against each other at equal training time, without the
  drift of every measure and the gap along one run.
- :func:`compare_methods`: for each method and each outcome (best and last test robust
  accuracy, robust gap, the rise of the test robust loss after its minimum), the paired
  difference method minus reference over the seeds both have
  (:func:`analysis.replicates.paired_difference`: Student-t and percentile bootstrap
  intervals, none below three seeds), with the sentence it supports.

Reference: Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020
(Kendall's tau of a measure with the generalization gap across trained models); Stutz, Hein,
Schiele, "Relating Adversarially Robust Generalization to Flat Minima", ICCV 2021;
Andriushchenko et al., ICML 2023.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from analysis.replicates import paired_difference, stratified_kendall, verdict

#: The columns naming a checkpoint of :func:`rank_measures`' records.
ID_COLUMNS = ("method", "seed", "checkpoint")
#: What :func:`rank_measures` may pair within: checkpoints of one seed (every method and epoch),
#: or of one seed and one epoch (the methods only).
WITHIN = {("seed",): "seed", ("seed", "checkpoint"): "seed and checkpoint"}
#: The per-run outcomes :func:`compare_methods` compares by default: best and last test robust
#: accuracy, the robust gap (train minus test robust accuracy) and the rise of the test robust
#: loss after its minimum.
OUTCOMES = ("best", "last", "gap", "loss_rise")


@dataclass(frozen=True)
class MeasureRanking:
    """How one measure ranks the robust gap: stratified Kendall tau-b over every checkpoint.

    ``low``/``high`` is the percentile interval of the stratified bootstrap, ``pvalue`` the
    two-sided permutation p-value; ``n`` the checkpoints with both values, ``strata`` the
    groups paired within (seeds, or seeds x epochs: ``within``), ``pairs`` the pairs counted.
    ``note`` says why tau is undefined (NaN) or flags a degenerate bootstrap.
    """

    measure: str
    gap: str
    tau: float
    low: float
    high: float
    pvalue: float
    confidence: float
    n: int
    strata: int
    pairs: int
    n_perm: int
    n_boot: int
    note: str
    method: str
    within: str = "seed"

    @property
    def ranks(self) -> bool:
        """The interval excludes zero: the measure orders the gaps (either way round)."""
        return bool(self.low > 0 or self.high < 0)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        return math.nan
    return float(value)


def measure_columns(
    records: Sequence[Mapping[str, Any]], *, gap: str = "gap", exclude: Sequence[str] = ()
) -> list[str]:
    """The numeric columns of ``records`` other than the ids, the gap and ``exclude``, in the
    order they first appear."""
    skip = set(ID_COLUMNS) | {gap, *exclude}
    out: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in skip and k not in out and math.isfinite(_num(v)):
                out.append(k)
    return out


def rank_measures(
    records: Sequence[Mapping[str, Any]],
    *,
    measures: Sequence[str] | None = None,
    gap: str = "gap",
    n_perm: int = 5000,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    within: Sequence[str] = ("seed",),
) -> list[MeasureRanking]:
    """Kendall tau-b of every measure with the robust gap, stratified by seed (or by seed and
    checkpoint: ``within``).

    Args:
        records: one row per checkpoint: ``method``, ``seed``, ``checkpoint`` (its epoch or
            name), the robust gap under ``gap``, and the measures (missing or non-finite
            values leave that checkpoint out of that measure's tau).
        measures: the columns to rank (default: every other numeric column).
        gap: the robust gap's column.
        n_perm: permutations of the p-value; n_boot: bootstrap resamples of the interval.
        confidence: level of the interval. seed: seed of permutations and resamples.
        within: the id columns whose values a pair shares: ``("seed",)`` pairs every
            checkpoint of a seed; ``("seed", "checkpoint")`` only the methods' checkpoints of
            one seed at one epoch.

    Returns:
        One :class:`MeasureRanking` per measure, in the order of ``measures``.

    Raises:
        ValueError: a row lacks an id column or the gap (naming the row), a checkpoint appears
            twice, a named measure is in no row, or ``within`` is not one of :data:`WITHIN`.
    """
    key = tuple(within)
    if key not in WITHIN:
        raise ValueError(f"within={key} is not one of {sorted(WITHIN)}")
    _check_rows(records, (*ID_COLUMNS, gap), unique=ID_COLUMNS)
    names = list(measures) if measures is not None else measure_columns(records, gap=gap)
    present = set().union(*(r.keys() for r in records)) if records else set()
    absent = [m for m in names if m not in present]
    if absent:
        raise ValueError(f"measures {absent} are in no row; columns: {sorted(present)}")
    y = [_num(r[gap]) for r in records]
    strata = [tuple(str(r[k]) for k in key) for r in records]
    group = WITHIN[key]
    out = []
    for name in names:
        x = [_num(r.get(name)) for r in records]
        st = stratified_kendall(
            x, y, strata, n_perm=n_perm, seed=seed, n_boot=n_boot, confidence=confidence
        )
        note = st.interval_note
        if not math.isfinite(st.tau):
            note = (
                f"undefined: {st.n} checkpoints with {name} and {gap} in {st.strata} groups of "
                f"one {group} give {st.pairs} pairs, all tied in one of them"
            )
        out.append(
            MeasureRanking(
                measure=name,
                gap=gap,
                tau=st.tau,
                low=st.low,
                high=st.high,
                pvalue=st.pvalue,
                confidence=confidence,
                n=st.n,
                strata=st.strata,
                pairs=st.pairs,
                n_perm=st.n_perm,
                n_boot=n_boot,
                note=note,
                method=(
                    f"Kendall tau-b over pairs of checkpoints of the same {group}; two-sided "
                    f"p-value from permutations of the gap within each {group}; "
                    f"{confidence:.0%} percentile interval of a bootstrap within each {group}"
                ),
                within=group,
            )
        )
    return out


@dataclass(frozen=True)
class MethodOutcome:
    """One outcome of one method against the reference, paired by seed: method minus reference.

    ``t_low``/``t_high`` (the verdict) and ``boot_low``/``boot_high`` are None below three
    common seeds (``note`` says so); ``sentence`` is what the difference supports.
    """

    method: str
    reference: str
    outcome: str
    seeds: tuple[int, ...]
    reference_values: tuple[float, ...]
    method_values: tuple[float, ...]
    mean_reference: float
    mean_method: float
    mean_diff: float
    t_low: float | None
    t_high: float | None
    boot_low: float | None
    boot_high: float | None
    confidence: float
    note: str
    sentence: str

    @property
    def resolved(self) -> bool:
        """The t interval excludes zero."""
        return (
            self.t_low is not None
            and self.t_high is not None
            and (self.t_low > 0 or self.t_high < 0)
        )


def compare_methods(
    runs: Sequence[Mapping[str, Any]],
    *,
    reference: str = "AT",
    outcomes: Sequence[str] = OUTCOMES,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> list[MethodOutcome]:
    """Every other method's outcomes against ``reference``, as paired differences over seeds.

    Args:
        runs: one row per training run: ``method``, ``seed`` and the ``outcomes`` columns
            (a missing or non-finite value leaves that seed out of that outcome's pairs).
        reference: the method the others are compared with (AT).
        outcomes: the columns compared (default :data:`OUTCOMES`).
        confidence, n_boot, seed: as :func:`analysis.replicates.paired_difference`.

    Returns:
        One :class:`MethodOutcome` per method (in the order they first appear) and outcome.

    Raises:
        ValueError: a row lacks ``method`` or ``seed``, a (method, seed) appears twice, or the
            reference is not among the methods (the message lists them).
    """
    _check_rows(runs, ("method", "seed"), unique=("method", "seed"))
    methods = list(dict.fromkeys(str(r["method"]) for r in runs))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} has no run; methods: {methods}")
    by = {(str(r["method"]), r["seed"]): r for r in runs}
    out = []
    for method in (m for m in methods if m != reference):
        for outcome in outcomes:
            seeds, ref_values, values = [], [], []
            for (m, s), row in by.items():
                if m != method or (reference, s) not in by:
                    continue
                a, b = _num(by[reference, s].get(outcome)), _num(row.get(outcome))
                if math.isfinite(a) and math.isfinite(b):
                    seeds.append(s)
                    ref_values.append(a)
                    values.append(b)
            out.append(
                _outcome(
                    method, reference, outcome, seeds, ref_values, values, confidence, n_boot, seed
                )
            )
    return out


def _outcome(
    method: str,
    reference: str,
    outcome: str,
    seeds: list,
    ref_values: list[float],
    values: list[float],
    confidence: float,
    n_boot: int,
    seed: int,
) -> MethodOutcome:
    if not seeds:
        nan = float("nan")
        note = f"no seed has both {reference} and {method} with {outcome}"
        return MethodOutcome(
            method, reference, outcome, (), (), (), nan, nan, nan, None, None, None, None,
            confidence, note, f"{outcome}: {note}.",
        )  # fmt: skip
    order = sorted(range(len(seeds)), key=lambda i: int(seeds[i]))
    pd = paired_difference(
        outcome,
        [int(seeds[i]) for i in order],
        [ref_values[i] for i in order],
        [values[i] for i in order],
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
    return MethodOutcome(
        method=method,
        reference=reference,
        outcome=outcome,
        seeds=pd.seeds,
        reference_values=pd.at,
        method_values=pd.awp,
        mean_reference=pd.mean_at,
        mean_method=pd.mean_awp,
        mean_diff=pd.mean_diff,
        t_low=pd.t_low,
        t_high=pd.t_high,
        boot_low=pd.boot_low,
        boot_high=pd.boot_high,
        confidence=confidence,
        note=pd.note,
        sentence=verdict(pd, names=(reference, method)),
    )


def _check_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, unique: Sequence[str]
) -> None:
    """Every row has ``columns``, and no two rows share their ``unique`` values."""
    seen: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        missing = [c for c in columns if c not in r]
        if missing:
            raise ValueError(f"row {i} lacks {missing} (it has {sorted(r)})")
        ident = tuple(str(r[c]) for c in unique)
        if ident in seen:
            named = ", ".join(f"{c}={v}" for c, v in zip(unique, ident))
            raise ValueError(f"rows {seen[ident]} and {i} are the same {named}")
        seen[ident] = i
