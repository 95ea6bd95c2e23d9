"""Multi-process training: 2 gloo processes against 1 process on the same global batch.

The equality test uses a BatchNorm-free model (tests/ddp_worker.py): with BatchNorm each rank
normalizes its slice with the slice's statistics, which is not what one process does with the
global batch (SyncBatchNorm would fix that, but it runs on GPUs only). A BatchNorm model is
used where nothing is compared with one process: exact resume of a distributed run, the CLI.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from awp import distributed as ddp
from awp_landscape.cli import main
from tests.ddp_worker import METHODS, bn_free_model, data, equal_config, method_config
from tests.helpers import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(out))
    return out


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["at", "trades", "mart"])
def test_two_processes_equal_one_process_on_the_global_batch(worker_runs, tmp_path, method):
    from awp.train import train

    one = train(
        equal_config(tmp_path / "one", method), progress=False, data=data(), model=bn_free_model()
    )
    two = last(worker_runs / f"equal_{method}")
    assert two["world"] == 2 and two["epoch"] == 2
    init = bn_free_model().state_dict()
    for name, w in one.model.state_dict().items():
        moved = float((w - init[name]).abs().max())
        diff = float((w - two["state_dict"][name]).abs().max())
        assert moved > 1e-3, name  # training moved the weights: the comparison means something
        # AT (A=2, K2=2, uneven 8/7 slices) and MART agree to rounding. TRADES' attack starts
        # at x where its KL gradient is exactly 0 in exact arithmetic (~1e-19 of round-off
        # here, whose sign differs with the batch's summation order): its x_adv can differ by a
        # step in a few pixels, hence a looser bound, still 1000x below the weights' motion.
        assert diff < (1e-12 if method != "trades" else 1e-5), (name, diff)
    hist = [json.loads(x) for x in (worker_runs / f"equal_{method}/metrics.jsonl").open()]
    assert [r["epoch"] for r in hist] == [1, 2]  # one writer: no duplicated records
    assert hist[-1]["train_loss"] == pytest.approx(one.history[-1]["train_loss"], rel=1e-5)
    assert hist[-1]["train_acc"] == one.history[-1]["train_acc"]


@pytest.mark.distributed
@pytest.mark.parametrize("name", METHODS)
def test_two_processes_equal_one_process_with_sam_asam_rwp_and_an_ema(worker_runs, tmp_path, name):
    from awp.train import train

    one = train(
        method_config(tmp_path / "one", name), progress=False, data=data(), model=bn_free_model()
    )
    two = last(worker_runs / name)
    ema = torch.load(worker_runs / name / "checkpoints" / "ema" / "last.pt", weights_only=True)
    one_ema = torch.load(tmp_path / "one" / "checkpoints" / "ema" / "last.pt", weights_only=True)
    init = bn_free_model().state_dict()
    for n, w in one.model.state_dict().items():
        assert float((w - init[n]).abs().max()) > 1e-3, n
        assert float((w - two["state_dict"][n]).abs().max()) < 1e-12, n
        assert float((one_ema["state_dict"][n] - ema["state_dict"][n]).abs().max()) < 1e-12, n
    hist = [json.loads(x) for x in (worker_runs / name / "metrics.jsonl").open()]
    assert [r[name.split("-")[1]] for r in hist] == [True, True]
    assert hist[-1]["ema_test_robust_acc"] == one.history[-1]["ema_test_robust_acc"]


@pytest.mark.distributed
def test_two_processes_equal_one_process_with_gaussian_noise(worker_runs, tmp_path):
    import dataclasses

    from awp.train import train

    cfg = dataclasses.replace(equal_config(tmp_path / "one", "at"), noise_sd=0.1)
    one = train(cfg, progress=False, data=data(), model=bn_free_model())
    two = last(worker_runs / "equal_at_noise")
    assert two["world"] == 2 and "rng_noise" in two
    for name, w in one.model.state_dict().items():
        assert float((w - two["state_dict"][name]).abs().max()) < 1e-12, name


@pytest.mark.distributed
def test_distributed_run_resumes_exactly(worker_runs):
    full, cut = last(worker_runs / "full"), last(worker_runs / "cut")
    assert full["epoch"] == cut["epoch"] == 3 and full["world"] == 2
    for k, t in full["state_dict"].items():
        assert torch.equal(t, cut["state_dict"][k]), k
    # Each rank's attack generator is saved and restored (rank 0's is the usual rng_attack).
    assert len(full["rng_attack_ranks"]) == 2
    assert not torch.equal(full["rng_attack_ranks"][0], full["rng_attack_ranks"][1])
    records = [json.loads(x) for x in (worker_runs / "cut" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    files = sorted(p.name for p in (worker_runs / "cut").rglob("*") if p.is_file())
    # no temp files; .run.lock is the lock the job held on its run folder
    assert files == [".run.lock", "best.pt", "config.json", "last.pt", "metrics.jsonl"]


@pytest.mark.distributed
def test_a_run_of_two_processes_resumes_only_with_two(worker_runs, tmp_path):
    """The refusal of test_torchrun_awp_train_cli (-m slow) without a torchrun of its own: a
    run trained by 2 processes (the worker's), resumed by 1, is refused naming the fix, and
    nothing of it changes."""
    import shutil

    from awp.train import train
    from tests.ddp_worker import resume_config

    out = tmp_path / "full"
    shutil.copytree(worker_runs / "full", out)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"trained by 2 process\(es\), this is 1; resume with "
                                         r"torchrun --nproc_per_node 2"):  # fmt: skip
        train(resume_config(out), resume=True, progress=False, data=data())
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.slow  # 10 s: a torchrun of `awp train` (rank 0 prints each epoch once, the
# method's defaults and the process count are recorded); DDP training itself is compared with
# one process by the tests above (the worker's runs), and the refusal to resume with another
# process count by test_a_run_of_two_processes_resumes_only_with_two
@pytest.mark.distributed
def test_torchrun_awp_train_cli(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data", n_train=30, n_test=12)
    out = tmp_path / "run"
    args = ["--dataset", str(folder), "--val-size", "6", "--model", "smallcnn", "--epochs", "2"]
    args += ["--batch-size", "12", "--attack-steps", "2", "--eval-steps", "2"]
    args += ["--eval-n-train", "8", "--method", "trades", "--awp", "--awp-warmup", "0"]
    args += ["--no-progress", "--device", "cpu", "--out", str(out)]
    proc = torchrun("-m", "awp_landscape", "train", *args)
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2  # rank 0 prints, once
    assert "TRADES-AWP (gamma 0.005, warm-up 0, beta 6" in proc.stdout
    assert "2 processes" in proc.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    ckpt = last(out)
    assert ckpt["world"] == 2 and ckpt["resolved_config"]["gamma"] == 0.005
    # Resuming with another number of processes is refused: the slices would differ.
    assert main(["train", *args, "--epochs", "2", "--resume"]) == 2
    assert "torchrun --nproc_per_node 2" in capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------- in one process
def test_rank_slices_cover_the_batch_once():
    for n in range(0, 40):
        for world in (1, 2, 3, 4):
            parts = [ddp.rank_slice(n, r, world) for r in range(world)]
            covered = [i for p in parts for i in range(n)[p]]
            assert covered == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_uneven_slices_average_to_the_global_gradient():
    """What DDP does, written out: loss_scale = N * slice / global makes the average exact."""
    from awp.train import train_step  # noqa: F401  (documents where loss_scale is used)

    model = bn_free_model()
    x = torch.rand(15, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(15) % 3
    params = list(model.parameters())

    def grad(xs, ys, scale=1.0):
        loss = torch.nn.functional.cross_entropy(model(xs), ys) * scale
        return torch.autograd.grad(loss, params)

    full = grad(x, y)
    world = 2
    parts = [ddp.rank_slice(15, r, world) for r in range(world)]
    per_rank = [grad(x[p], y[p], world * len(y[p]) / len(y)) for p in parts]
    for g_full, *gs in zip(full, *per_rank):
        assert torch.allclose(sum(gs) / world, g_full, rtol=1e-12, atol=1e-15)
    unscaled = [grad(x[p], y[p]) for p in parts]
    assert not torch.allclose(sum(g[0] for g in unscaled) / world, full[0], rtol=1e-6)


def test_outside_torchrun_everything_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = ddp.init_distributed("auto")
    assert (ctx.rank, ctx.world, ctx.active, ctx.is_main) == (0, 1, False, True)
    t = [torch.ones(3)]
    ddp.all_reduce_mean_(t)
    assert torch.equal(t[0], torch.ones(3))
    assert ddp.all_reduce_sums([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    model = bn_free_model()
    assert ddp.wrap(model, ctx, torch.device("cpu")) is model and ddp.plain(model) is model
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        ddp.init_distributed("cuda:1")
