"""RobustBench's model zoo by name: the models whose architecture this toolkit builds, the others
through robustbench's own classes, and the zoo's folder layout
(``<model_dir>/<dataset>/<threat_model>/<name>.pt``).

The robustbench package itself cannot serve here: its PyPI release (1.1.1) imports
``autoattack``, a module no PyPI package provides (``pyautoattack``, its declared dependency,
is imported as ``pyautoattack``), so ``import robustbench`` fails unless AutoAttack is
installed from git; it also needs ``pkg_resources`` and installs a top-level ``tests``
package. Its loader would also download a missing file. So the zoo's names are mapped to our
architectures here (RobustBench's ``WideResNet`` has our key layout; the unused ``sub_block1``
of TRADES-style WideResNets is dropped on load), and files are only ever read from the folder.
Every other CIFAR-10/100 Linf/L2 entry is built with the installed robustbench's own
architecture classes, its ``model_zoo`` imported without its top-level package
(:func:`load_robustbench`, :func:`robustbench_catalog`; docs/robustbench.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from awp.model_config import ModelConfig  # not awp.models: no torch for `awp CMD --help`

if TYPE_CHECKING:
    from awp.models import ModelSpec

ZOO_DATASETS = ("cifar10", "cifar100")
THREAT_MODELS = ("Linf", "L2")
DEFAULT_MODEL_DIR = "models"  # robustbench.utils.load_model's default

_WRN_28_10 = ModelConfig("wideresnet", depth=28, widen_factor=10)
_WRN_34_10 = ModelConfig("wideresnet", depth=34, widen_factor=10)
_AWP = "Wu, Xia, Wang, Adversarial Weight Perturbation Helps Robust Generalization, NeurIPS 2020"


@dataclass(frozen=True)
class ZooModel:
    """One model of RobustBench's zoo that this toolkit builds.

    Attributes:
        name: its zoo name; dataset, threat_model: where the zoo files it.
        model: our architecture with its weights' layout.
        num_classes: outputs.
        mean, std: the normalization the zoo's class applies inside, or None for raw [0, 1]
            input (RobustBench's plain ``WideResNet``).
        about: the paper and what the leaderboard lists (clean / AutoAttack accuracy).
    """

    name: str
    dataset: str
    threat_model: str
    model: ModelConfig
    num_classes: int = 10
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    about: str = ""

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec(self.num_classes, mean=self.mean, std=self.std)

    def path(self, model_dir: str | Path) -> Path:
        """Where RobustBench keeps its file under ``model_dir``."""
        return Path(model_dir) / self.dataset / self.threat_model / f"{self.name}.pt"


# From robustbench 1.1.1's model_zoo (cifar10.py, cifar100.py) and its README's leaderboard.
ZOO: tuple[ZooModel, ...] = (
    ZooModel(
        "Wu2020Adversarial_extra",
        "cifar10",
        "Linf",
        _WRN_28_10,
        about=f"{_AWP}: RST-AWP (AT-AWP with 500k extra images), 88.25% / 60.04% at 8/255",
    ),
    ZooModel(
        "Wu2020Adversarial",
        "cifar10",
        "Linf",
        _WRN_34_10,
        about=f"{_AWP}: TRADES-AWP, 85.36% / 56.17% at 8/255",
    ),
    ZooModel(
        "Wu2020Adversarial",
        "cifar10",
        "L2",
        _WRN_34_10,
        about=f"{_AWP}: 88.51% / 73.66% at L2 0.5",
    ),
    ZooModel(
        "Wu2020Adversarial",
        "cifar100",
        "Linf",
        _WRN_34_10,
        num_classes=100,
        # Wu2020AdversarialNet normalizes with these buffers (not stored in its file)
        mean=(0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        std=(0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
        about=f"{_AWP}: 60.38% / 28.86% at 8/255",
    ),
    ZooModel("Standard", "cifar10", "Linf", _WRN_28_10, about="standard training, no defense"),
    ZooModel("Standard", "cifar10", "L2", _WRN_28_10, about="standard training, no defense"),
)


def zoo_dataset(dataset: str | None) -> str:
    """The zoo's dataset for a ``--dataset``: cifar100 for cifar100, else cifar10 (the
    bundled sample and CIFAR-10 archives are CIFAR-10)."""
    return "cifar100" if dataset == "cifar100" else "cifar10"


def find_zoo_model(name: str, *, dataset: str = "cifar10", threat_model: str = "Linf") -> ZooModel:
    """The zoo model ``name`` of ``dataset`` and ``threat_model``.

    Raises:
        ValueError: one line: an unknown threat model, or a name this toolkit does not build
            (with the names it does).
    """
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"unknown threat model {threat_model!r}; choose Linf or L2")
    for m in ZOO:
        if (m.name, m.dataset, m.threat_model) == (name, dataset, threat_model):
            return m
    known = sorted(m.name for m in ZOO if (m.dataset, m.threat_model) == (dataset, threat_model))
    raise ValueError(
        f"RobustBench model {name!r} ({dataset}, {threat_model}) is not one this toolkit "
        f"builds; it builds {', '.join(known) or 'none there'} (docs/robustbench.md)"
    )


def zoo_file(model: ZooModel, model_dir: str | Path) -> Path:
    """The model's file in ``model_dir``.

    Raises:
        FileNotFoundError: one line naming the path expected (nothing is downloaded).
    """
    path = model.path(model_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"RobustBench model {model.name} ({model.dataset}, {model.threat_model}) is not "
            f"in --model-dir {model_dir}: expected {path} (nothing is downloaded here; put the "
            "zoo's file there)"
        )
    return path


def zoo_model_at(path: str | Path) -> ZooModel | None:
    """The zoo model a file is, by its place in the zoo's layout (``.../cifar10/Linf/NAME.pt``),
    or None."""
    p = Path(path)
    if p.suffix != ".pt" or len(p.parts) < 3:
        return None
    key = (p.stem, p.parent.parent.name, p.parent.name)
    return next((m for m in ZOO if (m.name, m.dataset, m.threat_model) == key), None)


# --------------------------------------------------------------------------- robustbench's zoo
# Every other CIFAR-10/100 Linf/L2 entry is built with the robustbench package's own
# architecture classes (plain nn.Modules). Its top-level package cannot be imported as it is
# (see the module docstring), so its ``model_zoo`` subpackage is imported under a stand-in
# parent that runs no ``robustbench/__init__.py``; the names registered for the import are
# removed afterwards, so a later ``import robustbench`` behaves as it would have.

ZOO_CLASSES = {"cifar10": 10, "cifar100": 100}
# Buffers some zoo classes define as constants and their files do not hold (RobustBench's
# loader accepts them missing): the class's own values are kept.
CLASS_CONSTANTS = ("mu", "sigma", "mean", "std")


def find_ours(name: str, *, dataset: str, threat_model: str) -> ZooModel | None:
    """The zoo model built with our architectures (:data:`ZOO`), or None."""
    return next(
        (m for m in ZOO if (m.name, m.dataset, m.threat_model) == (name, dataset, threat_model)),
        None,
    )


_ROBUSTBENCH: dict[tuple[str, str], dict[str, dict]] | None = None


def robustbench_zoo() -> dict[tuple[str, str], dict[str, dict]]:
    """(dataset, threat model) -> zoo name -> the installed robustbench's entry (its
    ``model`` factory and ``gdrive_id``), for CIFAR-10/100 and Linf/L2; read once.

    Raises:
        awp.extras.MissingDependencyError: robustbench is not installed, or its model zoo does
            not import (the module that failed is named).
    """
    global _ROBUSTBENCH
    if _ROBUSTBENCH is None:
        models, enums = _import_model_zoo()
        table: dict[tuple[str, str], dict[str, dict]] = {}
        for ds in ZOO_DATASETS:
            per = models.model_dicts.get(enums.BenchmarkDataset(ds), {})
            for tm in THREAT_MODELS:
                table[(ds, tm)] = dict(per.get(enums.ThreatModel(tm), {}))
        _ROBUSTBENCH = table
    return _ROBUSTBENCH


def _import_model_zoo():  # -> (robustbench.model_zoo.models, robustbench.model_zoo.enums)
    import importlib
    import importlib.machinery
    import importlib.util
    import sys
    import types

    from awp.extras import MissingDependencyError

    if "robustbench" in sys.modules:  # a robustbench that imports (e.g. from git): use it
        return (
            importlib.import_module("robustbench.model_zoo.models"),
            importlib.import_module("robustbench.model_zoo.enums"),
        )
    spec = importlib.util.find_spec("robustbench")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "RobustBench models by name need the optional package robustbench, which is not "
            "installed: pip install 'awp-landscape[robustbench]' (docs/robustbench.md)"
        )
    stand_in = types.ModuleType("robustbench")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = importlib.machinery.ModuleSpec("robustbench", None, is_package=True)
    stand_in.__spec__.submodule_search_locations = stand_in.__path__
    before = set(sys.modules)
    sys.modules["robustbench"] = stand_in
    try:
        return (
            importlib.import_module("robustbench.model_zoo.models"),
            importlib.import_module("robustbench.model_zoo.enums"),
        )
    except Exception as err:
        raise MissingDependencyError(
            f"RobustBench's model zoo does not import ({type(err).__name__}: {err}); its "
            "architectures need the packages robustbench depends on (docs/robustbench.md)"
        ) from err
    finally:
        for key in set(sys.modules) - before:
            if key == "robustbench" or key.startswith("robustbench."):
                del sys.modules[key]


def robustbench_files(name: str, entry: dict, *, dataset: str, threat_model: str,
                      model_dir: str | Path) -> list[Path]:  # fmt: skip
    """The files of a zoo entry in ``model_dir``: ``NAME.pt``, or ``NAME.pt_m<i>.pt`` for each
    member of an ensemble (RobustBench's names)."""
    path = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


def robustbench_status(name: str, entry: dict) -> str:
    """Why a zoo entry cannot be loaded by name here, or "" when it can."""
    if entry.get("gdrive_id") is None:
        return (
            "its weights come only from timm's hub (the zoo's factory calls timm.create_model("
            "..., pretrained=True)), and nothing is downloaded here"
        )
    return ""


def robustbench_entry(
    name: str, *, model_dir: str | Path, dataset: str = "cifar10", threat_model: str = "Linf"
) -> tuple[dict, list[Path]]:
    """A zoo entry of the installed robustbench and its files in ``model_dir``, checked (what
    :func:`load_robustbench` loads; called before any output is claimed, so a bad name or a
    missing file is refused first).

    Raises:
        ValueError: an unknown name (with the nearest ones) or an entry whose weights only come
            from a hub; FileNotFoundError: a missing file (the path expected);
            awp.extras.MissingDependencyError: robustbench is not installed.
    """
    import difflib

    if threat_model not in THREAT_MODELS or dataset not in ZOO_DATASETS:
        raise ValueError(
            f"RobustBench models by name are the CIFAR-10/100 Linf/L2 ones; got {dataset}, "
            f"{threat_model}"
        )
    from awp.extras import MissingDependencyError

    try:
        table = robustbench_zoo()[(dataset, threat_model)]
    except MissingDependencyError as err:
        ours = sorted(m.name for m in ZOO if (m.dataset, m.threat_model) == (dataset, threat_model))
        raise MissingDependencyError(
            f"RobustBench model {name!r} ({dataset}, {threat_model}) is not one built with this "
            f"toolkit's architectures ({', '.join(ours) or 'none there'}); {err}"
        ) from err
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=5, cutoff=0.5)
        near = f"; the nearest: {', '.join(close)}" if close else ""
        raise ValueError(
            f"RobustBench model {name!r} is not in the zoo of the installed robustbench "
            f"({dataset}, {threat_model}){near} (docs/robustbench.md)"
        )
    entry = table[name]
    why = robustbench_status(name, entry)
    if why:
        raise ValueError(f"RobustBench model {name} ({dataset}, {threat_model}) cannot be loaded "
                         f"by name: {why}")  # fmt: skip
    files = robustbench_files(
        name, entry, dataset=dataset, threat_model=threat_model, model_dir=model_dir
    )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"RobustBench model {name} ({dataset}, {threat_model}) is not in --model-dir "
            f"{model_dir}: expected {', '.join(missing)} (nothing is downloaded here; put the "
            "zoo's file there)"
        )
    return entry, files


def load_robustbench(
    name: str, *, model_dir: str | Path, dataset: str = "cifar10", threat_model: str = "Linf"
):  # -> tuple[nn.Module, dict]
    """A zoo model built with robustbench's own architecture class, its weights read from
    ``model_dir`` in the zoo's layout (never downloaded): the state dict under ``state_dict``
    (or ``last``) or raw, ``module.``/``model.`` prefixes removed, the class's constant
    normalization buffers kept when the file lacks them, as robustbench's loader does; every
    other missing or unexpected key is refused with the keys listed.

    Returns:
        (the model in eval mode on the CPU, what was loaded: path, sha256, layout, files).

    Raises:
        ValueError: an unknown name (with the nearest ones), an entry whose weights only come
            from a hub, an architecture that does not build; FileNotFoundError: a missing file
            (the path expected); awp.checkpoint.CheckpointError: weights that do not fit.
    """
    import torch

    from awp.checkpoint import adapt_state_dict, load_state_dict_checked, read_state_dict
    from awp.io import sha256_file

    entry, files = robustbench_entry(
        name, model_dir=model_dir, dataset=dataset, threat_model=threat_model
    )
    try:
        model = entry["model"]()
    except Exception as err:
        raise ValueError(
            f"RobustBench model {name}: its architecture does not build here "
            f"({type(err).__name__}: {err})"
        ) from None
    if len(files) > 1 and not isinstance(getattr(model, "models", None), torch.nn.ModuleList):
        raise ValueError(
            f"RobustBench model {name} combines several networks its own way (not an ensemble "
            "of .models); it cannot be loaded by name here"
        )
    members = list(model.models) if len(files) > 1 else [model]
    layouts = []
    for member, path in zip(members, files):
        state, info = read_state_dict(path)
        adapted, _ = adapt_state_dict(state, member)
        own = member.state_dict()
        for key in [k for k in own if k not in adapted]:
            if key.rsplit(".", 1)[-1] in CLASS_CONSTANTS:
                adapted[key] = own[key]
        load_state_dict_checked(member, adapted, source=f"RobustBench model {name} ({path})")
        layouts.append(info["layout"])
    shas = [sha256_file(f) for f in files]
    sha = shas[0] if len(shas) == 1 else _combined(shas)
    model.eval()
    return model, {
        "path": str(files[0]),
        "files": [str(f) for f in files],
        "sha256": sha,
        "layout": layouts[0],
        "architecture": type(model).__name__,
    }


def _combined(shas: list[str]) -> str:
    import hashlib

    return hashlib.sha256("|".join(shas).encode()).hexdigest()


def robustbench_catalog() -> list[dict[str, str]]:
    """Every CIFAR-10/100 Linf/L2 entry of the installed robustbench: dataset, threat model,
    name, architecture (its class, built on the meta device: no memory, no download), and
    why it cannot be loaded by name ("" when it can). Entries our architectures build
    (:data:`ZOO`) are marked "ours"."""
    import torch

    rows = []
    for (ds, tm), table in robustbench_zoo().items():
        for name, entry in table.items():
            why = robustbench_status(name, entry)
            arch = ""
            if not why:
                try:
                    with torch.device("meta"):
                        arch = type(entry["model"]()).__name__
                except Exception as err:
                    why = f"its architecture does not build ({type(err).__name__}: {err})"
            if find_ours(name, dataset=ds, threat_model=tm) is not None:
                arch += " (ours)"
            rows.append(
                {"dataset": ds, "threat_model": tm, "name": name, "architecture": arch, "why": why}
            )
    return rows
