"""``awp hessian`` end to end (tables, figures, resume, correlate, torchrun) and ``awp landscape
--direction hessian`` (stored eigenvectors, resume)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.curvature import HessianConfig, compute_unit
from analysis.gap import subset
from analysis.tables import IDENTITY
from awp.checkpoint import load_model, save_checkpoint
from awp.config import AttackConfig, to_dict
from awp.data import DataConfig, load_data
from awp.hessian import LossHessian, loss_batches
from awp.io import sha256_file
from awp.models import ModelSpec, build_model
from awp.perturb import select_params
from awp.seeds import derive_seed
from awp_landscape.cli import main
from awp_landscape.inputs import Inputs
from awp_landscape.measures.curvature import curvature_of_checkpoint
from landscape.directions import hessian_directions
from landscape.storage import read_directions, read_surface, write_surface
from landscape.surface import hessian_seed

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(name="smallcnn", num_classes=10, width=0.25)
FAST = ["--n-examples", "20", "--batch-size", "8", "--attack-steps", "2", "--no-progress"]
FAST += ["--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    # A private cache for the decoded sample (conftest pins one thread, also for subprocesses).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWP_CACHE", str(tmp_path_factory.mktemp("cache")))
        load_data(DataConfig(), progress=False)  # decode once; subprocesses read the cache
        yield


def make_checkpoint(path: Path, *, seed: int, awp: bool, epoch: int = 1) -> Path:
    torch.manual_seed(seed)
    model = build_model(SPEC)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    config = {"method": "at", "awp": awp, "data": to_dict(DataConfig())}
    return save_checkpoint(path, model=model, model_spec=to_dict(SPEC), config=config, epoch=epoch)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return [
        make_checkpoint(d / "at.pt", seed=0, awp=False),
        make_checkpoint(d / "awp.pt", seed=1, awp=True),
        make_checkpoint(d / "at2.pt", seed=2, awp=False, epoch=2),
    ]


MEASURE = ["--top-k", "2", "--trace", "--probes-min", "3", "--probes-max", "6", "--density"]
MEASURE += ["--slq-runs", "2", "--slq-steps", "6", "--per-layer", "--lanczos-vectors", "6"]
MEASURE += ["--power"]


def test_hessian_writes_rows_keyed_by_checkpoint_and_reruns_nothing(ckpts, tmp_path, capsys):
    out = tmp_path / "h"
    args = ["curvature", *map(str, ckpts[:2]), "--labels", "AT", "AT-AWP", *MEASURE]
    args += ["--out", str(out), *FAST]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "lambda_1" in text and "AT-AWP" in text and "top Hessian eigenvalue" in text
    data = json.loads((out / "curvature.json").read_text())
    rows = data["rows"]
    assert [r["label"] for r in rows] == ["AT", "AT-AWP"]  # folders at-*, awp-*
    for r in rows:
        assert all(c in r for c in IDENTITY)
        assert r["sha256"] in {sha256_file(c) for c in ckpts[:2]}
        assert r["top_eigenvalue"] >= r["eigenvalue_2"] and r["eig_converged"]
        assert r["trace_low"] <= r["trace"] <= r["trace_high"] and 3 <= r["trace_probes"] <= 6
        assert r["n"] == 20 and r["loss_type"] == "adv" and r["hvps"] > 0
        assert r["power_hvps"] > 1 and np.isfinite(r["power_top_eigenvalue"])
    layers = data["layers"]
    assert [x["layer"] for x in layers[:3]] == ["conv1.weight", "conv2.weight", "linear.weight"]
    assert all(x["trace"] is not None and x["top_eigenvalue"] is not None for x in layers)
    for name in ("curvature.csv", "curvature_layers.csv", "curvature_density.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("curvature_eigenvalues.png", "curvature_layers.png"):
        assert (out / name).stat().st_size > 0, name
    stores = sorted((out / "curvature").glob("*/samples.rank0.json"))
    assert len(stores) == 2
    stamps = [s.stat().st_mtime_ns for s in stores]
    assert main(args) == 0  # everything finished: nothing is recomputed or rewritten
    assert [s.stat().st_mtime_ns for s in stores] == stamps
    assert json.loads((out / "curvature.json").read_text())["rows"] == rows
    # A tighter stopping rule only adds probes: the finished units are reused.
    done = set(json.loads(stores[0].read_text())["records"])
    more = [*args, "--probes-max", "9", "--trace-rel-tol", "1e-9"]
    assert main(more) == 0
    now = set(json.loads(stores[0].read_text())["records"])
    assert done < now and all(k.startswith("trace|") for k in now - done)
    # Other settings are refused, and nothing on disk is lost.
    before = stores[0].read_text()
    capsys.readouterr()
    assert main([*args, "--loss", "clean"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert stores[0].read_text() == before
    assert main(["curvature", str(ckpts[0]), "--top-k", "0", "--out", str(out), *FAST]) == 2
    assert "nothing to measure" in capsys.readouterr().err


def test_rows_feed_correlate(ckpts, tmp_path, capsys):
    out = tmp_path / "c"
    paths = list(map(str, ckpts))
    # `awp hessian`: the command's earlier name still runs it
    args = ["hessian", *paths, "--top-k", "1", "--lanczos-vectors", "4", "--out", str(out)]
    assert main([*args, *FAST, "--no-figures"]) == 0
    gap = ["gap", *paths, "--n-train", "8", "--n-test", "8", "--attack-steps", "1"]
    assert main([*gap, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    tables = [str(out / "curvature.json"), str(out / "gap.json")]
    assert main(["correlate", *tables, "--x", "top_eigenvalue", "--n-boot", "20"]) == 0
    assert "kendall" in capsys.readouterr().out
    res = json.loads((out / "correlation.json").read_text())
    assert res["x"] == "top_eigenvalue" and len(res["points"]) == 3


def test_killed_then_resumed_equals_an_uninterrupted_run(ckpts, tmp_path):
    cfg = HessianConfig(
        n_examples=16, batch_size=8, attack=AttackConfig(steps=2), top_k=2, lanczos_vectors=5,
        trace=True, probes_min=3, probes_max=6, density=True, slq_runs=2, slq_steps=5,
        per_layer=True, power=True,
    )  # fmt: skip

    def counting(stop_after=None):
        calls = []

        def compute(problem, key):
            calls.append(key)
            if stop_after is not None and len(calls) > stop_after:
                raise KeyboardInterrupt  # killed while computing this unit
            return compute_unit(problem, key)

        return compute, calls

    loaded = Inputs(torch.device("cpu")).load(ckpts[1])
    killed, first = counting(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        curvature_of_checkpoint(loaded, cfg, folder=tmp_path / "a", compute=killed)
    again, calls = counting()
    resumed = curvature_of_checkpoint(loaded, cfg, folder=tmp_path / "a", compute=again)
    assert not set(first[:4]) & set(calls) and first[4] in calls
    fresh = curvature_of_checkpoint(loaded, cfg, folder=tmp_path / "b")
    # The same numbers as an uninterrupted run, to the last bit.
    assert resumed == fresh
    # base, eigs, power, 2 SLQ runs, 3 layers and the probes: each computed once in all.
    assert len(first) - 1 + len(calls) == resumed["row"]["trace_probes"] + 8


@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process(ckpts, tmp_path):
    args = [str(ckpts[0]), "--top-k", "2", "--trace", "--probes-min", "3", "--probes-max", "3"]
    args += ["--density", "--slq-runs", "1", "--slq-steps", "5", "--per-layer", "--dtype"]
    # 20 images in batches of 6: 4 batches, 2 per rank; float64 so that the two orders of
    # adding the per-batch products agree to ~1e-15.
    args += ["float64", "--n-examples", "20", "--batch-size", "6", "--attack-steps", "2"]
    args += ["--no-progress", "--device", "cpu", "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "awp_landscape", "curvature", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list((tmp_path / "two" / "curvature").glob("*/samples.rank1.json"))  # one writer
    assert main(["curvature", *args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "curvature.json").read_text())
    one = json.loads((tmp_path / "one" / "curvature.json").read_text())
    (r2,), (r1,) = two["rows"], one["rows"]
    assert set(r1) == set(r2)
    for k, v in r1.items():
        if isinstance(v, float):
            assert r2[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert r2[k] == v, k
    for a, b in zip(two["layers"], one["layers"]):
        assert a["top_eigenvalue"] == pytest.approx(b["top_eigenvalue"], rel=1e-9)


LANDSCAPE = ["--n-test", "16", "--n-train", "16", "--attack-steps", "2", "--batch-size", "8"]
LANDSCAPE += ["--no-progress", "--device", "cpu"]


def test_landscape_along_hessian_eigenvectors_is_stored_and_resumes(ckpts, tmp_path, capsys):
    out = tmp_path / "hess.h5"
    args = ["landscape", str(ckpts[0]), "--out", str(out), "--direction", "hessian"]
    args += ["--kind", "2d", "--x=-0.02:0.02:3", "--y=-0.02:0.02:3", *LANDSCAPE]
    assert main(args) == 0
    s = read_surface(out)
    assert s.attrs["direction_types"] == ["hessian", "hessian"]
    assert s.attrs["direction_seeds"] == [None, None] and s.computed.all()
    (d1, d2), _ = read_directions(tmp_path / "hess.directions.h5")
    # The same eigenvectors from the library, on the same training subset and x_adv seeds.
    model, _ = load_model(ckpts[0])
    data = load_data(DataConfig(), progress=False)
    x, y = subset(data.train, 16, seed=0)
    x = x.float() / 255
    want, values = hessian_directions(
        model, x, y, attack=AttackConfig(steps=2), k=2, batch_size=8,
        seed=derive_seed(0, "direction", "hessian"), attack_seed=hessian_seed(0),
    )  # fmt: skip
    for got, ref in ((d1, want[0]), (d2, want[1])):
        assert set(got) == set(ref) == set(select_params(model))
        for n in ref:
            assert torch.equal(got[n], ref[n]), n
    # Eigenvectors of the loss at fixed x_adv, orthogonal, each with ||d|| = ||w||.
    params = select_params(model)
    w_norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params.values())))
    batches = loss_batches(
        model, x, y, attack=AttackConfig(steps=2), batch_size=8, seed=hessian_seed(0)
    )
    op = LossHessian(model, batches, params)
    flat = [torch.cat([d[n].reshape(-1).double() for n in params]) for d in (d1, d2)]
    for f, lam in zip(flat, values):
        assert float(f.norm()) == pytest.approx(w_norm, rel=1e-5)
        # float32 products and ARPACK's tol 1e-4: the residual is a small fraction of lambda.
        assert float((op.matvec(f) - lam * f).norm()) < 1e-2 * abs(lam) * w_norm
    assert abs(float(flat[0] @ flat[1])) < 1e-4 * w_norm**2
    assert values[0] >= values[1]
    # Resume: forget two points; --resume recomputes them from the stored directions.
    full = {k: v.copy() for k, v in s.values.items()}
    s.computed[0, 0] = s.computed[2, 1] = False
    for v in s.values.values():
        v[0, 0] = v[2, 1] = np.nan
    write_surface(out, s)
    assert main([*args, "--resume"]) == 0
    r = read_surface(out)
    assert r.computed.all()
    for k in r.values:
        assert np.array_equal(r.values[k], full[k]), k
    # Refusals: kinds without a deterministic direction, no training subset.
    capsys.readouterr()
    bad = ["landscape", str(ckpts[0]), "--out", str(tmp_path / "x"), "--direction", "hessian"]
    assert main([*bad, "--kind", "multi", *LANDSCAPE]) == 2
    assert "deterministic" in capsys.readouterr().err
    assert main([*bad, *LANDSCAPE, "--n-train", "0"]) == 2
    assert "--n-train" in capsys.readouterr().err
    assert main([*bad, "--kind", "2d", "--orthogonalize", *LANDSCAPE]) == 2
    assert "orthogonal already" in capsys.readouterr().err
