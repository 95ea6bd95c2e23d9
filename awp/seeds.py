"""The project's one seeding scheme: a seed derived from parts that name what it is for.

Every unit, point and probe of the analyses draws its randomness from a CPU generator seeded
by :func:`derive_seed` of strings and numbers naming it (``(seed, "noise", k)``,
``(seed, "trace", i)``, ``(seed, "certify", index)``), so a draw is the same on every rank,
device and run, whatever was computed before it, and two purposes never share a stream.

Schemes deliberately left in place (each says why in its docstring):

- training (:mod:`awp.train`) seeds its generators with ``seed + k`` offsets: switching would
  change every metric of a run (``metrics.jsonl`` must stay byte-identical for the same seed);
- :func:`sequence_seed` (numpy's ``SeedSequence`` of integers) gives the attack seeds of the
  Hessian's batches (:func:`awp.hessian.batch_seed`) and of the landscape's points
  (``landscape.surface.point_seed`` and its siblings): switching would change stored curvature
  units and surface files, which their resume checks would then mix with new ones.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 60-bit seed from the parts' reprs: the same on every rank, device and run.

    ``derive_seed(0, "noise", 1)`` is ``blake2b("0|'noise'|1", 8 bytes)`` read little-endian,
    shifted right by 4 bits. The value is part of every stored result: do not change it.
    """
    digest = hashlib.blake2b("|".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 4


def generator_for(*parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def sequence_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers by numpy's ``SeedSequence``.

    Kept for the seeds already made this way (the Hessian's batch attacks, the landscape's
    points): their stored results would change under :func:`derive_seed`. New code uses
    :func:`derive_seed`.
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
