"""Independent runs as jobs: one after another here, several at once here, or a Slurm array.

A study is many independent units of work (a training run; one seed's analyses). ``awp
sweep``, ``awp demo --seeds`` and ``awp reproduce`` hand them to :func:`run_phases` with a
:class:`LaunchConfig`:

- ``--launcher none`` (the default): the commands run their loops in this process, as always;
- ``--launcher local --workers N``: N jobs at once on this machine through submitit's local
  executor, each with ``cores // N`` threads (at least 1), or its own GPU when GPUs exist;
- ``--launcher slurm``: one submitit job array per phase (partition, GPUs per job, time limit,
  array parallelism, extra sbatch options); a job preempted or past its time limit is requeued
  (:meth:`Unit.checkpoint`) and resumes from its run folder.

The parent waits, prints one line per change of a job's state (queued, running, done, failed),
and for a failed job its log path and the end of its log; the other jobs run to their end and
keep their results, and :class:`UnitsFailed` is raised once all have finished. Every unit reuses
what is finished on disk (training resumes from ``last.pt``; analyses skip finished files), so a
rerun, with any launcher, retries only what failed.

submitit is an optional dependency (``pip install 'awp-landscape[cluster]'``), imported only
when a launcher is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from awp.config import check_bounds, opt
from awp.extras import require
from awp_landscape.console import CLIError, say
from awp_landscape.flags import add_dataclass_arguments, add_run_arguments

LAUNCHERS = ("none", "local", "slurm")
#: lines of a failed job's stderr shown by the parent
LOG_TAIL = 20
#: seconds between two looks at the jobs (local; Slurm, whose states come from sacct)
POLL_S = {"local": 0.2, "slurm": 10.0}


@dataclass(frozen=True)
class LaunchConfig:
    """How the independent runs of a study are executed. None of it changes a result, so it is
    not recorded in the study's settings: a rerun with another launcher reuses the folder."""

    launcher: str = opt(
        "none",
        "how independent runs execute: none (one after another in this process), local "
        "(--workers jobs at once on this machine), slurm (a Slurm job array); needs submitit "
        "unless none",
        metavar="none|local|slurm",
    )
    workers: int = opt(
        2,
        "local: jobs at once; each gets cores // workers threads, or its own GPU",
        bounds=(1, 1024),
    )
    partition: str = opt("", "slurm: the partition (default: the cluster's default)")
    gpus_per_job: int = opt(0, "slurm: GPUs per job", bounds=(0, 64))
    time_min: int = opt(
        24 * 60,
        "local and slurm: time limit of a job in minutes; a job past it is requeued and resumes",
        bounds=(1, None),
    )
    array_parallelism: int = opt(
        64, "slurm: the most jobs of an array running at once", bounds=(1, None)
    )
    sbatch: tuple[str, ...] = opt(
        (),
        "slurm: extra sbatch options, each KEY=VALUE: account=abc qos=high mem=16G (default: none)",
        metavar="KEY=VALUE",
    )
    launch_logs: str = opt("", "folder of the jobs' logs (default: <out>/launch)", metavar="DIR")

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"--launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
        check_bounds(self)
        object.__setattr__(self, "sbatch", tuple(str(s) for s in self.sbatch))
        sbatch_options(self.sbatch)  # refuses a malformed one

    @property
    def serial(self) -> bool:
        """Whether the runs execute one after another in this process (no jobs)."""
        return self.launcher == "none"

    def check(self) -> None:
        """Refuse, before anything runs, a launcher that cannot start here.

        Raises:
            MissingDependencyError: submitit is not installed.
            CLIError: ``--launcher slurm`` on a machine without Slurm's sbatch and srun.
        """
        if self.serial:
            return
        require("submitit", purpose=f"--launcher {self.launcher}")
        if self.launcher == "slurm":
            missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
            if missing:
                raise CLIError(
                    f"--launcher slurm needs Slurm's {' and '.join(missing)}, not found on "
                    f"PATH: run on a Slurm login node, or use --launcher local"
                )


def add_pipeline_arguments(p: argparse.ArgumentParser, config: type) -> None:
    """The flags of a command that trains and measures runs as independent jobs (demo,
    reproduce, sweep): ``config``'s fields, ``--no-progress``, and the launcher's
    (:class:`LaunchConfig`) in a group of their own."""
    add_run_arguments(p, device=False)
    add_dataclass_arguments(p, config)
    add_dataclass_arguments(p.add_argument_group("independent runs as jobs"), LaunchConfig)


def sbatch_options(items: Sequence[str]) -> dict[str, str]:
    """``("account=abc", "qos=high")`` -> ``{"account": "abc", "qos": "high"}``.

    Raises:
        ValueError: an item without ``KEY=VALUE``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not value:
            raise ValueError(
                f"--sbatch {item!r}: write KEY=VALUE, an sbatch option without its dashes "
                f"(for example account=abc or mem=16G)"
            )
        out[key] = value
    return out


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One job: a picklable callable (a :func:`functools.partial` of a module-level function,
    never a lambda) and its name in the progress lines.

    ``group`` ties a second-phase unit to the first-phase units it needs (one seed's analyses
    to that seed's trainings). ``threads`` and ``gpu`` are set by the local launcher: the
    unit's torch thread count and its ``CUDA_VISIBLE_DEVICES``.
    """

    name: str
    fn: Callable[[], Any]
    group: str = ""
    threads: int | None = None
    gpu: str | None = None

    def __call__(self) -> Any:
        if self.gpu is not None:  # before anything initializes CUDA in this job
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        return self.fn()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook (as :class:`submitit.helpers.Checkpointable`): a job
        preempted or past its time limit is resubmitted as the same unit, which resumes from
        its run folder (training from ``last.pt``; analyses skip finished files)."""
        submitit = require("submitit", purpose="a requeued job")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class UnitsFailed(CLIError):
    """Some jobs failed (their logs were shown); raised once every other job has finished.

    Attributes:
        failed: the names of the units that failed or were skipped for a failed dependency.
    """

    def __init__(self, failed: Sequence[str], total: int) -> None:
        self.failed = list(failed)
        shown = ", ".join(self.failed[:6]) + (" ..." if len(self.failed) > 6 else "")
        super().__init__(
            f"{len(self.failed)} of {total} jobs did not finish ({shown}); their logs are named "
            f"above; the others' results are kept, and a rerun retries only what is missing"
        )


def available_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """This machine's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (honouring the parent's own)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    own = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return own[:n] if len(own) >= n > 0 else [str(k) for k in range(n)]


def local_shares(workers: int, *, cores: int, gpus: Sequence[str]) -> list[tuple[int, str | None]]:
    """Each local worker slot's (threads, GPU): ``cores // workers`` threads (at least 1), and
    with GPUs one per slot in turn (slots share GPUs when there are more slots)."""
    threads = max(1, cores // workers)
    return [(threads, gpus[k % len(gpus)] if gpus else None) for k in range(workers)]


# --------------------------------------------------------------------------- running
def run_phases(
    phases: Sequence[Sequence[Unit]], cfg: LaunchConfig, *, out: Path
) -> list[list[Any]]:
    """Run the phases in order, the units of a phase as independent jobs; returns each phase's
    results in unit order (None for a unit that failed or was skipped).

    A unit whose ``group`` had a failure in an earlier phase is skipped (one line says so);
    the other units run to their end.

    Raises:
        UnitsFailed: after all units finished, when any failed or was skipped.
    """
    cfg.check()
    failed_groups: set[str] = set()
    failed: list[str] = []
    results: list[list[Any]] = []
    total = sum(len(p) for p in phases)
    for units in phases:
        runnable = []
        for unit in units:
            if unit.group and unit.group in failed_groups:
                say(f"[job] {unit.name}: skipped (a run it needs failed)")
                failed.append(unit.name)
            else:
                runnable.append(unit)
        done = dict(zip(map(id, runnable), run_units(runnable, cfg, out=out)))
        for unit in runnable:
            if not done[id(unit)][0]:
                failed.append(unit.name)
                failed_groups.add(unit.group)
        results.append([done.get(id(u), (False, None))[1] for u in units])
    if failed:
        raise UnitsFailed(failed, total)
    return results


def run_units(units: Sequence[Unit], cfg: LaunchConfig, *, out: Path) -> list[tuple[bool, Any]]:
    """Run ``units`` and return, in order, (finished, result) for each; a failed unit's log
    path and log tail are printed and its result is None. Serial units run in this process,
    and their exceptions propagate."""
    if not units:
        return []
    if cfg.serial:
        return [(True, unit()) for unit in units]
    submitit = require("submitit", purpose=f"--launcher {cfg.launcher}")
    folder = Path(cfg.launch_logs) if cfg.launch_logs else Path(out) / "launch"
    if cfg.launcher == "local":
        return _run_local(submitit, units, cfg, folder)
    return _run_slurm(submitit, units, cfg, folder)


_STATES = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "CONFIGURING": "queued",
    "RESIZING": "queued",
    "SUSPENDED": "queued",
    "UNKNOWN": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
}


class _Board:
    """The parent's view of the jobs: one line per change of a job's state."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.units = units
        self.shown: dict[int, str] = {}
        self.width = len(str(len(units)))

    def show(self, i: int, state: str, extra: str = "") -> None:
        if self.shown.get(i) == state:
            return
        self.shown[i] = state
        n = len(self.units)
        say(f"[job {i + 1:>{self.width}}/{n}] {self.units[i].name}: {state}{extra}")

    def finish(self, i: int, job: Any) -> tuple[bool, Any]:
        """Show a finished job (with its log when it failed); (finished, result)."""
        error = job.exception()
        if error is None:
            self.show(i, "done", f" (job {job.job_id})")
            return True, job.result()
        self.show(i, "failed", f" (job {job.job_id}); log: {job.paths.stderr}")
        say(_tail(Path(job.paths.stderr), error))
        return False, None


def _tail(path: Path, error: BaseException) -> str:
    """The last :data:`LOG_TAIL` lines of a failed job's stderr, indented."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
    except OSError:
        lines = [f"(no log at {path}): {str(error).strip().splitlines()[-1:]}"]
    return "\n".join("    | " + line for line in lines)


@contextlib.contextmanager
def _this_code_importable() -> Iterator[None]:
    """Jobs import the code this process runs: a source checkout's root (with its
    pyproject.toml) is put first on their PYTHONPATH; an installed package needs nothing."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        yield
        return
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """Jobs started inside obey their cancel, which is a SIGINT (submitit's local jobs).

    A parent started in the background (``nohup awp sweep ... &``) ignores SIGINT, and a child
    inherits that: its jobs would ignore the cancel and run on after a kill of the parent.
    While a job starts, SIGINT is Python's default here, so that the job's interpreter sets
    its own handler; the parent ignores SIGINT again afterwards.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _kill_is_an_interrupt() -> Iterator[None]:
    """While local jobs run, a kill of this process (SIGTERM, or SIGHUP when its terminal
    closes) raises KeyboardInterrupt as Ctrl-C does, so that the jobs are cancelled with it.

    Without it the parent dies at once and its jobs (submitit runs each in a process of its
    own, which ignores SIGTERM) train on unseen, competing for the cores with whatever runs
    next. Slurm jobs are left to their end on purpose: they are visible in squeue, and a rerun
    reuses what they finished. Does nothing outside the main thread or for a signal someone
    else handles or ignores (a job started with nohup keeps ignoring SIGHUP).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    mine = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_DFL]
    for sig in mine:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig in mine:
            signal.signal(sig, signal.SIG_DFL)


def _run_local(
    submitit: Any, units: Sequence[Unit], cfg: LaunchConfig, folder: Path
) -> list[tuple[bool, Any]]:
    """At most ``cfg.workers`` jobs at once on this machine, each in its slot's share."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=cfg.time_min)
    shares = local_shares(cfg.workers, cores=available_cores(), gpus=_visible_gpus())
    board = _Board(units)
    pending = deque(range(len(units)))
    for i in pending:
        board.show(i, "queued")
    free = list(range(len(shares)))
    running: dict[int, tuple[Any, int]] = {}
    out: dict[int, tuple[bool, Any]] = {}
    with _kill_is_an_interrupt():
        try:
            while pending or running:
                while pending and free:
                    i, slot = pending.popleft(), free.pop(0)
                    threads, gpu = shares[slot]
                    with _this_code_importable(), _cancellable():
                        # a unit's own thread count (a demo's --threads) wins over the slot's share
                        threads = units[i].threads or threads
                        job = executor.submit(replace(units[i], threads=threads, gpu=gpu))
                    running[i] = (job, slot)
                    board.show(i, "running", f" (job {job.job_id}, log {job.paths.stderr})")
                for i, (job, slot) in list(running.items()):
                    if job.done():
                        out[i] = board.finish(i, job)
                        del running[i]
                        free.append(slot)
                time.sleep(POLL_S["local"])
        except BaseException:
            for job, _ in running.values():  # an interrupted or killed parent stops its jobs
                job.cancel(check=False)
            raise
    return [out[i] for i in range(len(units))]


def slurm_parameters(cfg: LaunchConfig) -> dict[str, Any]:
    """The parameters of submitit's Slurm executor for ``cfg``."""
    params: dict[str, Any] = {
        "time": cfg.time_min,
        "array_parallelism": cfg.array_parallelism,
        "additional_parameters": sbatch_options(cfg.sbatch),
    }
    if cfg.partition:
        params["partition"] = cfg.partition
    if cfg.gpus_per_job:
        params["gpus_per_node"] = cfg.gpus_per_job
    return params


def _run_slurm(
    submitit: Any, units: Sequence[Unit], cfg: LaunchConfig, folder: Path
) -> list[tuple[bool, Any]]:
    """One job array; the parent polls the jobs until every one has finished."""
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(**slurm_parameters(cfg))
    with _this_code_importable():
        jobs = executor.submit_array(list(units))
    board = _Board(units)
    out: dict[int, tuple[bool, Any]] = {}
    try:
        while len(out) < len(jobs):
            for i, job in enumerate(jobs):
                if i in out:
                    continue
                if job.done():
                    out[i] = board.finish(i, job)
                else:
                    board.show(i, _STATES.get(str(job.state).split()[0], "queued"))
            if len(out) < len(jobs):
                time.sleep(POLL_S["slurm"])
    except BaseException:
        for i, job in enumerate(jobs):
            if i not in out:
                job.cancel(check=False)
        raise
    return [out[i] for i in range(len(units))]
