"""Wrong and hostile input against the real `awp` command: one line, exit code 2, nothing lost.

Every case runs `python -m awp_landscape ...` in a subprocess on tiny models and checks the
one-line error, the exit code, and that every file already on disk is byte-identical afterwards
(and that no new visible file appeared). Then: two writers on one output, a diverging training,
checkpoints from elsewhere on every command, strict JSON for undefined statistics, leftovers of
killed runs, resuming without last.pt, and progress lines in a log file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from awp.checkpoint import save_checkpoint
from awp.config import to_dict
from awp.data import DataConfig
from awp.models import ModelSpec, build_model
from awp.train import TrainConfig
from tests.helpers import make_image_folder

REPO = Path(__file__).resolve().parents[1]
SPEC = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
QUICK = ["--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    os.environ["AWP_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # decoded images
    yield
    os.environ.pop("AWP_CACHE", None)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def awp(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real command in a subprocess (one torch thread, as the suite)."""
    cmd = [sys.executable, "-m", "awp_landscape", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The one error line; everything else on stderr must be a log line (INFO, WARNING)."""
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith(f"awp {command}: error: ")]
    others = [ln for ln in lines if ln not in errors and not ln.startswith(("INFO ", "WARNING "))]
    assert len(errors) == 1 and not others, proc.stderr[-3000:]
    return errors[0]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def save(path: Path, *, classes: int, data: Path, seed: int = 0, epoch: int = 1) -> Path:
    torch.manual_seed(seed)
    spec = ModelSpec(name="smallcnn", num_classes=classes, **SPEC)
    cfg = TrainConfig(out=str(path.parent.parent), data=DataConfig(dataset=str(data), val_size=4))
    save_checkpoint(
        path, model=build_model(spec), model_spec=to_dict(spec), config=to_dict(cfg), epoch=epoch
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data with 3 and 4 classes, checkpoints of ours (3 and 5 classes, one with a NaN weight),
    one from elsewhere, a regular file, a corrupt last.pt beside a good epoch checkpoint."""
    root = tmp_path_factory.mktemp("faults")
    data3 = make_image_folder(root / "data3", classes=3, n_train=24, n_test=9)
    data4 = make_image_folder(root / "data4", classes=4, n_train=24, n_test=12)
    ck = root / "run" / "checkpoints"
    ours = save(ck / "epoch_001.pt", classes=3, data=data3)
    five = save(root / "five" / "checkpoints" / "last.pt", classes=5, data=data3)
    nan = root / "nan" / "checkpoints" / "last.pt"
    state = torch.load(ours, weights_only=True)
    state["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    nan.parent.mkdir(parents=True)
    torch.save(state, nan)
    corrupt = ck / "last.pt"
    corrupt.write_bytes(ours.read_bytes()[:300])
    foreign = root / "foreign.pt"  # a raw state dict, as Rice et al. save theirs
    torch.manual_seed(3)
    torch.save(build_model(ModelSpec(name="smallcnn", num_classes=3, mean=None, std=None))
               .state_dict(), foreign)  # fmt: skip
    afile = root / "notes.txt"
    afile.write_text("a regular file\n")
    out = root / "out"
    out.mkdir()
    reported = root / "reported"  # a run folder with one evaluated epoch, for awp report
    reported.mkdir()
    (reported / "config.json").write_text(json.dumps({"method": "at", "awp": False}))
    record = {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3, "test_robust_acc": 0.2,
              "test_robust_loss": 2.1, "seconds": 1.0, "eval_seconds": 1.0}  # fmt: skip
    (reported / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return dict(
        root=root, data3=data3, data4=data4, ours=ours, five=five, nan=nan, corrupt=corrupt,
        foreign=foreign, afile=afile, out=out, rundir=root / "run", reported=reported,
    )  # fmt: skip


LAND = ["--n-train", "0", "--n-test", "4", "--x=-1:1:3", "--attack-steps", "1"]
GAP = ["--n-train", "4", "--n-test", "4", "--attack-steps", "1"]
FLAT = ["--n-examples", "4", "--samples", "1", "--alphas", "0.1", "--attack-steps", "1"]

# (case, command line with {names} of the world, what the one error line must say)
FAULTS = [
    # 1. a model that does not fit the data: refused before any compute, no file left
    ("eval: 5-class model, 3-class data", ["eval", "{five}", "--out", "{out}/e.json"],
     r"5-class model, but data3 has 3 classes"),
    ("eval: 3-class model, 4-class data", ["eval", "{ours}", "--dataset", "{data4}"],
     r"3-class model, but data4 has 4 classes"),
    ("landscape: classes", ["landscape", "{five}", "--out", "{out}/land", *LAND],
     r"5-class model"),
    ("gap: classes", ["gap", "{ours}", "--dataset", "{data4}", "--out", "{out}/g", *GAP],
     r"3-class model, but data4 has 4"),
    ("flatness: classes", ["flatness", "{five}", "--out", "{out}/f", *FLAT], r"5-class model"),
    # 3. outputs that cannot be written: refused before any compute
    ("eval: out under a file", ["eval", "{ours}", "--out", "{afile}/r.json"],
     r"cannot write into .*notes.txt"),
    ("hist: out under a file", ["hist", "{ours}", "--out", "{afile}/h"], r"cannot write into"),
    ("spectra: out under a file", ["spectra", "{ours}", "--out", "{afile}/s"],
     r"cannot write into"),
    ("landscape: out under a file", ["landscape", "{ours}", "--out", "{afile}/l", *LAND],
     r"cannot write into"),
    ("gap: out under a file", ["gap", "{ours}", "--out", "{afile}/g", *GAP],
     r"cannot write into"),
    ("flatness: unwritable out", ["flatness", "{ours}", "--out", "/proc/awp-out", *FLAT],
     r"cannot write into /proc/awp-out"),
    ("train: out under a file", ["train", "--dataset", "{data3}", "--model", "smallcnn",
     "--out", "{afile}/run", "--epochs", "1"], r"cannot write into"),  # fmt: skip
    ("report: out under a file", ["report", "{reported}", "--out", "{afile}/r.html"],
     r"cannot write into"),
    # 4. non-finite weights: the tensor is named, nothing is computed
    ("eval: NaN weight", ["eval", "{nan}", "--out", "{out}/n.json"], r"non-finite.*conv1\.weight"),
    ("hist: NaN weight", ["hist", "{nan}", "--out", "{out}/h"], r"conv1\.weight"),
    ("spectra: NaN weight", ["spectra", "{nan}", "--out", "{out}/s"], r"conv1\.weight"),
    ("flatness: NaN weight", ["flatness", "{nan}", "--out", "{out}/f2", *FLAT], r"conv1\.weight"),
    ("landscape: NaN weight", ["landscape", "{nan}", "--out", "{out}/l2", *LAND],
     r"conv1\.weight"),
    ("trajectory: two checkpoints", ["landscape", "{ours}", "{ours}", "--kind", "trajectory",
     "--out", "{out}/t", *LAND], r"at least 3 checkpoints"),  # fmt: skip
    # 5. settings without meaning
    ("flatness: alpha 0", ["flatness", "{ours}", "--out", "{out}/f3", *FLAT, "--alphas", "0"],
     r"alpha = 0 is no noise"),
    ("flatness: gamma 0", ["flatness", "{ours}", "--out", "{out}/f4", *FLAT, "--worst-case",
     "--gammas", "0"], r"gamma = 0 is no perturbation"),  # fmt: skip
    # 7. dead ends
    ("eval: a directory", ["eval", "{rundir}"], r"is a directory; pass a \.pt file, e\.g\."),
    ("eval: corrupt checkpoint", ["eval", "{corrupt}", "--out", "{out}/c.json"],
     r"truncated or corrupt.*use another checkpoint of .*epoch_001\.pt"),
]


@pytest.mark.parametrize("case,argv,said", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_fault_is_one_line_and_loses_nothing(world, case, argv, said):
    args = [a.format(**world) for a in argv]
    if args[0] != "report":
        args += QUICK
    before = snapshot(world["root"])
    proc = awp(*args)
    assert proc.returncode == 2, (case, proc.stderr[-2000:])
    line = error_line(proc, args[0])
    assert re.search(said, line), line
    after = snapshot(world["root"])
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    new = [k for k in after if k not in before and not Path(k).name.startswith(".")]
    assert not new, new  # nothing new but hidden lock files


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_out_is_refused(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = awp("hist", world["ours"], "--out", ro / "h", *QUICK)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2 and "cannot write into" in proc.stderr


def test_two_writers_of_one_landscape_the_second_is_refused(world, tmp_path):
    out = tmp_path / "land"
    args = [world["ours"], "--out", out, "--labels", "A", "--n-train", "0", "--n-test", "9"]
    args += ["--x=-1:1:801", "--attack-steps", "3", *QUICK]
    first = subprocess.Popen(
        [sys.executable, "-m", "awp_landscape", "landscape", *map(str, args)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        lock = out / ".A.h5.lock"  # created by the first writer right before it locks it
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first writer ended before the second started"
        second = awp("landscape", *args, "--resume")
        assert second.returncode == 2, second.stderr
        assert re.search(r"A\.h5 is being written by process \d+ on .* landscape", second.stderr)
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    from landscape.storage import read_surface

    assert read_surface(out / "A.h5").pending() == []  # the first writer's file is complete


def _train_args(data: Path, out: Path, *extra: object) -> list:
    return ["train", "--dataset", data, "--val-size", "4", "--model", "smallcnn", "--width", "1",
            "--batch-size", "8", "--attack-steps", "1", "--eval-steps", "1", "--train-eval-size",
            "4", "--out", out, *QUICK, *extra]  # fmt: skip


def test_a_diverging_training_stops_and_keeps_only_finite_checkpoints(world, tmp_path):
    out = tmp_path / "run"
    proc = awp(*_train_args(world["data3"], out, "--epochs", "3", "--lr", "1e6"))
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc, "train")
    assert re.search(r"NaN|nan|inf", line)
    assert "lower --lr" in line
    for ckpt in out.rglob("*.pt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    if (out / "checkpoints" / "last.pt").exists():
        assert "last finite checkpoint" in line and "last.pt" in line


def test_checkpoints_from_elsewhere_work_on_every_command(world, tmp_path):
    foreign = ["--model", "smallcnn", "--input", "raw", "--dataset", world["data3"]]
    for argv in (
        ["landscape", world["foreign"], "--out", tmp_path / "l", *LAND],
        ["hist", world["foreign"], "--out", tmp_path / "h", "--no-figures"],
        ["gap", world["foreign"], "--out", tmp_path / "g", *GAP],
        ["flatness", world["foreign"], "--out", tmp_path / "f", *FLAT, "--no-figures"],
    ):
        proc = awp(*argv, *foreign, *QUICK)
        assert proc.returncode == 0, (argv[0], proc.stderr[-1500:])
    assert json.loads((tmp_path / "g" / "gap.json").read_text())["rows"][0]["method"] == "unknown"


def test_undefined_statistics_are_named_and_json_stays_strict(world, tmp_path):
    """One checkpoint per method: no correlation exists within a method."""
    ckpts = [save(tmp_path / f"r{i}" / "checkpoints" / "e.pt", classes=3, data=world["data3"],
                  seed=i) for i in range(3)]  # fmt: skip
    assert awp("gap", *ckpts, "--out", tmp_path / "a", *GAP, *QUICK).returncode == 0
    tables = [tmp_path / "a" / "gap.json"] * 2
    proc = awp("correlate", *tables, "--x", "gap", "--y", "loss_gap", "--out", tmp_path / "c")
    # three AT checkpoints: pooled and per method are the same group of n=3
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "c" / "correlation.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    proc = awp("correlate", tables[0], "--x", "n_train", "--y", "gap", "--out", tmp_path / "d")
    assert proc.returncode == 0 and "constant column n_train" in proc.stdout
    assert "nan" not in proc.stdout.lower()
    rows = json.loads((tmp_path / "d" / "correlation.json").read_text())["correlations"]
    assert rows[0]["statistic"] is None and rows[0]["note"] == "constant column n_train"


def test_resuming_without_last_pt_names_the_checkpoint_to_continue_from(world, tmp_path):
    out = tmp_path / "run"
    args = _train_args(world["data3"], out, "--save-every", "1")
    assert awp(*args, "--epochs", "2").returncode == 0
    reference = (out / "metrics.jsonl").read_text().splitlines()
    (out / "checkpoints" / "last.pt").unlink()
    stale = out / "checkpoints" / ".last.pt.x1y2.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"partial")
    for extra in ([], ["--resume"]):
        proc = awp(*args, "--epochs", "2", *extra)
        assert proc.returncode == 2
        assert "--resume-from" in proc.stderr and "epoch_002.pt (epoch 2)" in proc.stderr
    proc = awp(*args, "--epochs", "2", "--resume-from", out / "checkpoints" / "epoch_001.pt")
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()  # removed when the run folder was taken
    again = (out / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if "seconds" not in k} for r in reference]
    assert [{k: v for k, v in json.loads(r).items() if "seconds" not in k} for r in again] == strip


def test_progress_in_a_log_file_is_a_line_every_few_percent(world, tmp_path):
    log = tmp_path / "log.txt"
    args = [world["ours"], "--out", tmp_path / "l", "--n-train", "0", "--n-test", "4"]
    args += ["--x=-1:1:11", "--attack", "none", "--device", "cpu"]  # progress on
    with log.open("w") as fh:
        cmd = [sys.executable, "-m", "awp_landscape", "landscape", *map(str, args)]
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env()).returncode
    text = log.read_text()
    assert code == 0 and "\r" not in text
    percents = re.findall(r"^AT: +(\d+)% \((\d+)/11\)", text, flags=re.M)
    assert percents and percents[-1] == ("100", "11") and len(percents) <= 11
