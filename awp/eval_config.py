"""What ``awp eval`` measures (:class:`EvalConfig`), in a module that imports no torch, so
that ``awp eval --help`` is built without it; :mod:`awp.evaluate` re-exports it.

The attack names come from :mod:`awp.attack_names`, the torch-free half of the attack table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from awp.attack_names import DEFAULT_EVAL, EVAL_ATTACKS
from awp.config import check_bounds, check_eps, opt

if TYPE_CHECKING:
    from awp.attacks import Attack as EvalAttack

SPLITS = ("train", "val", "test")
AA_VERSIONS = ("standard", "plus", "rand")
# "original": Croce & Hein's code as PyPI serves it (pyautoattack), what RobustBench's numbers
# come from; "torchattacks": Kim's reimplementation.
AA_IMPLEMENTATIONS = ("original", "torchattacks")


@dataclass(frozen=True)
class EvalConfig:
    """What ``awp eval`` measures: attacks, threat model, points, batching, seeds."""

    attacks: tuple[str, ...] = opt(DEFAULT_EVAL, f"attacks, in order: {' | '.join(EVAL_ATTACKS)}")
    norm: str = opt("linf", "threat model: linf | l2")
    eps: float | None = opt(
        None, "radius in [0,1] pixel units", shown="8/255 linf, 0.5 l2", bounds=(0, None)
    )
    step_size: float | None = opt(
        None,
        "PGD/CW step size",
        shown="eps/4",
        bounds=(0, None),
        flag="attack_step_size",
        old=("step_size",),
    )
    restarts: int = opt(
        1,
        "random restarts of PGD-20 and CW-20 (worst case kept)",
        bounds=(1, 1000),
        why="every restart repeats the whole attack",
        flag="attack_restarts",
        old=("restarts",),
    )
    cascade: bool = opt(True, "attack only the points still robust (AutoAttack's way)")
    split: str = opt("test", "split: train | val | test")
    n: int = opt(
        0,
        "seeded subset of the split (0 = the whole split)",
        bounds=(0, None),
        flag="n_examples",
        old=("n",),
    )
    batch_size: int = opt(256, "examples per batch", bounds=(1, None))
    subset_seed: int = opt(0, "seed of the subset (--n-examples)", bounds=(0, None))
    seed: int = opt(0, "seed of the attacks' random starts", bounds=(0, None))
    aa_version: str = opt("standard", "AutoAttack version: standard | plus | rand")
    aa_implementation: str = opt(
        "original",
        "AutoAttack's code: original (Croce & Hein's, packaged as pyautoattack; RobustBench's "
        "numbers) | torchattacks (a reimplementation)",
    )

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """An eval_config written before ``subset_seed``: its ``seed`` seeded the subset too."""
        if "subset_seed" not in data and "seed" in data:
            data = {**data, "subset_seed": data["seed"]}
        return data

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        check_bounds(self)
        unknown = [a for a in self.attacks if a not in EVAL_ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(
                f"unknown attacks {unknown or '(none given)'}; "
                f"choose from {', '.join(EVAL_ATTACKS)}"
            )
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks {self.attacks} repeat a name")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; choose linf or l2")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        check_eps(self.radius, self.norm)
        if self.step_size is not None:
            check_eps(self.step_size, self.norm, "step_size")
        if self.restarts < 1 or self.batch_size < 1 or self.n < 0:
            raise ValueError("need restarts >= 1, batch_size >= 1 and n >= 0")
        if self.aa_version not in AA_VERSIONS:
            raise ValueError(
                f"unknown AutoAttack version {self.aa_version!r}; one of {AA_VERSIONS}"
            )
        if self.aa_implementation not in AA_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown AutoAttack implementation {self.aa_implementation!r}; one of "
                f"{AA_IMPLEMENTATIONS}"
            )

    @property
    def radius(self) -> float:
        """eps, or the threat model's default (8/255 for linf, 0.5 for l2)."""
        if self.eps is not None:
            return self.eps
        return 8 / 255 if self.norm == "linf" else 0.5

    def attack_table(self) -> dict[str, EvalAttack]:
        """name -> attack config, in order (None = natural): each the preset of its entry in
        :data:`awp.attacks.ATTACKS` under this threat model. Eval mode throughout."""
        eps = self.radius
        settings = dict(
            norm=self.norm,
            eps=eps,
            step_size=self.step_size if self.step_size is not None else eps / 4,
            restarts=self.restarts,
            version=self.aa_version,
            implementation=self.aa_implementation,
        )
        from awp.attacks import ATTACKS  # here: the table's runners import torch

        return {name: ATTACKS[name].configured(**settings) for name in self.attacks}
