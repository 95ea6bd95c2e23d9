"""``awp hist``, ``awp flatness``, ``awp gap`` and ``awp correlate``: the analysis shell.

Each command reads checkpoints (or result tables), runs the functional core of
:mod:`analysis`, prints a table, and writes JSON/CSV (and figures) atomically into a results
folder: ``--out``, or by default ``<run folder>/analysis`` when every checkpoint comes from
one run folder. ``flatness`` and ``gap`` keep every finished unit on disk and skip it when run
again with the same settings (:mod:`analysis.store`), and split their units across the ranks
of a torchrun job (``torchrun --nproc-per-node 4 -m awp.cli flatness ...``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp.config import AttackConfig, add_dataclass_arguments, dataclass_from_arguments, parse_number

if TYPE_CHECKING:  # the command modules import these lazily, so `awp` starts fast
    from analysis.flatness import FlatnessConfig, SigmaSearchConfig, WorstCaseConfig
    from analysis.gap import GapConfig
    from analysis.pacbayes import PacBayesConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared helpers
def _add_attack_arguments(p: argparse.ArgumentParser, base: AttackConfig) -> None:
    """Attack flags, prefixed so they cannot clash with the analysis configs' own fields."""
    g = p.add_argument_group("attack (regenerated on every evaluated model)")
    flags: list[tuple[str, str, Any, str]] = [
        ("--attack", "name", None, f"pgd | fgsm | cw (default: {base.name})"),
        ("--norm", "norm", None, f"linf | l2 (default: {base.norm})"),
        ("--eps", "eps", parse_number, "radius in [0,1] units (default: 8/255 linf, 0.5 l2)"),
        ("--attack-step-size", "step_size", parse_number, "step (default: eps/4, 2/255 at 8/255)"),
        ("--attack-steps", "steps", int, f"attack steps (default: {base.steps})"),
        ("--attack-restarts", "restarts", int, f"random restarts (default: {base.restarts})"),
        ("--attack-mode", "mode", None, f"model mode in the attack: eval | train ({base.mode})"),
    ]
    for flag, field, conv, help_ in flags:
        kw: dict[str, Any] = {"type": conv} if conv else {}
        metavar = field.split("_")[-1].upper()
        g.add_argument(
            flag, dest=f"attack_{field}", default=None, metavar=metavar, help=help_, **kw
        )


def _attack_from(args: argparse.Namespace, base: AttackConfig) -> AttackConfig:
    norm = args.attack_norm or base.norm
    eps = args.attack_eps
    if eps is None:
        eps = base.eps if norm == base.norm else (8 / 255 if norm == "linf" else 0.5)
    step = args.attack_step_size
    if step is None:
        step = base.step_size if (eps == base.eps and norm == base.norm) else eps / 4
    changes = {"norm": norm, "eps": eps, "step_size": step}
    for field in ("name", "steps", "restarts", "mode"):
        value = getattr(args, f"attack_{field}")
        if value is not None:
            changes[field] = value
    return dataclasses.replace(base, **changes)


def _add_common(p: argparse.ArgumentParser, *, out_help: str) -> None:
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _out_folder(out: Path | None, checkpoints: Sequence[Path]) -> Path:
    if out is not None:
        return out
    runs = {run_folder_of(c) for c in checkpoints}
    if len(runs) != 1:
        from awp.cli import CLIError

        raise CLIError(
            f"the checkpoints come from {len(runs)} run folders; name one results folder "
            f"with --out (e.g. --out results/analysis)"
        )
    return runs.pop() / "analysis"


def _check_files(paths: Sequence[Path]) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist (or is not a file)")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def write_json(path: Path, obj: Any) -> Path:
    """Atomic JSON (NaN/inf written as JSON's NaN/Infinity, which Python reads back)."""
    from awp.checkpoint import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Atomic CSV with the union of the rows' columns (first-seen order)."""
    from awp.checkpoint import atomic_write_text

    columns: dict[str, None] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, None)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def _rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


class _DataCache:
    """Datasets loaded once per command, keyed by their DataConfig."""

    def __init__(self, device: Any, *, progress: bool) -> None:
        self.device, self.progress, self._cache = device, progress, {}

    def get(self, ckpt: dict, *, dataset: str | None, data_root: str | None) -> tuple[Any, Any]:
        """(DataConfig, DataBundle) of a checkpoint's dataset, with the CLI's overrides."""
        from awp.config import from_dict
        from awp.data import DataConfig, load_data

        data_cfg = from_dict(DataConfig, (ckpt.get("config") or {}).get("data", {}))
        changes = {k: v for k, v in (("dataset", dataset), ("data_root", data_root)) if v}
        data_cfg = dataclasses.replace(data_cfg, **changes)
        if data_cfg not in self._cache:
            self._cache[data_cfg] = load_data(data_cfg, self.device, progress=self.progress)
        return data_cfg, self._cache[data_cfg]


def _device(name: str, info: Any) -> Any:
    import torch

    from awp.train import pick_device

    device = pick_device(name)
    if device.type == "cuda" and device.index is None and info.active:
        device = torch.device("cuda", info.local_rank)
    return device


def _identity(path: Path, ckpt: dict, sha: str) -> dict[str, Any]:
    from analysis.gap import method_of

    config = ckpt.get("config") or {}
    return {
        "checkpoint": str(path),
        "sha256": sha,
        "run": run_folder_of(path).name,
        "method": method_of(config),
        "epoch": int(ckpt.get("epoch", 0)),
    }


def _unique_labels(idents: Sequence[dict[str, Any]], given: Sequence[str] | None) -> list[str]:
    if given:
        if len(given) != len(idents):
            raise ValueError(f"--labels has {len(given)} names for {len(idents)} checkpoints")
        if len(set(given)) != len(given):
            raise ValueError(f"--labels {list(given)} repeats a name")
        return list(given)
    labels = [i["method"] for i in idents]
    if len(set(labels)) == len(labels):
        return labels
    labels = [f"{i['method']} ep{i['epoch']}" for i in idents]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{i['method']} {i['run']}/{Path(i['checkpoint']).stem}" for i in idents]


# --------------------------------------------------------------------------- hist
def _add_hist(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hist",
        help="per-layer weight statistics, KS/Wasserstein distances and histograms",
        description="Per-layer weight statistics of checkpoints (matched by layer name), "
        "KS statistic and Wasserstein-1 distance between them, overlaid histograms "
        "(rebuttal R#1 Q3) and statistics against depth.",
    )
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (.pt) to compare")
    p.add_argument("--labels", nargs="+", help="names in the legend (default: AT / AT-AWP ...)")
    p.add_argument(
        "--layers",
        nargs="+",
        default=["weights"],
        help="layers measured: weights (conv+linear, default) | all | conv | linear | norm | "
        "bias | first-conv | last-conv | first-linear | last-linear | names | glob patterns",
    )
    p.add_argument(
        "--plot-layers",
        nargs="+",
        default=["last-conv"],
        help="layers drawn as histograms, among --layers (default: last-conv, the rebuttal's)",
    )
    p.add_argument("--bins", type=int, default=80, help="histogram bins (default: 80)")
    p.add_argument(
        "--clip-quantile",
        type=float,
        default=None,
        help="histogram range: this quantile of |w| instead of the max (e.g. 0.999)",
    )
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: <run>/analysis when all checkpoints are from one run)",
    )
    p.set_defaults(func=_run_hist)


def _run_hist(args: argparse.Namespace) -> int:
    from analysis.weights import model_layers, select_layers, weight_report
    from awp.checkpoint import load_model, sha256_file
    from awp.cli import format_table

    _check_files(args.checkpoints)
    out = _out_folder(args.out, args.checkpoints)
    idents, weights = [], []
    for path in args.checkpoints:
        model, ckpt = load_model(path, device="cpu")
        idents.append(_identity(path, ckpt, sha256_file(path)))
        weights.append(model_layers(model, ["all"]))
    labels = _unique_labels(idents, args.labels)
    for ident, label in zip(idents, labels):
        ident["label"] = label
    report = weight_report(
        dict(zip(labels, weights)),
        layers=args.layers,
        bins=args.bins,
        clip_quantile=args.clip_quantile,
    )
    stats, comps = _rows(report.stats), _rows(report.comparisons)
    shown = ("label", "layer", "n", "norm", "std", "mean_abs", "skewness", "excess_kurtosis")
    print(format_table([{k: r[k] for k in shown} for r in stats]))
    if comps:
        print()
        print(
            format_table(
                comps, ("layer", "label_a", "label_b", "ks_statistic", "ks_pvalue", "wasserstein")
            )
        )
    write_json(
        out / "weights.json",
        {
            "checkpoints": idents,
            "layers": list(report.layers),
            "stats": stats,
            "comparisons": comps,
            "histograms": _rows(report.histograms),
        },
    )
    write_csv(out / "weights_stats.csv", stats)
    if comps:
        write_csv(out / "weights_compare.csv", comps)
    written = [out / "weights.json", out / "weights_stats.csv"]
    if not args.no_figures:
        from figures.style import save_figure
        from figures.weights import plot_layer_stats, plot_weight_histograms

        first = {n: weights[0][n] for n in report.layers}
        plot = select_layers(first, args.plot_layers)
        fig = plot_weight_histograms(report.histograms, layers=plot, comparisons=report.comparisons)
        written += save_figure(fig, out / "weights_hist")
        written += save_figure(plot_layer_stats(report.stats), out / "weights_depth")
    print(f"results: {out} ({', '.join(p.name for p in written)})")
    return 0


# --------------------------------------------------------------------------- flatness
def _add_flatness(sub: argparse._SubParsersAction) -> None:
    from analysis.flatness import FlatnessConfig, SigmaSearchConfig, WorstCaseConfig
    from analysis.pacbayes import PacBayesConfig

    p = sub.add_parser(
        "flatness",
        help="expected / worst-case PAC-Bayes flatness, sigma search, PAC-Bayes bound",
        description="E_u[rho(w+u)] - rho(w) with the attack regenerated on every w+u, for "
        "several alphas (a curve); optionally the worst case over ||v_l|| <= gamma ||w_l|| "
        "(--worst-case) and the largest alpha whose robust accuracy drop is <= a target "
        "(--sigma-search); with the PAC-Bayes bound's terms. Finished samples are kept in "
        "<out>/flatness/ and skipped when run again; under torchrun samples are split across "
        "ranks.",
    )
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (.pt)")
    p.add_argument("--labels", nargs="+", help="names in tables and figures")
    p.add_argument("--dataset", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    add_dataclass_arguments(p, FlatnessConfig, skip=("attack",))
    _add_attack_arguments(p, FlatnessConfig().attack)
    p.add_argument("--worst-case", action="store_true", help="also measure worst-case flatness")
    add_dataclass_arguments(p.add_argument_group("worst case (--worst-case)"), WorstCaseConfig)
    p.add_argument("--sigma-search", action="store_true", help="also run the sigma search")
    add_dataclass_arguments(
        p.add_argument_group("sigma search (--sigma-search)"), SigmaSearchConfig
    )
    add_dataclass_arguments(p.add_argument_group("PAC-Bayes bound"), PacBayesConfig)
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    _add_common(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=_run_flatness)


# Settings that only add or summarize units; every other one changes what a unit computes.
SETTINGS_EXCLUDED = ("alphas", "samples", "confidence")


def _settings(cfg: FlatnessConfig, data_cfg: Any, sha: str, n_split: int) -> dict[str, Any]:
    """What every stored unit depends on. Alphas, M and the worst-case settings are part of
    the unit keys, so a run with more of them reuses the finished units."""
    from awp.config import to_dict

    flat = {k: v for k, v in to_dict(cfg).items() if k not in SETTINGS_EXCLUDED}
    return {
        "checkpoint_sha256": sha,
        "data": to_dict(data_cfg),
        "split_size": n_split,
        "flatness": flat,
    }


def flatness_for_checkpoint(
    path: Path,
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    search: SigmaSearchConfig | None = None,
    pacbayes: PacBayesConfig | None = None,
    out: Path,
    label: str | None = None,
    device: Any = "cpu",
    data_cache: _DataCache | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    progress: bool = False,
    compute: Callable[..., dict] | None = None,
) -> dict[str, Any]:
    """Flatness of one checkpoint, resumable and sharded; returns its result (every rank).

    Finished units live in ``out/flatness/<stem>-<sha8>/samples.rank<r>.json``; the result
    (rows per alpha and per gamma, sigma search) is written there as ``result.json`` by the
    main rank. ``compute`` replaces :func:`analysis.flatness.compute_unit` (tests count calls).
    """
    from analysis import flatness as fl
    from analysis.gap import subset
    from analysis.pacbayes import PacBayesConfig, pac_bayes_bound
    from analysis.store import SampleStore, run_units
    from awp.checkpoint import load_model, sha256_file
    from awp.perturb import select_params
    from landscape.distributed import current

    info = current()
    pacbayes = pacbayes or PacBayesConfig()
    data_cache = data_cache or _DataCache(device, progress=progress)
    model, ckpt = load_model(path, device=device)
    sha = sha256_file(path)
    data_cfg, data = data_cache.get(ckpt, dataset=dataset, data_root=data_root)
    split = data.train if cfg.split == "train" else data.test
    x, y = subset(split, cfg.n_examples, seed=cfg.subset_seed)
    if len(y) == 0:
        raise ValueError(f"the {cfg.split} split of {data_cfg.dataset!r} is empty")
    ident = _identity(path, ckpt, sha)
    ident["label"] = label or ident["method"]
    folder = out / "flatness" / f"{path.stem}-{sha[:8]}"
    store = SampleStore(folder, meta=_settings(cfg, data_cfg, sha, len(split)), rank=info.rank)
    unit = compute or fl.compute_unit

    def run(keys: list[str], desc: str) -> dict[str, dict]:
        return run_units(
            keys,
            lambda k: unit(model, x, y, k, cfg=cfg),
            store=store,
            info=info,
            progress=progress,
            desc=desc,
        )

    records = run(fl.flatness_keys(cfg, worst), f"{ident['label']}: samples")
    expected, worst_rows = fl.summarize(records, cfg=cfg, worst=worst)
    search_result = None
    if search is not None:

        def drop(alpha: float) -> float:
            keys = fl.flatness_keys(cfg, None, alphas=[alpha])[1:]  # "base" is known
            recs = {"base": records["base"], **run(keys, f"sigma search a={alpha:.4g}")}
            est = fl.summarize(recs, cfg=cfg, alphas=[alpha])[0][0]
            return est.flatness

        search_result = fl.bisect_alpha(
            drop,
            target=search.target,
            low=search.alpha_low,
            high=search.alpha_high,
            depth=search.depth,
            tolerance=search.tolerance,
        )
    params = select_params(model, cfg.params)
    n_bound = pacbayes.n_bound or len(data.train)
    settings = {
        "noise": cfg.noise,
        "params": cfg.params,
        "split": cfg.split,
        "per_example": cfg.per_example,
        "attack": cfg.attack.describe(),
    }
    rows = []
    for e in expected:
        bound = pac_bayes_bound(
            params,
            alpha=e.alpha,
            mode=cfg.noise,
            n=n_bound,
            delta=pacbayes.delta,
            base_error=e.base_error,
            flatness=e.flatness,
        )
        b = {k: v for k, v in dataclasses.asdict(bound).items() if k not in dataclasses.asdict(e)}
        rows.append({**ident, "kind": "expected", **settings, **dataclasses.asdict(e), **b})
    for w in worst_rows:
        ascent = {"ascent_steps": worst.ascent_steps, "step_fraction": worst.step_fraction}
        rows.append({**ident, "kind": "worst", **settings, **ascent, **dataclasses.asdict(w)})
    if search_result is not None:
        rows.append(
            {
                **ident,
                "kind": "sigma_search",
                **settings,
                "alpha": search_result.alpha,
                "drop": search_result.drop,
                "target": search_result.target,
                "converged": search_result.converged,
            }
        )
    result = {
        **ident,
        "settings": _settings(cfg, data_cfg, sha, len(split)),
        "worst_case": dataclasses.asdict(worst) if worst is not None else None,
        "rows": rows,
        "sigma_search": dataclasses.asdict(search_result) if search_result else None,
    }
    if info.is_main:
        write_json(folder / "result.json", result)
    return result


def _collect_results(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((out / "flatness").glob("*/result.json")):
        rows += json.loads(path.read_text())["rows"]
    return rows


def _run_flatness(args: argparse.Namespace) -> int:
    from analysis.flatness import FlatnessConfig, SigmaSearchConfig, WorstCaseConfig
    from analysis.pacbayes import PacBayesConfig
    from awp.checkpoint import load_checkpoint, sha256_file
    from awp.cli import format_table
    from landscape.distributed import barrier, init_from_env

    _check_files(args.checkpoints)
    base = FlatnessConfig()
    cfg = dataclass_from_arguments(FlatnessConfig, args, base)
    cfg = dataclasses.replace(cfg, attack=_attack_from(args, base.attack))
    worst = dataclass_from_arguments(WorstCaseConfig, args) if args.worst_case else None
    search = dataclass_from_arguments(SigmaSearchConfig, args) if args.sigma_search else None
    pacbayes = dataclass_from_arguments(PacBayesConfig, args)
    out = _out_folder(args.out, args.checkpoints)
    info = init_from_env()
    device = _device(args.device, info)
    progress = not args.no_progress and info.is_main
    idents = []
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        idents.append(_identity(path, ckpt, sha256_file(path)))
    labels = _unique_labels(idents, args.labels)
    cache = _DataCache(device, progress=progress)
    results = []
    for path, label in zip(args.checkpoints, labels):
        results.append(
            flatness_for_checkpoint(
                path,
                cfg=cfg,
                worst=worst,
                search=search,
                pacbayes=pacbayes,
                out=out,
                label=label,
                device=device,
                data_cache=cache,
                dataset=args.dataset,
                data_root=args.data_root,
                progress=progress,
            )
        )
    barrier()
    if not info.is_main:
        return 0
    shown = []
    for res in results:
        for r in res["rows"]:
            if r["kind"] == "expected":
                shown.append(
                    {
                        "label": r["label"],
                        "alpha": r["alpha"],
                        "rho(w)": r["base_error"],
                        "E rho(w+u)": r["mean_error"],
                        "flatness": r["flatness"],
                        "ci": f"[{r['flatness_low']:.4f}, {r['flatness_high']:.4f}]",
                        "flat. loss": r["flatness_loss"],
                        "bound": r["bound_exact"],
                        "vacuous": r["vacuous_exact"],
                    }
                )
    print(
        f"expected flatness ({cfg.noise} noise, M={cfg.samples}, {cfg.split} "
        f"n={cfg.n_examples or 'all'}, {cfg.attack.describe()} regenerated on every w+u)"
    )
    print(format_table(shown))
    worst_shown = [
        {
            "label": r["label"],
            "gamma": r["gamma"],
            "rho(w)": r["base_error"],
            "rho(w+v)": r["worst_error"],
            "worst flatness": r["flatness"],
            "flat. loss": r["flatness_loss"],
        }
        for res in results
        for r in res["rows"]
        if r["kind"] == "worst"
    ]
    if worst_shown:
        print("\nworst-case flatness (projected ascent on v jointly with the attack)")
        print(format_table(worst_shown))
    for res in results:
        s = res["sigma_search"]
        if s is not None:
            note = "" if s["converged"] else " (not converged: widen the bracket or the depth)"
            print(
                f"sigma search {res['label']}: alpha = {s['alpha']:.5g}, drop {s['drop']:.4f}"
                f" (target {s['target']}){note}"
            )
    rows = _collect_results(out)
    write_json(out / "flatness.json", {"rows": rows})
    write_csv(out / "flatness.csv", rows)
    written = [out / "flatness.json", out / "flatness.csv"]
    if not args.no_figures:
        from figures.flatness import plot_flatness_curve
        from figures.style import save_figure

        curve = [r for r in rows if r["kind"] == "expected"]
        if curve:
            written += save_figure(plot_flatness_curve(curve), out / "flatness_curve")
    print(f"results: {out} ({', '.join(p.name for p in written)})")
    return 0


# --------------------------------------------------------------------------- gap
def _add_gap(sub: argparse._SubParsersAction) -> None:
    from analysis.gap import GapConfig

    p = sub.add_parser(
        "gap",
        help="robust generalization gap of many checkpoints",
        description="Robust accuracy on a fixed seeded train subset minus robust accuracy on "
        "a test subset (same attack, eval mode, no augmentation), and the robust loss gap, for "
        "every checkpoint given. Finished checkpoints are kept in <out>/gap/ and skipped when "
        "run again; under torchrun checkpoints are split across ranks.",
    )
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (.pt)")
    p.add_argument("--dataset", default=None, help="dataset (default: each checkpoint's)")
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    add_dataclass_arguments(p, GapConfig, skip=("attack",))
    _add_attack_arguments(p, GapConfig().attack)
    _add_common(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=_run_gap)


def gap_rows(
    checkpoints: Sequence[Path],
    *,
    cfg: GapConfig,
    out: Path,
    device: Any = "cpu",
    dataset: str | None = None,
    data_root: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Gap rows of the checkpoints (resumable, sharded); every finished row of ``out/gap``.

    Returns:
        (rows of ``checkpoints`` in order) -- every rank gets them.
    """
    from analysis.gap import robust_gap, subset
    from analysis.store import SampleStore, run_units
    from awp.checkpoint import load_model, sha256_file
    from awp.config import to_dict
    from landscape.distributed import current

    info = current()
    order = [sha256_file(p) for p in checkpoints]
    shas = dict(zip(order, checkpoints))
    meta = {"gap": to_dict(cfg), "dataset": dataset, "data_root": data_root}
    store = SampleStore(out / "gap", meta=meta, name="gap", rank=info.rank)
    cache = _DataCache(device, progress=progress)

    def compute(sha: str) -> dict[str, Any]:
        path = shas[sha]
        model, ckpt = load_model(path, device=device)
        data_cfg, data = cache.get(ckpt, dataset=dataset, data_root=data_root)
        xtr, ytr = subset(data.train, cfg.n_train, seed=cfg.subset_seed)
        xte, yte = subset(data.test, cfg.n_test, seed=cfg.subset_seed)
        rec = robust_gap(
            model, xtr, ytr, xte, yte, attack=cfg.attack, batch_size=cfg.batch_size, seed=cfg.seed
        )
        return {
            **_identity(path, ckpt, sha),
            "dataset": data_cfg.dataset,
            "attack": cfg.attack.describe(),
            **dataclasses.asdict(rec),
        }

    records = run_units(
        list(dict.fromkeys(order)),
        compute,
        store=store,
        info=info,
        progress=progress,
        desc="checkpoints",
    )
    return [records[sha] for sha in order]


def _run_gap(args: argparse.Namespace) -> int:
    from analysis.gap import GapConfig
    from analysis.store import SampleStore
    from awp.cli import format_table
    from awp.config import to_dict
    from landscape.distributed import barrier, init_from_env

    _check_files(args.checkpoints)
    base = GapConfig()
    cfg = dataclass_from_arguments(GapConfig, args, base)
    cfg = dataclasses.replace(cfg, attack=_attack_from(args, base.attack))
    out = _out_folder(args.out, args.checkpoints)
    info = init_from_env()
    device = _device(args.device, info)
    progress = not args.no_progress and info.is_main
    rows = gap_rows(
        args.checkpoints,
        cfg=cfg,
        out=out,
        device=device,
        dataset=args.dataset,
        data_root=args.data_root,
        progress=progress,
    )
    barrier()
    if not info.is_main:
        return 0
    print(f"robust generalization gap ({cfg.attack.describe()}, eval mode, seed {cfg.seed})")
    cols = ("run", "method", "epoch", "train_robust_acc", "test_robust_acc", "gap", "loss_gap")
    print(format_table([{c: r[c] for c in cols} for r in rows]))
    # The table on disk holds every checkpoint measured into this folder with these settings.
    meta = {"gap": to_dict(cfg), "dataset": args.dataset, "data_root": args.data_root}
    every = SampleStore(out / "gap", meta=meta, name="gap").load()
    order = [r["sha256"] for r in rows] + sorted(set(every) - {r["sha256"] for r in rows})
    table = [every[s] for s in order]
    write_json(out / "gap.json", {"settings": meta, "rows": table})
    write_csv(out / "gap.csv", table)
    print(f"results: {out} (gap.json, gap.csv; {len(table)} checkpoints)")
    return 0


# --------------------------------------------------------------------------- correlate
IDENTITY = ("checkpoint", "sha256", "run", "method", "epoch", "label")
TEXT_COLUMNS = ("checkpoint", "sha256", "run", "method", "label", "kind", "attack")


def _add_correlate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correlate",
        help="correlate a flatness measure with the robust gap across checkpoints",
        description="Join result tables (flatness.json, gap.json, or CSV) on the checkpoint's "
        "sha256 and report Kendall tau-b, Spearman and Pearson between two columns, with "
        "p-values and bootstrap intervals, pooled and per method; and a scatter figure.",
    )
    p.add_argument("tables", nargs="+", type=Path, help="result tables (.json or .csv)")
    p.add_argument("--x", default="flatness", help="column on x (default: flatness)")
    p.add_argument("--y", default="gap", help="column on y (default: gap)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="keep rows whose COL equals VALUE (tables without COL are not filtered), "
        "e.g. --where kind=expected --where alpha=0.1; repeatable",
    )
    p.add_argument("--by", default="method", help="grouping column (default: method)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default: the first table's)"
    )
    p.set_defaults(func=_run_correlate)


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a result table: JSON (a list, or an object with ``rows``) or CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    hint = "pass the flatness.json, gap.json or CSV tables that awp flatness / awp gap write"
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as fh:
                # Names and hashes stay text (an all-digit sha256 must not become a number).
                return [
                    {k: v if k in TEXT_COLUMNS else _parse_cell(v) for k, v in r.items()}
                    for r in csv.DictReader(fh)
                ]
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a JSON or CSV result table ({err}); {hint}") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(
            f"{path} holds no list of rows (expected a list or {{'rows': [...]}}); {hint}"
        )
    return rows


def _parse_cell(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool) or wanted.lower() in ("true", "false"):
        return str(value).lower() == wanted.lower()
    try:
        a, b = float(value), parse_number(wanted)
    except (TypeError, ValueError):
        return str(value) == wanted
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def join_tables(
    tables: Sequence[tuple[str, list[dict[str, Any]]]], where: Sequence[str]
) -> list[dict[str, Any]]:
    """Filter each table with ``where`` and inner-join them on ``sha256``.

    A column present in several tables with different values keeps the first table's value,
    and the later one is also kept as ``<table>.<column>``.

    Raises:
        ValueError: a malformed filter, rows without ``sha256``, or a table with several rows
            per checkpoint after filtering (the message says which column tells them apart).
    """
    filters = []
    for w in where:
        if "=" not in w:
            raise ValueError(f"--where {w!r}: write COL=VALUE, e.g. alpha=0.1")
        filters.append(tuple(w.split("=", 1)))
    joined: dict[str, dict[str, Any]] | None = None
    for name, rows in tables:
        kept = [r for r in rows if all(c not in r or _matches(r[c], v) for c, v in filters)]
        by_sha: dict[str, dict[str, Any]] = {}
        for r in kept:
            if "sha256" not in r:
                raise ValueError(f"{name}: rows have no 'sha256' column to join on")
            if r["sha256"] in by_sha:
                other = by_sha[r["sha256"]]
                differ = sorted(k for k in r if k in other and r[k] != other[k])[:4]
                raise ValueError(
                    f"{name} has several rows for checkpoint {r.get('checkpoint')} (they differ in "
                    f"{differ}); keep one with --where, e.g. --where {differ[0]}={r[differ[0]]}"
                    if differ
                    else f"{name} has duplicate rows for checkpoint {r.get('checkpoint')}"
                )
            by_sha[r["sha256"]] = r
        if joined is None:
            joined = {s: dict(r) for s, r in by_sha.items()}
            continue
        merged = {}
        for sha, row in joined.items():
            if sha not in by_sha:
                continue
            new = dict(row)
            for k, v in by_sha[sha].items():
                if k not in new:
                    new[k] = v
                elif new[k] != v and k not in IDENTITY:
                    new[f"{name}.{k}"] = v
            merged[sha] = new
        joined = merged
    return list((joined or {}).values())


def _run_correlate(args: argparse.Namespace) -> int:
    from analysis.correlate import correlate_records, fit_line
    from awp.cli import CLIError, format_table

    tables = [(p.stem, read_table(p)) for p in args.tables]
    rows = join_tables(tables, args.where)
    if len(rows) < 3:
        raise CLIError(
            f"{len(rows)} checkpoint(s) left after joining {', '.join(p.name for p in args.tables)}"
            f" with filters {args.where or 'none'}: correlations need at least 3"
        )
    for col in (args.x, args.y):
        if col not in rows[0]:
            raise CLIError(f"no column {col!r}; columns are {sorted(rows[0])}")
    cors = correlate_records(
        rows,
        x=args.x,
        y=args.y,
        by=args.by,
        n_boot=args.n_boot,
        confidence=args.confidence,
        seed=args.seed,
    )
    out = args.out or args.tables[0].resolve().parent
    cor_rows = _rows(cors)
    print(f"{args.y} against {args.x}: {len(rows)} checkpoints")
    print(
        format_table(
            [
                {
                    "group": c["group"],
                    "measure": c["measure"],
                    "n": c["n"],
                    "statistic": c["statistic"],
                    "p-value": c["pvalue"],
                    f"{c['confidence']:.0%} CI": f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]",
                }
                for c in cor_rows
            ]
        )
    )
    fit = fit_line([r[args.x] for r in rows], [r[args.y] for r in rows])
    keep = [*IDENTITY, args.x, args.y, args.by]
    points = [{k: r[k] for k in dict.fromkeys(keep) if k in r} for r in rows]
    write_json(
        out / "correlation.json",
        {
            "tables": [str(p) for p in args.tables],
            "where": args.where,
            "x": args.x,
            "y": args.y,
            "by": args.by,
            "fit": dataclasses.asdict(fit),
            "correlations": cor_rows,
            "points": points,
        },
    )
    write_csv(out / "correlation.csv", cor_rows)
    written = [out / "correlation.json", out / "correlation.csv"]
    if not args.no_figures:
        from figures.flatness import plot_flatness_vs_gap
        from figures.style import save_figure

        fig = plot_flatness_vs_gap(rows, x=args.x, y=args.y, by=args.by, correlations=cors)
        written += save_figure(fig, out / f"{args.x}_vs_{args.y}")
    print(f"results: {out} ({', '.join(p.name for p in written)})")
    return 0


# --------------------------------------------------------------------------- registry
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hist``, ``flatness``, ``gap`` and ``correlate`` to the ``awp`` command."""
    _add_hist(subparsers)
    _add_flatness(subparsers)
    _add_gap(subparsers)
    _add_correlate(subparsers)
