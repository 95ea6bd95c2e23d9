"""``awp landscape`` under torchrun: 2 gloo processes on the CPU give a 1-process run's values."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from awp.checkpoint import save_checkpoint
from awp.config import to_dict
from awp.data import DataConfig, load_data
from awp.distributed import shard
from awp.models import ModelSpec, build_model
from awp_landscape.cli import main
from landscape.storage import read_surface

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(name="smallcnn", num_classes=10, width=0.25)


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    # conftest pins one thread, the same count as each torchrun worker (OMP_NUM_THREADS=1).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWP_CACHE", str(tmp_path_factory.mktemp("cache")))
        load_data(DataConfig(), progress=False)  # decode once; the workers read the cache
        yield


def checkpoint(path: Path, seed: int, awp: bool) -> Path:
    torch.manual_seed(seed)
    model = build_model(SPEC)
    config = {"method": "at", "awp": awp, "data": to_dict(DataConfig())}
    return save_checkpoint(path, model=model, model_spec=to_dict(SPEC), config=config)


def test_pending_points_are_sharded_once_each():
    pending = [0, 2, 3, 5, 6, 7, 9]  # e.g. a resumed file: points 1, 4, 8 already done
    shards = [shard(pending, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == pending
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    ckpts = [checkpoint(tmp_path / "at.pt", 0, False), checkpoint(tmp_path / "awp.pt", 1, True)]
    # 7 points: one rank gets 4, the other 3 (an idle last round); fixed mode and BN recompute
    # exercise every per-point path.
    args = ["--x=-1:1:7", "--n-test", "24", "--n-train", "16", "--attack-steps", "2"]
    args += ["--batch-size", "16", "--fixed", "--bn", "recompute", "--n-bn", "32", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        "-m",
        "awp_landscape",
        "landscape",
        *map(str, ckpts),
        "--out",
        str(tmp_path / "two"),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert main(["landscape", *map(str, ckpts), "--out", str(tmp_path / "one"), *args]) == 0
    for label in ("AT", "AT-AWP"):
        two = read_surface(tmp_path / "two" / f"{label}.h5")
        one = read_surface(tmp_path / "one" / f"{label}.h5")
        assert two.computed.all() and set(two.values) == set(one.values)
        for name in one.values:
            assert np.array_equal(two.values[name], one.values[name]), (label, name)
