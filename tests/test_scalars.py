"""TensorBoard event files of training: read back with tensorboard's own event reader."""

import json

import pytest

from awp.scalars import tag_of
from awp.train import TENSORBOARD_IN_RUN, train
from awp_landscape.cli import build_parser
from awp_landscape.commands.train import config_from
from tests.helpers import synthetic_bundle
from tests.test_train import tiny_config


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file under ``log_dir``, by TensorBoard's reader."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="pip install -e '.[dev]' brings tensorboard",
    )
    acc = accumulator.EventAccumulator(str(log_dir), size_guidance={accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tags_group_what_they_measure():
    assert tag_of("test_robust_acc") == "accuracy/test_robust"
    assert tag_of("val_nat_acc") == "accuracy/val_natural"
    assert tag_of("train_robust_loss") == "loss/train_robust"
    assert tag_of("train_loss") == "loss/train_objective"
    assert tag_of("awp_v_norm_ratio") == "awp/v_norm_over_w_norm"
    assert tag_of("something_new") == "other/something_new"


def test_event_files_hold_every_number_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' brings tensorboard")
    cfg = tiny_config(
        tmp_path / "run",
        epochs=3,
        awp=True,
        gamma=0.01,
        awp_warmup=1,
        eval_every=2,
        tensorboard=TENSORBOARD_IN_RUN,
    )
    assert cfg.tensorboard_dir == tmp_path / "run" / "tensorboard"
    train(cfg, progress=False, data=synthetic_bundle())
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    for r in records:
        for key, value in r.items():
            if key == "epoch":
                continue
            (hit,) = [v for step, v in scalars[tag_of(key)] if step == r["epoch"]]
            assert hit == pytest.approx(float(value), rel=1e-6), key
    # every epoch's loss, accuracy and lr; the evaluation where it ran (epochs 2 and 3)
    assert [s for s, _ in scalars["loss/train_objective"]] == [1, 2, 3]
    assert [s for s, _ in scalars["schedule/lr"]] == [1, 2, 3]
    assert [s for s, _ in scalars["accuracy/test_robust"]] == [2, 3]
    # AWP's ||v|| / ||w||: none in the warm-up epoch, then gamma (one ascent step from v = 0
    # puts every layer on its sphere ||v_l|| = gamma ||w_l||)
    ratio = scalars["awp/v_norm_over_w_norm"]
    assert [s for s, _ in ratio] == [2, 3]
    assert all(v == pytest.approx(0.01, rel=1e-5) for _, v in ratio)
    assert "awp_v_norm_ratio" not in records[0] and records[1]["awp_v_norm_ratio"] > 0


def test_a_resumed_run_shows_each_epoch_once(tmp_path):
    """Resumed from epoch 2 of a finished 4-epoch run, epochs 3 and 4 are trained again: the
    events written the first time are purged, so each step appears once."""
    pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' brings tensorboard")
    cfg = tiny_config(tmp_path / "run", epochs=4, save_every=1, tensorboard=str(tmp_path / "tb"))
    data = synthetic_bundle()
    train(cfg, progress=False, data=data)
    again = train(
        cfg, progress=False, data=data, resume_from=tmp_path / "run/checkpoints/epoch_002.pt"
    )
    scalars = read_scalars(tmp_path / "tb")["loss/train_objective"]
    assert [s for s, _ in scalars] == [1, 2, 3, 4]
    assert [v for _, v in scalars][2:] == pytest.approx(
        [r["train_loss"] for r in again.history][2:]
    )


def test_the_flag_alone_means_the_run_folder(tmp_path):
    parse = build_parser().parse_args
    alone = config_from(parse(["train", "--out", str(tmp_path / "r"), "--tensorboard"]))
    assert alone.tensorboard_dir == tmp_path / "r" / "tensorboard"
    given = config_from(parse(["train", "--tensorboard", str(tmp_path / "tb"), "--epochs", "3"]))
    assert given.tensorboard_dir == tmp_path / "tb" and given.epochs == 3
    assert config_from(parse(["train"])).tensorboard_dir is None


def test_missing_tensorboard_is_one_line(monkeypatch):
    import awp.extras

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(awp.extras.importlib, "import_module", missing)
    from awp.scalars import open_writer

    with pytest.raises(ImportError, match=r"pip install 'awp-landscape\[tensorboard\]'"):
        open_writer("unused")


def test_demo_and_sweep_runs_log_into_their_folders(tmp_path):
    from awp_landscape.pipeline import DemoConfig, record_config
    from awp_landscape.plans import TrainingPlan

    plan = TrainingPlan(tensorboard=True)
    assert plan.train_config(tmp_path / "at", seed=0).tensorboard_dir == tmp_path / "at/tensorboard"
    assert TrainingPlan().train_config(tmp_path / "at", seed=0).tensorboard_dir is None
    # switching TensorBoard on for a rerun of a demo folder changes no result: allowed
    record_config(tmp_path, "demo_config.json", DemoConfig(out=str(tmp_path)))
    record_config(tmp_path, "demo_config.json", DemoConfig(out=str(tmp_path), training=plan))
    args = build_parser().parse_args(["demo", "--tensorboard"])
    assert args.tensorboard is True
