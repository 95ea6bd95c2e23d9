"""RobustBench's model zoo by name: the models whose architecture this toolkit builds, and the
zoo's folder layout (``<model_dir>/<dataset>/<threat_model>/<name>.pt``).

The robustbench package itself cannot serve here: its PyPI release (1.1.1) imports
``autoattack``, a module no PyPI package provides (``pyautoattack``, its declared dependency,
is imported as ``pyautoattack``), so ``import robustbench`` fails unless AutoAttack is
installed from git; it also needs ``pkg_resources`` and installs a top-level ``tests``
package. Its loader would also download a missing file. So the zoo's names are mapped to our
architectures here (RobustBench's ``WideResNet`` has our key layout; the unused ``sub_block1``
of TRADES-style WideResNets is dropped on load), and files are only ever read from the folder.
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
