"""The names of the attack table, in a module that imports nothing: ``awp eval --help`` and
the configs read them without torch, and :data:`awp.attacks.ATTACKS` adds each one's preset and
runner to exactly these names (an entry without a runner fails at import).

Each attack has a name (``pgd20``, what ``--attacks`` takes), a label (``PGD-20``, the report's
column) and a kind: the algorithm that runs it (``pgd`` for PGD-10 and PGD-20; the kinds of
iterative and one-step attacks are the names :class:`awp.config.AttackConfig` takes).
"""

from __future__ import annotations

#: (name, label, kind) of every named attack, in the order ``awp eval`` lists them.
ATTACK_TABLE: tuple[tuple[str, str, str], ...] = (
    ("natural", "natural", "natural"),
    ("fgsm", "FGSM", "fgsm"),
    ("pgd10", "PGD-10", "pgd"),
    ("pgd20", "PGD-20", "pgd"),
    ("cw20", "CW-20", "cw"),
    ("autoattack", "AutoAttack", "autoattack"),
)
#: name -> label
ATTACK_LABELS: dict[str, str] = {name: label for name, label, _ in ATTACK_TABLE}
#: every attack's name, in the table's order
EVAL_ATTACKS: tuple[str, ...] = tuple(ATTACK_LABELS)
#: the algorithms an :class:`awp.config.AttackConfig` names (no natural, no AutoAttack)
ATTACK_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(k for _, _, k in ATTACK_TABLE if k not in ("natural", "autoattack"))
)
#: the final evaluation of ``awp eval`` and of the demo; the sweep leaves out the last
DEFAULT_EVAL: tuple[str, ...] = ("natural", "pgd20", "cw20")
