"""Independent runs as jobs (awp_landscape.launch): submitit's local executor against a serial
run, a failed job's log and the others' results, and the launcher's one-line refusals."""

import json
import operator
import os
import pickle
from functools import partial
from pathlib import Path

import pytest
import torch

from awp_landscape import launch
from awp_landscape.cli import main
from awp_landscape.launch import LaunchConfig, Unit, UnitsFailed, local_shares, run_phases
from awp_landscape.pipeline import DemoConfig, seed_units
from awp_landscape.sweep import SweepConfig, grid_points, sweep_units
from tests.helpers import make_image_folder

pytest.importorskip("submitit")

TINY = ["--model", "smallcnn", "--width", "0.125", "--epochs", "2", "--batch-size", "16",
        "--val-size", "8", "--train-size", "0", "--eval-n-train", "8", "--eval-n-test", "8",
        "--eval-steps", "1", "--eval-every", "1", "--save-every", "2", "--eval-n", "8",
        "--gap-n", "8", "--analysis-steps", "1", "--flatness-n", "8", "--flatness-samples", "1",
        "--worst-steps", "1", "--landscape-points", "3", "--landscape-n", "8", "--no-progress",
        "--device", "cpu", "--gammas", "0", "0.01"]  # fmt: skip

#: the wall-clock fields of a metrics.jsonl record (everything else is a result)
TIMINGS = ("seconds", "eval_seconds")


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all("seconds" in r for r in records)  # the fields dropped do exist
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _summary(out: Path) -> list[tuple]:
    rows = json.loads((out / "sweep.json").read_text())["summary"]
    return [(r["point"], r["gamma"], r["measure"], r["values"]) for r in rows
            if r["measure"] != "seconds per run"]  # fmt: skip


def test_two_local_workers_give_a_serial_runs_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWP_CACHE", str(tmp_path / "cache"))
    # two cores for two workers: one thread per job, as the serial run here (conftest)
    monkeypatch.setattr(launch, "available_cores", lambda: 2)
    assert torch.get_num_threads() == 1
    data = make_image_folder(tmp_path / "data", n_train=32, n_test=16)
    serial, jobs = tmp_path / "serial", tmp_path / "jobs"
    args = ["sweep", "--dataset", str(data), *TINY]
    assert main([*args, "--out", str(serial)]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(jobs), "--launcher", "local", "--workers", "2"]) == 0
    shown = capsys.readouterr().out
    # one line per state change of each job: 2 trainings, then 1 measurement
    for name in ("seed0 gamma_0: training", "seed0 gamma_0.01: training", "seed0: measurements"):
        for state in ("queued", "running", "done"):
            assert f"{name}: {state}" in shown, (name, state, shown)
    assert "/3] " not in shown and "[job 1/2] " in shown and "[job 1/1] " in shown
    for g in ("gamma_0", "gamma_0.01"):
        assert _metrics(jobs / "seed0" / g) == _metrics(serial / "seed0" / g)
        # bytes of the weights too: the same training, not just the same records
        ckpt = Path("seed0") / g / "checkpoints" / "last.pt"
        a = torch.load(serial / ckpt, map_location="cpu", weights_only=False)["state_dict"]
        b = torch.load(jobs / ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _summary(jobs) == _summary(serial) and _summary(serial)
    # the measurement job reused the runs the training jobs finished
    logs = "".join(p.read_text() for p in (jobs / "launch").glob("*_log.out"))
    assert logs.count("reusing the finished run") == 2
    # the launcher is no setting of the folder: a rerun with jobs reuses the serial run's, with
    # no job for a finished training
    assert "launch" not in (serial / "sweep_config.json").read_text()
    stamp = (serial / "seed0" / "gamma_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main([*args, "--out", str(serial), "--launcher", "local"]) == 0
    assert (serial / "seed0" / "gamma_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    shown = capsys.readouterr().out
    assert "training" not in shown and "[job 1/1] seed0: measurements: done" in shown
    assert _summary(serial) == _summary(jobs)


def test_a_failed_job_shows_its_log_and_the_others_keep_their_results(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(launch, "available_cores", lambda: 6)
    first = [
        Unit("a: writes", partial(Path.write_text, tmp_path / "a", "a"), group="a"),
        Unit("b: divides by zero", partial(operator.truediv, 1, 0), group="b"),
        Unit("c: threads", torch.get_num_threads, group="c"),
    ]
    then = [
        Unit("a: after", partial(Path.write_text, tmp_path / "a2", "a2"), group="a"),
        Unit("b: after", partial(Path.write_text, tmp_path / "b2", "b2"), group="b"),
    ]
    cfg = LaunchConfig(launcher="local", workers=2, launch_logs=str(tmp_path / "logs"))
    with pytest.raises(UnitsFailed) as err:
        run_phases([first, then], cfg, out=tmp_path)
    assert err.value.failed == ["b: divides by zero", "b: after"]
    assert "2 of 5 jobs did not finish" in str(err.value)
    # the others ran to their end: a's both phases, and b's phase 2 only was skipped
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "a2").read_text() == "a2"
    assert not (tmp_path / "b2").exists()
    shown = capsys.readouterr().out
    failed = next(line for line in shown.splitlines() if "divides by zero: failed" in line)
    log = Path(failed.split("log: ")[1])
    assert log.parent == tmp_path / "logs" and log.exists()
    assert "ZeroDivisionError" in log.read_text()
    tail = shown.split(failed)[1].splitlines()
    assert any("ZeroDivisionError" in line and line.startswith("    | ") for line in tail[:21])
    assert "b: after: skipped" in shown


def test_each_job_gets_its_share_of_the_cores_or_its_own_gpu(tmp_path, monkeypatch):
    assert local_shares(2, cores=6, gpus=[]) == [(3, None), (3, None)]
    assert local_shares(4, cores=2, gpus=[]) == [(1, None)] * 4  # at least one thread
    assert local_shares(3, cores=8, gpus=["4", "5"]) == [(2, "4"), (2, "5"), (2, "4")]
    monkeypatch.setattr(launch, "available_cores", lambda: 6)
    monkeypatch.setattr(launch, "_visible_gpus", lambda: ["5", "7"])
    cfg = LaunchConfig(launcher="local", workers=2, launch_logs=str(tmp_path / "logs"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    units = [Unit("threads", torch.get_num_threads),
             Unit("gpu", partial(os.getenv, "CUDA_VISIBLE_DEVICES")),
             Unit("path", partial(os.getenv, "PYTHONPATH"))]  # fmt: skip
    [[threads, gpu, path]] = run_phases([units], cfg, out=tmp_path)
    # submitit's local executor hides every GPU from a job; the unit sets its slot's own
    assert threads == 3 and gpu == "7"
    # a job imports this checkout's code, not another install of the package
    assert path == str(Path(launch.__file__).resolve().parents[1])
    # no launcher: the units run here, one after another, and touch no thread count
    serial = [[Unit("sum", partial(operator.add, 1, 2)), Unit("threads", torch.get_num_threads)]]
    assert run_phases(serial, LaunchConfig(), out=tmp_path) == [[3, 1]]


def test_the_units_pickle_and_name_every_run(tmp_path):
    demo = DemoConfig(out=str(tmp_path / "demo"), seeds=(0, 3))
    trainings, analyses = seed_units(demo)
    assert [u.name for u in trainings] == [
        "seed0 AT: training", "seed0 AT-AWP: training", "seed3 AT: training",
        "seed3 AT-AWP: training"]  # fmt: skip
    assert [(u.name, u.group) for u in analyses] == [
        ("seed0: analyses", "seed0"), ("seed3: analyses", "seed3")]  # fmt: skip
    sweep = SweepConfig(out=str(tmp_path / "sweep"), gammas=(0, 0.01), seeds=(1,),
                        grid=("epochs=2,3",))  # fmt: skip
    trainings, measures = sweep_units(sweep, grid_points(sweep))
    assert len(trainings) == 4 and len(measures) == 2
    assert measures[1].group == "epochs=3 seed1"
    for unit in [*trainings, *measures, *seed_units(demo)[0]]:
        assert pickle.loads(pickle.dumps(unit)).name == unit.name  # no lambdas: jobs can run them
    # a requeued job (preempted, or past its time limit) resubmits the same unit
    resubmitted = measures[0].checkpoint()
    assert resubmitted.function is measures[0] and resubmitted.args == ()


def test_slurm_without_sbatch_says_so_in_one_line_before_anything_runs(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--dataset", str(tmp_path), *TINY]
    assert main([*args, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sbatch and srun" in err and "--launcher local" in err
    assert not out.exists()
    assert main(["demo", "--out", str(out), "--launcher", "slurm"]) == 2
    assert "sbatch and srun" in capsys.readouterr().err and not out.exists()


def test_bad_launcher_settings_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), "--launcher", "cloud"]) == 2
    assert "choose one of none, local, slurm" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--launcher", "slurm", "--sbatch", "account"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--launcher", "local", "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert not out.exists()


def test_slurm_parameters_are_submitits():
    from submitit.slurm.slurm import _get_default_parameters

    cfg = LaunchConfig(launcher="slurm", partition="gpu", gpus_per_job=1, time_min=90,
                       array_parallelism=4, sbatch=("account=abc", "--qos=high"))  # fmt: skip
    params = launch.slurm_parameters(cfg)
    assert set(params) <= set(_get_default_parameters())
    assert params == {"partition": "gpu", "gpus_per_node": 1, "time": 90,
                      "array_parallelism": 4,
                      "additional_parameters": {"account": "abc", "qos": "high"}}  # fmt: skip


def test_a_launcher_without_submitit_names_the_extra_before_anything_runs(
    tmp_path, capsys, monkeypatch
):
    import awp.extras

    real = awp.extras.importlib.import_module

    def without_submitit(name, *args):
        if name.startswith("submitit"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(awp.extras.importlib, "import_module", without_submitit)
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), "--launcher", "local"]) == 2
    assert "pip install 'awp-landscape[cluster]'" in capsys.readouterr().err
    assert not out.exists()
    # the default launcher needs no submitit
    assert LaunchConfig().serial and LaunchConfig().check() is None


class _FakeSlurmJob:
    """A job of :class:`_FakeSlurm`: goes through ``states``, then runs its unit."""

    def __init__(self, unit, k, folder):
        self.unit, self.job_id = unit, f"100_{k}"
        self.states = ["PENDING", "RUNNING"]
        self.paths = type("Paths", (), {"stderr": folder / f"{self.job_id}_0_log.err"})()
        self.error = self.value = None

    @property
    def state(self):  # sacct's state at the last look
        return self.states[self.looks - 1]

    def done(self):
        self.looks = getattr(self, "looks", 0) + 1
        if self.looks <= len(self.states):
            return False
        try:
            self.value = self.unit()
        except Exception as e:  # what submitit reports for a failed job
            self.error = e
            self.paths.stderr.write_text("Traceback (most recent call last):\n" + repr(e) + "\n")
        return True

    def exception(self):
        return self.error

    def result(self):
        return self.value


class _FakeSlurm:
    """submitit's SlurmExecutor as the launcher uses it, with jobs that run here."""

    made = []

    def __init__(self, folder):
        self.folder, self.params = Path(folder), {}
        self.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    def submit_array(self, units):
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        return [_FakeSlurmJob(u, k, self.folder.parent) for k, u in enumerate(units)]


def test_slurm_jobs_are_one_array_polled_to_their_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(launch.POLL_S, "slurm", 0)
    fake = type("submitit", (), {"SlurmExecutor": _FakeSlurm})
    cfg = LaunchConfig(launcher="slurm", partition="gpu", gpus_per_job=1, array_parallelism=2)
    units = [Unit("ok", partial(operator.add, 1, 2)), Unit("bad", partial(operator.truediv, 1, 0))]
    done = launch._run_slurm(fake, units, cfg, tmp_path / "logs")
    assert done == [(True, 3), (False, None)]
    executor = _FakeSlurm.made[-1]
    assert executor.folder == tmp_path / "logs" / "%j"
    assert executor.params == launch.slurm_parameters(cfg)
    shown = capsys.readouterr().out.splitlines()
    assert [line.split("] ")[1] for line in shown if "] ok:" in line] == [
        "ok: queued", "ok: running", "ok: done (job 100_0)"]  # fmt: skip
    failed = next(line for line in shown if "bad: failed" in line)
    assert failed.endswith(f"log: {tmp_path / 'logs' / '100_1_0_log.err'}")
    assert "    | ZeroDivisionError('division by zero')" in shown


KILLED_PARENT = """
import sys
from functools import partial
from awp_landscape.launch import LaunchConfig, Unit, run_phases
from tests.helpers import write_pid_and_sleep

out, pid = sys.argv[1], sys.argv[2]
unit = Unit("sleeps", partial(write_pid_and_sleep, pid, 300))
run_phases([[unit]], LaunchConfig(launcher="local", workers=1), out=__import__("pathlib").Path(out))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (finished, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads process states from /proc")
def test_a_killed_parent_cancels_its_local_jobs(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "job.pid"
    root = Path(launch.__file__).resolve().parents[1]
    # started as `nohup awp sweep ... &` starts it: ignoring SIGINT, which its jobs inherit
    # unless the launcher gives them a handler (the cancel of a local job is a SIGINT)
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path / "out"), str(pid_file)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        job = int(pid_file.read_text())
        assert _alive(job)
        parent.send_signal(signal.SIGTERM)  # `kill`, a scheduler's stop, a closed terminal
        shown, _ = parent.communicate(timeout=60)
        assert parent.returncode != 0, shown
        # the job went with its parent instead of sleeping on for five minutes
        deadline = time.monotonic() + 30
        while _alive(job) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(job), shown
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
