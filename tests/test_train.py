import dataclasses
import json

import pytest
import torch

from awp.checkpoint import load_checkpoint
from awp.config import from_dict, to_dict
from awp.data import DataConfig
from awp.train import TrainConfig, lr_at, train
from tests.helpers import synthetic_bundle


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        data=DataConfig(dataset="synthetic-in-memory", val_size=0),
        model="smallcnn",
        epochs=4,
        batch_size=32,
        lr=0.05,
        attack_steps=2,
        step_size=4 / 255,
        eval_steps=2,
        train_eval_size=32,
        eval_batch_size=64,
        seed=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_piecewise_schedule_per_iteration():
    kw = dict(lr=0.1, epochs=200)
    assert lr_at(0.01, **kw) == 0.1
    assert lr_at(99.99, **kw) == 0.1
    assert lr_at(100.0, **kw) == pytest.approx(0.01)
    assert lr_at(149.99, **kw) == pytest.approx(0.01)
    assert lr_at(150.0, **kw) == pytest.approx(0.001)
    assert lr_at(0.0, lr=0.1, epochs=10, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(10.0, lr=0.1, epochs=10, schedule="cosine") == pytest.approx(0.0)


@pytest.mark.parametrize("awp", [False, True])
def test_short_training_lowers_the_loss(tmp_path, awp):
    cfg = tiny_config(tmp_path / "run", awp=awp, epochs=6, schedule="constant", gamma=0.005)
    result = train(cfg, progress=False, data=synthetic_bundle(n_train=192))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.1
    assert result.history[-1]["test_nat_acc"] > 0.6  # 3 classes: chance is 1/3
    assert [r["awp"] for r in result.history] == [awp] * 6


def test_metrics_and_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=2, save_every=1, awp=True, awp_warmup=1)
    result = train(cfg, progress=False, data=synthetic_bundle())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["awp"] for r in records] == [False, True]  # warm-up epoch without AWP
    for key in (
        "train_loss",
        "train_acc",
        "train_robust_acc",
        "train_nat_acc",
        "val_robust_acc",
        "test_nat_acc",
        "test_robust_acc",
        "lr",
        "seconds",
    ):
        assert key in records[-1]
    ck = tmp_path / "run" / "checkpoints"
    assert {p.name for p in ck.iterdir()} == {"last.pt", "best.pt", "epoch_001.pt", "epoch_002.pt"}
    raw = torch.load(ck / "last.pt", weights_only=True)  # readable without this library
    assert raw["epoch"] == 2 and "optimizer" in raw and "rng_data" in raw
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert from_dict(TrainConfig, saved) == cfg
    final = result.model.state_dict()
    assert raw["state_dict"].keys() == final.keys()
    assert all(torch.equal(raw["state_dict"][k], final[k]) for k in final)


def test_kill_after_epoch_two_and_resume_gives_the_same_weights(tmp_path):
    data = synthetic_bundle()
    cfg_a = tiny_config(tmp_path / "a", awp=True, awp_warmup=1)
    full = train(cfg_a, progress=False, data=synthetic_bundle())

    cfg_b = dataclasses.replace(cfg_a, out=str(tmp_path / "b"))

    def die(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was saved

    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, progress=False, on_epoch=die, data=data)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = train(cfg_b, resume=True, progress=False, data=synthetic_bundle())
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    history = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    drop = ("seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in history] == [
        {k: v for k, v in r.items() if k not in drop} for r in full.history
    ]


def test_run_folder_is_never_overwritten_and_resume_checks_config(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=1)
    train(cfg, progress=False, data=synthetic_bundle())
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress=False, data=synthetic_bundle())
    with pytest.raises(ValueError, match="lr"):
        train(
            dataclasses.replace(cfg, lr=0.2), resume=True, progress=False, data=synthetic_bundle()
        )
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="without --resume"):
        train(tiny_config(tmp_path / "other"), resume=True, progress=False, data=synthetic_bundle())


def test_config_validation_and_json_round_trip():
    cfg = TrainConfig(awp=True, gamma=0.005, eps=0.5, norm="l2")
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="8/255"):
        TrainConfig(eps=8)
    with pytest.raises(ValueError, match="gamma"):
        TrainConfig(awp=True, gamma=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
