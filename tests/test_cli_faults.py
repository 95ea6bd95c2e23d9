"""Wrong and hostile input against the real `awp` command: one line, exit code 2, nothing lost.

Every case runs the real command (``awp_landscape.cli.main``, in this process, its output, log
lines and warnings captured as its own process prints them; a few cases, and every case with
``-m slow``, in a process of their own) on tiny models and checks the one-line error, the exit
code, and that every file already on disk is byte-identical afterwards (and that no new
visible file appeared). Then: two writers on one output, a diverging training,
checkpoints from elsewhere on every command, strict JSON for undefined statistics, leftovers of
killed runs, resuming without last.pt, and progress lines in a log file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


def awp(
    *args: object,
    timeout: float = 180,
    max_file_bytes: int | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess:
    """The real command: ``awp_landscape.cli.main`` in this process, its stdout, stderr, log
    lines and warnings captured as the command's own process would print them
    (:func:`in_process`); with ``process`` (or ``max_file_bytes``) in a subprocess (one torch
    thread, as the suite). ``max_file_bytes`` limits the size of every file it writes
    (RLIMIT_FSIZE: a write beyond it fails with EFBIG, "File too large", as on a full or
    quota-limited disk)."""
    if not process and max_file_bytes is None:
        return in_process(*args)
    cmd = [sys.executable, "-m", "awp_landscape", *map(str, args)]

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        preexec_fn=limit if max_file_bytes is not None else None,
    )


def in_process(*args: object) -> subprocess.CompletedProcess:
    """``awp ARGS`` run by ``main`` in this process, without the 2-3 s a new process spends
    importing torch: stdout and stderr captured, the log lines on stderr as the command prints
    them (INFO and up, its format), every warning on stderr as Python prints it, argparse's
    exit as the return code."""
    import contextlib
    import io
    import logging
    import warnings

    from awp_landscape.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    for w in caught:
        err.write(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n")
    argv = ["awp", *map(str, args)]
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def error_line(proc: subprocess.CompletedProcess, command: str, verb: str = "error") -> str:
    """The one error line; everything else on stderr must be a log line (INFO, WARNING)."""
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith(f"awp {command}: {verb}")]
    others = [ln for ln in lines if ln not in errors and not ln.startswith(("INFO ", "WARNING "))]
    assert len(errors) == 1 and not others, proc.stderr[-3000:]
    return errors[0]


def interrupted(args: list[str], *, when: str) -> subprocess.CompletedProcess:
    """The real command, sent SIGINT (a Ctrl-C) as soon as it has mapped the shared library
    whose name contains ``when`` (``libtorch``: while torch imports, the start of every
    command that computes)."""
    cmd = [sys.executable, "-m", "awp_landscape", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )  # fmt: skip
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:
            if when in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Every file's hash; a lock file only by its presence (each writer records itself in it)."""
    return {
        str(p.relative_to(root)): "lock" if p.name.endswith(".lock") else
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }  # fmt: skip


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
    truncated = root / "truncated"  # a run killed while it appended its metrics
    truncated.mkdir()
    (truncated / "config.json").write_text(json.dumps({"method": "at", "awp": False}))
    (truncated / "metrics.jsonl").write_text(json.dumps(record)[:-9] + "\n")
    path = root / "path" / "checkpoints"  # a training path of three epochs, and another run's
    epochs = [save(path / f"epoch_00{k}.pt", classes=3, data=data3, seed=k, epoch=k)
              for k in (1, 2, 3)]  # fmt: skip
    stranger = save(root / "other" / "checkpoints" / "epoch_003.pt", classes=3, data=data3,
                    seed=9, epoch=3)  # fmt: skip
    surfaces = root / "surfaces"
    surfaces.mkdir()
    _h5(surfaces / "allnan.h5", np.full(41, np.nan))
    _h5(surfaces / "strx.h5", np.arange(3.0), x=np.array([b"a", b"b", b"c"]))
    _h5(surfaces / "curve.h5", np.linspace(1.0, 2.0, 41))
    copy = root / "copy.pt"  # a byte-identical copy of ours
    copy.write_bytes(ours.read_bytes())
    pickled = ck / "pickled.pt"  # a plain pickle beside the corrupt last.pt and epoch_001.pt
    pickled.write_bytes(pickle.dumps({"conv1.weight": [[0.5]]}, protocol=4))
    links = root / "links"  # outputs given as symbolic links: in a loop, or to no folder
    links.mkdir()
    (links / "loop.json").symlink_to("loop2.json")
    (links / "loop2.json").symlink_to("loop.json")
    (links / "loopdir").symlink_to("loopdir2")
    (links / "loopdir2").symlink_to("loopdir")
    (links / "nodir").symlink_to(root / "missing" / "folder")
    return dict(
        root=root, data3=data3, data4=data4, ours=ours, five=five, nan=nan, corrupt=corrupt,
        foreign=foreign, afile=afile, out=out, rundir=root / "run", reported=reported,
        truncated=truncated, e1=epochs[0], e2=epochs[1], e3=epochs[2], stranger=stranger,
        allnan=surfaces / "allnan.h5", strx=surfaces / "strx.h5", pickled=pickled,
        loop=links / "loop.json", loopdir=links / "loopdir", nodir=links / "nodir",
        curve=surfaces / "curve.h5", copy=copy,
    )  # fmt: skip


def _h5(path: Path, loss: np.ndarray, x: np.ndarray | None = None) -> Path:
    """A loss-landscape style 1-D file (xcoordinates, train_loss); NaN where not computed."""
    import h5py

    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, len(loss)) if x is None else x
        f["train_loss"] = loss
    return path


LAND = ["--n-train", "0", "--n-test", "4", "--x=-1:1:3", "--attack-steps", "1"]
GAP = ["--n-train", "4", "--n-test", "4", "--attack-steps", "1"]
FLAT = ["--n-examples", "4", "--samples", "1", "--alphas", "0.1", "--attack-steps", "1"]


def _train_argv(data: str, out: str) -> list[str]:
    """A one-epoch training of smallcnn on ``data`` into ``out``, as small as it runs."""
    return ["train", "--dataset", data, "--val-size", "4", "--model", "smallcnn", "--width", "1",
            "--batch-size", "8", "--attack-steps", "1", "--eval-steps", "1", "--eval-n-train",
            "4", "--epochs", "1", "--out", out]  # fmt: skip


# (case, command line with {names} of the world, what the one error line must say)
FAULTS = [
    # 1. a model that does not fit the data: refused before any compute, no file left
    (
        "eval: 5-class model, 3-class data",
        ["eval", "{five}", "--out", "{out}/e.json"],
        r"5-class model, but data3 has 3 classes",
    ),
    (
        "eval: 3-class model, 4-class data",
        ["eval", "{ours}", "--dataset", "{data4}"],
        r"3-class model, but data4 has 4 classes",
    ),
    ("landscape: classes", ["landscape", "{five}", "--out", "{out}/land", *LAND], r"5-class model"),
    (
        "gap: classes",
        ["gap", "{ours}", "--dataset", "{data4}", "--out", "{out}/g", *GAP],
        r"3-class model, but data4 has 4",
    ),
    ("flatness: classes", ["flatness", "{five}", "--out", "{out}/f", *FLAT], r"5-class model"),
    (
        "eval: --input-size of our checkpoint",
        ["eval", "{ours}", "--input-size", "24", "--out", "{out}/e.json"],
        r"--input-size would be ignored: .* is a checkpoint of our architectures",
    ),
    # 3. outputs that cannot be written: refused before any compute
    (
        "eval: out under a file",
        ["eval", "{ours}", "--out", "{afile}/r.json"],
        r"cannot write into .*notes.txt",
    ),
    ("hist: out under a file", ["hist", "{ours}", "--out", "{afile}/h"], r"cannot write into"),
    (
        "spectra: out under a file",
        ["spectra", "{ours}", "--out", "{afile}/s"],
        r"cannot write into",
    ),
    (
        "landscape: out under a file",
        ["landscape", "{ours}", "--out", "{afile}/l", *LAND],
        r"cannot write into",
    ),
    ("gap: out under a file", ["gap", "{ours}", "--out", "{afile}/g", *GAP], r"cannot write into"),
    (
        "flatness: unwritable out",
        ["flatness", "{ours}", "--out", "/proc/awp-out", *FLAT],
        r"cannot write into /proc/awp-out",
    ),
    (
        "train: out under a file",
        [
            "train",
            "--dataset",
            "{data3}",
            "--model",
            "smallcnn",
            "--out",
            "{afile}/run",
            "--epochs",
            "1",
        ],
        r"cannot write into",
    ),  # fmt: skip
    (
        "report: out under a file",
        ["report", "{reported}", "--out", "{afile}/r.html"],
        r"cannot write into",
    ),
    # 4. non-finite weights: the tensor is named, nothing is computed
    ("eval: NaN weight", ["eval", "{nan}", "--out", "{out}/n.json"], r"non-finite.*conv1\.weight"),
    ("hist: NaN weight", ["hist", "{nan}", "--out", "{out}/h"], r"conv1\.weight"),
    ("spectra: NaN weight", ["spectra", "{nan}", "--out", "{out}/s"], r"conv1\.weight"),
    ("flatness: NaN weight", ["flatness", "{nan}", "--out", "{out}/f2", *FLAT], r"conv1\.weight"),
    ("landscape: NaN weight", ["landscape", "{nan}", "--out", "{out}/l2", *LAND], r"conv1\.weight"),
    (
        "trajectory: two checkpoints",
        ["landscape", "{ours}", "{ours}", "--kind", "trajectory", "--out", "{out}/t", *LAND],
        r"at least 3 checkpoints",
    ),  # fmt: skip
    # 5. settings without meaning
    (
        "flatness: alpha 0",
        ["flatness", "{ours}", "--out", "{out}/f3", *FLAT, "--alphas", "0"],
        r"alpha = 0 is no noise",
    ),
    (
        "flatness: gamma 0",
        ["flatness", "{ours}", "--out", "{out}/f4", *FLAT, "--worst-case", "--gammas", "0"],
        r"gamma = 0 is no perturbation",
    ),  # fmt: skip
    # 7. dead ends
    ("eval: a directory", ["eval", "{rundir}"], r"is a directory; pass a \.pt file, e\.g\."),
    (
        "eval: corrupt checkpoint",
        ["eval", "{corrupt}", "--out", "{out}/c.json"],
        r"truncated or corrupt.*use another checkpoint of .*epoch_001\.pt",
    ),
    # 8. numeric flags out of their range (declared with the field; the Python API refuses
    # the same values): nothing computed, nothing written
    (
        "certify: samples 0",
        ["certify", "{ours}", "--out", "{out}/c1", "--samples", "0"],
        r"n=0 is outside \[1, 10000000\] \(--samples\)",
    ),
    (
        "certify: samples negative",
        ["certify", "{ours}", "--out", "{out}/c2", "--samples=-5"],
        r"n=-5 is outside \[1, 10000000\]",
    ),
    (
        "certify: samples 1e11",
        ["certify", "{ours}", "--out", "{out}/c3", "--samples", "1e11"],
        r"n=100000000000 is outside .*: every sample is one forward pass",
    ),
    (
        "certify: noise level < 0",
        ["certify", "{ours}", "--out", "{out}/c4", "--noise-levels=-0.5"],
        r"noise_levels=-0.5 is outside \[0, 4\]",
    ),  # fmt: skip
    (
        "spectra: image size",
        ["spectra", "{ours}", "--out", "{out}/s3", "--image-size", "100000"],
        r"image_size=100000 is outside \[1, 2048\].*activations",
    ),  # fmt: skip
    (
        "spectra: fft size",
        ["spectra", "{ours}", "--out", "{out}/s4", "--fft-size", "100000"],
        r"fft_size=100000 is outside \[0, 1024\].*c_out x c_in x n\^2",
    ),
    (
        "curvature: lanczos vectors",
        ["curvature", "{ours}", "--out", "{out}/h5", "--lanczos-vectors", "100000"],
        r"lanczos_vectors=100000 is outside",
    ),  # fmt: skip
    (
        "curvature: top-k",
        ["curvature", "{ours}", "--out", "{out}/h6", "--top-k", "5135"],
        r"top_k=5135 is outside \[0, 1000\]",
    ),
    (
        "flatness: samples 0",
        ["flatness", "{ours}", "--out", "{out}/f5", *FLAT, "--samples", "0"],
        r"samples=0 is outside \[1, 100000\]",
    ),
    # 9. inputs that change the meaning
    (
        "trajectory: epochs out of order",
        ["landscape", "{e3}", "{e1}", "{e2}", "--kind", "trajectory", "--out", "{out}/t2", *LAND],
        r"not in epoch order \(epochs 3, 1, 2; theta0 would be epoch 2.*--allow-mixed",
    ),  # fmt: skip
    (
        "trajectory: another run",
        [
            "landscape",
            "{e1}",
            "{e2}",
            "{stranger}",
            "--kind",
            "trajectory",
            "--out",
            "{out}/t3",
            *LAND,
        ],
        r"come from 2 runs .*--allow-mixed",
    ),  # fmt: skip
    (
        "landscape: --dir-norm with hessian",
        [
            "landscape",
            "{ours}",
            "--out",
            "{out}/l4",
            *LAND,
            "--n-train",
            "4",
            "--direction",
            "hessian",
            "--dir-norm",
            "layer",
        ],
        r"--dir-norm layer has no effect on --direction hessian",
    ),  # fmt: skip
    (
        "landscape: --direction-seed of a trajectory",
        [
            "landscape",
            "{e1}",
            "{e2}",
            "{e3}",
            "--kind",
            "trajectory",
            "--direction-seed",
            "3",
            "--out",
            "{out}/t4",
            *LAND,
        ],
        r"--direction-seed 3 has no effect on a trajectory .*: drop --direction-seed$",
    ),  # fmt: skip
    (
        "plot: an all-NaN surface",
        ["plot", "{allnan}"],
        r"allnan\.h5 has no value of train_loss \(0 of 41 points computed",
    ),
    # 10. files that cannot be read name themselves and the fix
    (
        "plot: string coordinates",
        ["plot", "{strx}"],
        r"strx\.h5 holds datasets that are not a landscape's numbers.*recompute it",
    ),
    (
        "report: truncated metrics.jsonl",
        ["report", "{truncated}", "--out", "{out}/r.html"],
        r"metrics file .*truncated/metrics\.jsonl line 1 is not valid JSON.*--resume",
    ),
    (
        "train: --resume-from a directory",
        [
            "train",
            "--dataset",
            "{data3}",
            "--model",
            "smallcnn",
            "--out",
            "{rundir}",
            "--epochs",
            "1",
            "--resume-from",
            "{rundir}",
        ],
        r"cannot resume: .*run is a directory; pass a checkpoint file",
    ),  # fmt: skip
    # 11. a check that needs only the settings comes before the compute (the curvature map
    # follows the whole surface)
    (
        "landscape: --hessian-eigs on a split not evaluated",
        ["landscape", "{ours}", "--out", "{out}/l5", *LAND, "--hessian-eigs"],
        r"--hessian-eigs on --eig-split train needs train images, but --n-train is 0",
    ),  # fmt: skip
    (
        "landscape: --eig-loss adv without an attack",
        [
            "landscape",
            "{ours}",
            "--out",
            "{out}/l6",
            *LAND,
            "--attack",
            "none",
            "--hessian-eigs",
            "--eig-split",
            "test",
            "--eig-loss",
            "adv",
        ],
        r"--eig-loss adv crafts x_adv with --attack, but --attack is none",
    ),  # fmt: skip
    # 12. a write that fails (a full disk) in the first epoch leaves no metrics row, no
    # config.json, no checkpoint: the same command starts the run again
    (
        "train: full disk at the first checkpoint",
        _train_argv("{data3}", "{out}/full"),
        r"cannot write .*/full/checkpoints/\S+\.pt: File too large",
        {"max_file_bytes": 40_000},
    ),
    # 13. outputs given as symbolic links: a loop is refused, never replaced by a regular file
    (
        "eval: out a symbolic link in a loop",
        ["eval", "{ours}", "--out", "{loop}", "--attacks", "natural"],
        r"cannot write .*loop\.json: it is a symbolic link in a loop",
    ),  # fmt: skip
    (
        "hist: out a folder link in a loop",
        ["hist", "{ours}", "--out", "{loopdir}"],
        r"loopdir: it is a symbolic link in a loop \(.*loopdir -> .*loopdir2 -> .*loopdir\)",
    ),
    (
        "hist: out a link to no folder",
        ["hist", "{ours}", "--out", "{nodir}"],
        r"cannot write into .*nodir: it is a symbolic link to .*missing/folder, which does not "
        r"exist; create that folder",
    ),  # fmt: skip
    # 14. a Ctrl-C while the command starts (torch importing) ends it: one line, exit 130
    (
        "landscape: Ctrl-C while torch imports",
        ["landscape", "{ours}", "--out", "{out}/l7", *LAND],
        r"^awp landscape: interrupted; finished work is on disk",
        {"interrupt": "libtorch"},
    ),
    # 15. TensorBoard's folder is checked before anything is written (no writer thread's
    # traceback, no bytes repr, no config.json left)
    (
        "train: --tensorboard where nothing can be written",
        [*_train_argv("{data3}", "{out}/tb"), "--tensorboard", "/sys/kernel"],
        r"cannot write into /sys/kernel .*; choose another --tensorboard$",
    ),  # fmt: skip
    # 16. messages: a plain pickle is called what it is; the checkpoints suggested instead are
    # whole ones (not the truncated last.pt beside it); a config's field is named as its flag
    (
        "eval: a plain pickle",
        ["eval", "{pickled}", "--out", "{out}/p.json"],
        r"is a plain pickle, not a file written by torch\.save.*use another checkpoint of "
        r"\S+ \(epoch_001\.pt\)$",
    ),  # fmt: skip
    (
        "landscape: a field's error names its flag",
        ["landscape", "{ours}", "--out", "{out}/l8", *LAND, "--bn", "recompute", "--n-bn", "1"],
        r"bn recompute needs --n-bn >= 2",
    ),
    # 17. degenerate input: a path from a checkpoint to itself has no barrier to find
    (
        "connect: A to A",
        ["connect", "{ours}", "{ours}", "--out", "{out}/cn1"],
        r"cannot connect .*epoch_001\.pt and .*epoch_001\.pt: they are the same file",
    ),
    (
        "connect: two byte-identical files",
        ["connect", "{ours}", "{copy}", "--out", "{out}/cn2"],
        r"cannot connect .*: they are byte-identical, so every path between them is one point",
    ),
]


CASES = [(*f, {})[:4] for f in FAULTS]
# The cases also run in a process of their own in the default suite (every case does with
# -m slow): what only a real process shows (a torch warning on stderr, log lines, the exit).
IN_A_PROCESS = (
    "eval: a plain pickle",
    "certify: samples 0",
    "report: truncated metrics.jsonl",
    "hist: out a link to no folder",
    "train: --tensorboard where nothing can be written",
)


@pytest.mark.parametrize("case,argv,said,how", CASES, ids=[f[0] for f in FAULTS])
def test_a_fault_is_one_line_and_loses_nothing(world, case, argv, said, how):
    """Each case run by ``main`` in this process; ``how`` asks for a process of its own:
    ``max_file_bytes`` (a full disk), ``interrupt`` (a Ctrl-C once the process has loaded that
    library: it ends with exit code 130)."""
    _fault(world, case, argv, said, how, process=case in IN_A_PROCESS)


@pytest.mark.slow
@pytest.mark.parametrize("case,argv,said,how", CASES, ids=[f[0] for f in FAULTS])
def test_a_fault_is_one_line_and_loses_nothing_in_its_own_process(world, case, argv, said, how):
    _fault(world, case, argv, said, how, process=True)


def _fault(world, case: str, argv: list, said: str, how: dict, *, process: bool) -> None:
    args = [a.format(**world) for a in argv]
    if args[0] not in ("report", "plot"):
        args += QUICK
    before = snapshot(world["root"])
    if "interrupt" in how:
        proc = interrupted(args, when=how["interrupt"])
    else:
        proc = awp(*args, max_file_bytes=how.get("max_file_bytes"), process=process)
    assert proc.returncode == (130 if "interrupt" in how else 2), (case, proc.stderr[-2000:])
    line = error_line(proc, args[0], verb="interrupted" if "interrupt" in how else "error")
    assert re.search(said, line), line
    after = snapshot(world["root"])
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    new = [k for k in after if k not in before and not Path(k).name.startswith(".")]
    assert not new, new  # nothing new but hidden lock files


# Faults whose command succeeds but said or wrote the wrong thing: (case, command line with
# {names} of the world, {"stdout" | "stderr" | a file under --out's folder: a pattern it must
# match}, a pattern stdout must not match).
OUTCOMES = [
    (
        "landscape: --eig-examples beyond the split is capped and the header says so",
        [
            "landscape",
            "{ours}",
            "--out",
            "{out}/o1",
            *LAND,
            "--hessian-eigs",
            "--eig-split",
            "test",
            "--eig-examples",
            "100000000",
        ],
        {
            "stderr": r"WARNING .*--eig-examples 100000000 asks for more than the 4 images of the "
            r"split: all 4 are used",
            "stdout": r"curvature map \(lambda_max, lambda_min of the clean loss on 4 test images",
        },
        r"100000000",
    ),  # fmt: skip
    (
        "train: --val-size 0 lists no best.pt",
        [*_train_argv("{data3}", "{out}/o2"), "--val-size", "0"],
        {"stdout": r"checkpoints: \S+ \(last\.pt\); metrics"},
        r"best\.pt",
    ),
    (
        "report: report.md shows a label as report.html does, markup as text",
        ["report", "{reported}", "--out", "{out}/o3/report.html", "--title", "*T* <b>x</b> [a](b)"],
        {"o3/report.md": r"^# \\\*T\\\* \\<b>x\\</b> \\\[a\\\]\(b\)$"},
        r"Traceback",
    ),  # fmt: skip
    (
        "plot: --vtp of a 1-D file says it writes none",
        ["plot", "{curve}", "--vtp", "--formats", "png"],
        {
            "stdout": r"^note: --vtp writes nothing for \S+curve\.h5 \(curve\): it is a 1d "
            r"curve"
        },
        r"\.vtp$",
    ),  # fmt: skip
]


@pytest.mark.parametrize("case,argv,said,unsaid", OUTCOMES, ids=[o[0] for o in OUTCOMES])
def test_a_fault_that_succeeded_says_and_writes_the_right_thing(world, case, argv, said, unsaid):
    args = [a.format(**world) for a in argv]
    proc = awp(*args, *(QUICK if args[0] not in ("report", "plot") else []))
    assert proc.returncode == 0, (case, proc.stderr[-2000:])
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    for where, pattern in said.items():
        text = texts.get(where) or (world["out"] / where).read_text()
        assert re.search(pattern, text, flags=re.M), (where, text[-2000:])
    assert not re.search(unsaid, proc.stdout, flags=re.M), proc.stdout[-2000:]


def test_a_curvature_map_left_without_values_takes_corrected_settings(world, tmp_path):
    """A map that holds no value (an earlier version computed the surface, then found its
    --eig-split without images and left NaN columns) is no result to protect: a corrected
    rerun with --resume computes it, instead of refusing 'other settings'."""
    from landscape.curvature_map import EIG_ATTR, EIG_NAMES, EigenMapConfig
    from landscape.storage import read_surface, write_surface

    out = tmp_path / "A.h5"
    args = ["landscape", world["ours"], "--out", out, *LAND, *QUICK]
    assert awp(*args).returncode == 0
    left = read_surface(out)  # what the earlier version left: settings, NaN columns
    left.attrs[EIG_ATTR] = {**dataclasses.asdict(EigenMapConfig(hessian_eigs=True)),
                            "seed_scheme": "derive_seed"}  # fmt: skip
    for name in EIG_NAMES:
        left.values[name] = np.full(left.computed.shape, np.nan)
    write_surface(out, left)
    proc = awp(*args, "--resume", "--hessian-eigs", "--eig-split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = read_surface(out)
    assert done.attrs[EIG_ATTR]["eig_split"] == "test"
    assert all(np.isfinite(done.values[n]).all() for n in EIG_NAMES)
    proc = awp(*args, "--resume", "--hessian-eigs", "--eig-split", "test", "--eig-tol", "0.01")
    assert proc.returncode == 2 and "other settings" in proc.stderr  # values now: refused


def test_an_output_given_as_a_dangling_link_is_written_through(world, tmp_path):
    link, target = tmp_path / "result.json", tmp_path / "elsewhere" / "r.json"
    link.symlink_to(target)  # the target and its folder do not exist yet
    proc = awp("eval", world["ours"], "--out", link, "--attacks", "natural", *QUICK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert json.loads(target.read_text())["results"]  # and the results reached its target


def test_a_run_stopped_between_last_pt_and_its_metrics_row_resumes_whole(world, tmp_path):
    """Checkpoints are written before the epoch's metrics row; a run stopped between the two
    gets the row back from last.pt when it is resumed."""
    out = tmp_path / "run"
    args = [*_train_argv(str(world["data3"]), str(out)), "--epochs", "2", *QUICK]
    assert awp(*args).returncode == 0
    metrics = out / "metrics.jsonl"
    whole = metrics.read_text().splitlines()
    metrics.write_text(whole[0] + "\n")  # stopped after last.pt of epoch 2, before its row
    proc = awp(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics.read_text().splitlines() == whole


def test_a_ctrl_c_that_python_would_lose_still_ends_the_command(tmp_path, monkeypatch):
    """In a callback of the garbage collector, or inside an import, a KeyboardInterrupt is
    lost ("Exception ignored in ...") or aborts the process (a C++ caller); here it is raised
    again where the command can stop."""
    from awp_landscape.cli import interrupts_reach_main

    class Dropped:
        def __del__(self) -> None:
            raise KeyboardInterrupt  # what a Ctrl-C during a garbage collection looks like

    # A suite started in the background (`make test &`) inherits SIGINT ignored, where the
    # context does nothing by design; a terminal's Ctrl-C is what is tested here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        reported = []
        monkeypatch.setattr(sys, "unraisablehook", reported.append)
        with pytest.raises(KeyboardInterrupt), interrupts_reach_main():
            Dropped()  # collected at once: the exception cannot leave __del__
            for _ in range(500):  # the interrupt arrives here, between two short sleeps
                time.sleep(0.01)
        assert reported == []  # no "Exception ignored" traceback
        module = tmp_path / "slow_import.py"  # a Ctrl-C in the middle of an import
        module.write_text("import signal, time\nsignal.raise_signal(signal.SIGINT)\ndone = True\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.raises(KeyboardInterrupt), interrupts_reach_main():
            import slow_import  # noqa: F401  (the interrupt leaves this statement)

            pytest.fail("the interrupt was not raised when the import returned")
        assert sys.modules["slow_import"].done  # the import ran to its end first
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


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
    args += ["--x=-1:1:201", "--attack-steps", "3", *QUICK]  # seconds of points to compute
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
            "--batch-size", "8", "--attack-steps", "1", "--eval-steps", "1", "--eval-n-train",
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


# ------------------------------------------------------------------ the report of what is there
# The demo's stages in order, each with the summary files it writes last and the unit folders
# it fills while it runs (in a seed folder). A demo killed in a stage holds the files of the
# stages before it and that stage's unit folders, half filled.
DEMO_STAGES = [
    ("evaluate", ["eval"], []),
    ("gap", ["analysis/gap.json", "analysis/gap.csv"], ["analysis/gap"]),
    ("landscape", [], ["analysis/landscape"]),
    ("trajectory", [], ["analysis/trajectory"]),
    ("hist", ["analysis/weights.json", "analysis/weights_hist.png"], []),
    ("spectra", ["analysis/spectra/spectra.json"], ["analysis/spectra"]),
    ("flatness", ["analysis/flatness_final/flatness.json"], ["analysis/flatness_final"]),
    ("curvature", ["analysis/curvature/curvature.json"], ["analysis/curvature"]),
    ("flatness_epochs", ["analysis/flatness_epochs/flatness.json"], ["analysis/flatness_epochs"]),
    ("correlate", ["analysis/correlation.json", "analysis/flatness_loss_vs_gap.png"], []),
    ("certify", ["analysis/certify.json"], ["analysis/certify"]),
]


@pytest.fixture(scope="module")
def tiny_demo(tiny_demo_folder):
    """The session's tiny demo (conftest.tiny_demo_folder; smallcnn at width 1/4, 3 epochs):
    its layers are too small for a power-law fit, so spectra.json holds "alpha": null."""
    return tiny_demo_folder[0]


def test_the_report_of_a_tiny_demo_says_no_fit(tiny_demo, tmp_path):
    import shutil

    spectra = json.loads((tiny_demo / "seed0/analysis/spectra/spectra.json").read_text())
    assert any(r["alpha"] is None for r in spectra["esd"])  # what crashed the report
    md = (tiny_demo / "report.md").read_text()
    assert "Weight spectra" in md and "no fit" in md and "Not measured" not in md
    folder = tmp_path / "demo"
    shutil.copytree(tiny_demo, folder, ignore=shutil.ignore_patterns("report.html"))
    proc = awp("report", folder, process=True)  # the real process: no traceback on stderr
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (folder / "report.html").exists()


def _killed(demo: Path, dest: Path, stage: int) -> Path:
    """A copy of ``demo`` as a demo killed in stage ``stage`` (-1: in AT-AWP's training)."""
    import shutil

    skip = shutil.ignore_patterns("report.*", "replicates.json", ".*.lock")
    shutil.copytree(demo, dest, ignore=skip)
    seed = dest / "seed0"
    if stage < 0:  # AT trained, AT-AWP killed after its first epoch: no analysis at all
        shutil.rmtree(seed / "eval")
        shutil.rmtree(seed / "analysis")
        run = seed / "at_awp"
        lines = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text(lines[0] + "\n")
        for name in ("epoch_002.pt", "epoch_003.pt", "best.pt"):
            (run / "checkpoints" / name).unlink()
        (run / "checkpoints" / "epoch_001.pt").replace(run / "checkpoints" / "last.pt")
        return dest
    for k, (_, summaries, units) in enumerate(DEMO_STAGES):
        if k < stage:
            continue
        for rel in summaries + (units if k > stage else []):
            path = seed / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    name, _, units = DEMO_STAGES[stage]
    if name in ("landscape", "trajectory"):  # a surface killed at its first points
        import h5py

        for h5 in (seed / units[0]).glob("*.h5"):
            if h5.name.endswith(".directions.h5"):
                continue
            with h5py.File(h5, "r+") as f:
                computed = f["computed"][()]
                computed.reshape(-1)[1:] = 0
                f["computed"][...] = computed
                for key in f:
                    if key.endswith(("_loss", "_acc")):
                        values = f[key][()].astype("float64")
                        values.reshape(-1)[1:] = float("nan")
                        f[key][...] = values
    return dest


@pytest.mark.parametrize(
    "stage", range(-1, len(DEMO_STAGES)), ids=["training"] + [s[0] for s in DEMO_STAGES]
)
def test_the_report_of_a_demo_killed_in_a_stage_shows_what_exists(tiny_demo, tmp_path, stage):
    from awp_landscape.cli import main

    folder = _killed(tiny_demo, tmp_path / "demo", stage)
    # the report's own files (report.html, .md and report_files/) are rewritten; nothing else
    before = {k: v for k, v in snapshot(folder).items() if not k.startswith("report")}
    assert main(["report", str(folder)]) == 0
    md = (folder / "report.md").read_text()
    assert (folder / "report.html").exists() and "Traceback" not in md
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    if stage < len(DEMO_STAGES) - 1 or stage < 0:
        assert "## Not measured" in md
        assert "analysis/certify.json (awp certify)" in md  # the last stage is always missing
    if stage > 1:
        assert "Robust generalization gap" in md  # what exists is shown


# ------------------------------------------------------------------ ranges, merges, sets, resume
def test_the_python_api_refuses_what_the_cli_refuses():
    """The range lives with the field: the config raises the line the CLI prints."""
    from analysis.certify_units import CertifyConfig
    from analysis.curvature import HessianConfig
    from analysis.weight_spectra import SpectraConfig

    for make, said in (
        (lambda: CertifyConfig(n=0), "n=0 is outside [1, 10000000] (--samples)"),
        (lambda: CertifyConfig(noise_levels=(-0.5,)), "noise_levels=-0.5 is outside [0, 4]"),
        (lambda: CertifyConfig(sigmas=(float("nan"),)), "sigmas=nan is outside [0, 4] (--sigma)"),
        (lambda: SpectraConfig(fft_size=100000), "fft_size=100000 is outside [0, 1024]"),
        (lambda: HessianConfig(lanczos_vectors=100000), "lanczos_vectors=100000 is outside"),
    ):
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value).startswith(said), str(err.value)
    from awp_landscape.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["certify"]
    assert "range [1, 10000000]" in " ".join(sub.format_help().split())  # and in --help


def test_a_request_larger_than_the_split_is_capped_with_a_notice(world, tmp_path):
    args = ["--n-examples", "100000", "--top-k", "1", "--lanczos-vectors", "8", "--eig-tol",
            "1e-2", "--attack-steps", "1", "--out", tmp_path / "h", "--no-figures",
            *QUICK]  # fmt: skip
    proc = awp("curvature", world["ours"], *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--n-examples 100000 asks for more than the 20 images of the split" in proc.stderr
    assert "train n=20," in proc.stdout and "100000" not in proc.stdout
    rows = json.loads((tmp_path / "h" / "curvature.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [20]


def test_hessian_on_an_overwritten_checkpoint_replaces_its_row_and_keeps_the_others(
    world, tmp_path
):
    from awp.io import sha256_file

    ck = save(tmp_path / "a" / "checkpoints" / "last.pt", classes=3, data=world["data3"], seed=1)
    other = save(tmp_path / "b" / "checkpoints" / "last.pt", classes=3, data=world["data3"],
                 seed=2)  # fmt: skip
    out = tmp_path / "h"
    args = ["--n-examples", "4", "--top-k", "1", "--lanczos-vectors", "8", "--eig-tol", "1e-2",
            "--attack-steps", "1", "--out", out, "--no-figures", *QUICK]  # fmt: skip
    assert awp("curvature", ck, other, *args).returncode == 0
    old = sha256_file(ck)
    save(ck, classes=3, data=world["data3"], seed=3)  # retrained in place
    proc = awp("curvature", ck, *args)  # only the changed checkpoint
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"changed since it was measured (sha256 {old[:8]}" in proc.stderr
    rows = json.loads((out / "curvature.json").read_text())["rows"]
    assert sorted(r["checkpoint"] for r in rows) == sorted([str(ck), str(other)])
    assert {r["sha256"] for r in rows} == {sha256_file(ck), sha256_file(other)}
    assert len((out / "curvature.csv").read_text().splitlines()) == 3  # header + one per file


def test_a_full_disk_names_the_file_and_leaves_the_tables_as_they_were(world, tmp_path):
    out = tmp_path / "h"
    assert awp("hist", world["ours"], "--out", out, "--no-figures", *QUICK).returncode == 0
    before = snapshot(out)
    proc = awp("hist", world["e1"], "--out", out, "--no-figures", *QUICK, max_file_bytes=512)
    assert proc.returncode == 2
    line = error_line(proc, "hist")
    assert re.search(r"cannot write .*/h/\S+: File too large; free space or choose", line), line
    after = snapshot(out)
    assert not [k for k in after if k.endswith(".tmp")]  # no temp file left
    visible = {k: v for k, v in after.items() if not Path(k).name.startswith(".")}
    assert visible == {k: v for k, v in before.items() if not Path(k).name.startswith(".")}


def test_a_result_set_is_renamed_only_when_every_file_is_written(tmp_path):
    from awp.io import atomic_write_set

    good, bad = tmp_path / "t.json", tmp_path / "afile" / "t.csv"
    good.write_text("old\n")
    (tmp_path / "afile").write_text("a file, not a folder")
    with pytest.raises(OSError) as err:
        atomic_write_set({good: "new\n", bad: "new\n"})
    assert str(bad.parent) in str(err.value)  # the path in the way
    assert good.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "t.json"
    ]  # fmt: skip
    atomic_write_set({good: "new\n", tmp_path / "t.csv": "new\n"})
    assert good.read_text() == (tmp_path / "t.csv").read_text() == "new\n"


def test_a_rewrite_with_the_same_bytes_leaves_the_file_untouched(tmp_path):
    """A rerun that changes nothing touches nothing: the same bytes are not written again (the
    file keeps its inode and its time), other bytes are (atomically, a new file)."""
    from awp.io import atomic_write_set, atomic_write_text, write_json

    path, other = tmp_path / "r.json", tmp_path / "r.csv"
    write_json(path, {"a": 1})
    atomic_write_text(other, "x\n")
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, other)}
    write_json(path, {"a": 1})
    assert atomic_write_set({path: path.read_text(), other: "x\n"}) == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, other)} == stamps
    assert atomic_write_set({path: path.read_text(), other: "y\n"}) == [other]
    assert other.read_text() == "y\n" and other.stat().st_ino != stamps[other][0]
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and path.stat().st_ino != stamps[path][0]


def test_plot_marks_an_incomplete_surface(tmp_path):
    loss = np.where(np.arange(41) < 15, np.linspace(1, 2, 41), np.nan)
    path = _h5(tmp_path / "half.h5", loss)
    proc = awp("plot", path, "--formats", "png")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "half.h5 is incomplete: 15 of 41 points computed" in proc.stdout
    from awp_landscape.commands.plot import _marked
    from landscape.storage import read_surface

    assert _marked(read_surface(path), "A") == "A (15 of 41 points)"


def test_a_mixed_trajectory_runs_with_allow_mixed_and_says_so(world, tmp_path):
    args = [world["e1"], world["e2"], world["stranger"], "--kind", "trajectory", "--out",
            tmp_path / "t.h5", "--n-train", "0", "--n-test", "4", "--x=-1:1:2", "--y=-1:1:2",
            "--attack", "none", "--allow-mixed", *QUICK]  # fmt: skip
    proc = awp("landscape", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"WARNING .*come from 2 runs .*--allow-mixed: computed as given", proc.stderr)


def test_resume_from_repairs_a_corrupt_last_pt(world, tmp_path):
    out = tmp_path / "run"
    args = _train_args(world["data3"], out, "--save-every", "1", "--epochs", "2")
    assert awp(*args).returncode == 0
    last, epoch2 = out / "checkpoints" / "last.pt", out / "checkpoints" / "epoch_002.pt"
    last.write_bytes(last.read_bytes()[:300])  # truncated
    proc = awp(*args, "--resume-from", epoch2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "last.pt rewritten from epoch_002.pt" in proc.stderr
    assert last.read_bytes() == epoch2.read_bytes()  # the state of epoch 2, whole again
    proc = awp(*args, "--resume")  # no loop back to --resume-from
    assert proc.returncode == 0 and "--resume-from" not in proc.stderr, proc.stderr[-2000:]


def test_every_numeric_flag_of_the_measurement_configs_has_a_range():
    """A number the CLI accepts has its valid range declared with it (opt(..., bounds=...))."""
    import dataclasses
    import typing

    from analysis.certify_units import CertifyConfig
    from analysis.config import AdaptiveSharpnessConfig, ConnectConfig, QuantizeConfig
    from analysis.curvature import HessianConfig
    from analysis.flatness import FlatnessConfig
    from analysis.gap import GapConfig
    from analysis.pacbayes import PacBayesConfig
    from analysis.sigma import SigmaSearchConfig
    from analysis.weight_spectra import SpectraConfig
    from analysis.worst_case import WorstCaseConfig
    from awp.config import AttackConfig, AWPConfig, resolve_type
    from awp.evaluate import EvalConfig
    from awp.models import ModelConfig
    from awp_landscape.plans import ReproduceConfig
    from awp_landscape.sweep_config import SweepConfig
    from landscape.config import EigenMapConfig, SurfaceConfig

    def numeric(tp: object) -> bool:
        tp = resolve_type(tp)
        return tp in (int, float) or (
            typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (int, float)
        )

    from awp.data import DataConfig
    from awp_landscape.pipeline import AnalysisPlan, DemoConfig
    from awp_landscape.plans import SweepPlan, TrainingPlan

    configs = (AttackConfig, AWPConfig, TrainConfig, ModelConfig, EvalConfig, SurfaceConfig,
               GapConfig, FlatnessConfig, WorstCaseConfig, SigmaSearchConfig, PacBayesConfig,
               HessianConfig, SpectraConfig, CertifyConfig, TrainingPlan, AnalysisPlan,
               SweepPlan, DemoConfig, DataConfig, ConnectConfig, EigenMapConfig,
               ReproduceConfig, SweepConfig, AdaptiveSharpnessConfig, QuantizeConfig)  # fmt: skip
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in configs
        for f in dataclasses.fields(cls)
        if numeric(typing.get_type_hints(cls)[f.name]) and "bounds" not in f.metadata
    ]
    assert not missing, missing


def _parsers(parser, prog: str = "awp"):
    """(prog, action) of every flag of ``parser`` and, recursively, of its subcommands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")
        else:
            yield prog, action


def test_every_numeric_flag_of_every_command_states_its_range():
    """Walks every parser of `awp` (every subcommand, every flag, the hand-written ones
    included): a flag whose value is a number says its range in --help (`range [low, high]`,
    from opt(..., bounds=...) or add_bounded_argument). Hidden deprecated spellings share
    their flag's range."""
    import argparse

    from awp_landscape.cli import build_parser

    def numeric(action: argparse.Action) -> bool:
        try:
            value = action.type("1") if action.type is not None else None
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return False
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    flags = [(prog, a) for prog, a in _parsers(build_parser()) if numeric(a)]
    assert len(flags) > 200  # every command's parser was built and walked
    missing = [
        f"{prog} {'/'.join(a.option_strings) or a.dest}"
        for prog, a in flags
        if a.help != argparse.SUPPRESS and "range [" not in (a.help or "")
    ]
    assert not missing, missing


def test_a_hand_written_numeric_flag_refuses_what_its_help_excludes(capsys):
    from awp_landscape.cli import main

    for argv, said in (
        (["hist", "x.pt", "--bins", "0"], "argument --bins: 0 is outside [1, 100000]"),
        (["correlate", "t.json", "--n-boot=-1"], "argument --n-boot: -1 is outside [0, 1000000]"),
        (["plot", "s.h5", "--vtp-points", "5000"], "5000 is outside [0, 4096]: the mesh holds"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err, argv
    proc = awp("correlate", "t.json", "--confidence", "2")
    assert proc.returncode == 2 and "argument --confidence: 2 is outside [0, 1]" in proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "epochs=0 is outside [1, 100000] (--epochs)"),
        (["demo", "--gamma", "2"], "is outside [0, 1] (--gamma)"),
        (["sweep", "--flatness-alpha", "5"], "is outside [0, 1] (--flatness-alpha)"),
        (["demo", "--landscape-points", "0"], "landscape_points=0 is outside [1, 10001]"),
        (["sweep", "--eval-every", "0"], "eval_every=0 is outside [1, inf]"),
    ],
)
def test_the_plans_of_demo_and_sweep_refuse_out_of_range_sizes_in_one_line(tmp_path, argv, message):
    from awp_landscape.pipeline import DemoConfig
    from awp_landscape.plans import TrainingPlan

    proc = awp(*argv, "--out", tmp_path / "out")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"epochs=0 is outside"):  # the Python API alike
        TrainingPlan(epochs=0)
    with pytest.raises(ValueError, match=r"gamma=2(\.0)? is outside"):
        DemoConfig(gamma=2)


def test_sizes_that_cost_time_or_memory_say_the_cost(caplog):
    from analysis.certify_units import CertifyConfig
    from analysis.curvature import HessianConfig
    from awp_landscape.measures.certify import _say_cost

    _say_cost(CertifyConfig(n=100_000), 500, "AT")  # the published protocol: 2e8 passes
    assert "AT: 2e+08 noisy forward passes (500 images x 4e+05 each" in caplog.text
    caplog.clear()
    _say_cost(CertifyConfig(n=1000, n_test=10), 10, "AT")
    assert caplog.text == ""
    HessianConfig(top_k=5).check_sizes(55_000_000)  # a WRN-34-10's weights
    assert "take 8.2 GiB (20 vectors of float64)" in caplog.text
