"""The project's one seeding scheme: a seed derived from parts that name what it is for.

Every random draw of the project that is not the single use of a seed given by the user is
seeded by :func:`derive_seed` of the seed and strings and numbers naming the draw: training's
generators (``(seed, "train", "order")``, ``(seed, "train", "attack", rank)``, the weights'
initialization, the per-epoch evaluation's subsets and attacks), the landscape's directions
(``(seed, "direction", i)``) and per-point attacks (``(seed, "point", i, split)``), the
Hessian's batch attacks (``(seed, "hessian batch", b)``), the evaluation's attacks
(``(seed, "attack", k)``), and every unit and probe of the analyses (``(seed, "noise", k)``,
``(seed, "trace", i)``, ``(seed, "certify", index)``). A draw is then the same on every rank,
device and run, whatever was computed before it, and two purposes never share a stream.

A seed that serves one draw only seeds it directly: a command's ``--subset-seed`` choosing its
images, a direction's own seed inside :func:`landscape.directions.random_direction`, the gap's
attack (the same start on the train and the test side on purpose: equal images give a gap of
exactly zero). One exception, kept deliberately: the data's validation split and training
subset (``split_seed`` and ``split_seed + 1``, :func:`awp.data.load_data`) define which images
every existing checkpoint was trained on.

:data:`SEED_SCHEME` names this scheme in every stored result that can be continued (a run's
``config.json``, a surface file and its curvature map, every unit store of
:class:`analysis.store.SampleStore`): results made before the scheme was unified (``seed + k``
offsets in training, the directions and the evaluation's attacks; numpy ``SeedSequence`` for
the landscape's points and the Hessian's batches) carry no name, and continuing them is refused
by :func:`awp.config.check_same_settings` rather than mixed. They still read;
docs/architecture.md ("Seeds") lists what changed.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by generator_for alone: awp.config reads the key here
    import torch

# The name stored with resumable results; results of older versions have none.
SEED_SCHEME = "derive_seed"
# The key under which it is stored.
SEED_SCHEME_KEY = "seed_scheme"


def derive_seed(*parts: object) -> int:
    """A 60-bit seed from the parts' reprs: the same on every rank, device and run.

    ``derive_seed(0, "noise", 1)`` is ``blake2b("0|'noise'|1", 8 bytes)`` read little-endian,
    shifted right by 4 bits. The value is part of every stored result: do not change it.
    """
    digest = hashlib.blake2b("|".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 4


def generator_for(*parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))


def with_scheme(settings: dict) -> dict:
    """``settings`` with :data:`SEED_SCHEME` under :data:`SEED_SCHEME_KEY`, for storing."""
    return {**settings, SEED_SCHEME_KEY: SEED_SCHEME}
