import dataclasses
import json
import math

import pytest
import torch

from awp.checkpoint import load_checkpoint
from awp.config import from_dict, to_dict
from awp.data import DataConfig
from awp.models import ModelConfig, build_model
from awp.train import TrainConfig, lr_at, train
from tests.helpers import synthetic_bundle


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        data=DataConfig(dataset="synthetic-in-memory", val_size=0),
        model=ModelConfig("smallcnn"),
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


def test_eval_every_evaluates_every_kth_and_the_last_epoch_only(tmp_path):
    every = train(tiny_config(tmp_path / "all", epochs=5), progress=False, data=synthetic_bundle())
    sparse = train(
        tiny_config(tmp_path / "sparse", epochs=5, eval_every=2),
        progress=False,
        data=synthetic_bundle(),
    )
    evaluated = [r["epoch"] for r in sparse.history if "test_robust_acc" in r]
    assert evaluated == [2, 4, 5]
    drop = ("seconds", "eval_seconds")
    for a, b in zip(every.history, sparse.history):
        assert a["train_loss"] == b["train_loss"]  # evaluating does not change training
        if b["epoch"] in evaluated:
            assert {k: v for k, v in a.items() if k not in drop} == {
                k: v for k, v in b.items() if k not in drop
            }
        else:
            assert not any(k.startswith(("val_", "test_", "train_robust")) for k in b)
    best = load_checkpoint(tmp_path / "sparse" / "checkpoints" / "best.pt")
    assert best["epoch"] in evaluated
    with pytest.raises(ValueError, match="eval_every"):
        tiny_config(tmp_path / "x", eval_every=0)


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
    # the architecture is checked with the config, before any data is loaded
    with pytest.raises(ValueError, match="resnet999"):
        TrainConfig(model=ModelConfig("resnet999"))
    with pytest.raises(ValueError, match="depth"):
        TrainConfig(model=ModelConfig("wideresnet", depth=33))
    TrainConfig(model=ModelConfig("preactresnet18", depth=33))  # depth is WideResNet's only
    with pytest.raises(ValueError, match="ModelConfig"):
        TrainConfig(model="smallcnn")


# ----------------------------------------------------------------- methods, --init, old configs
def test_trades_and_mart_train_with_awp_and_record_the_values_used(tmp_path):
    for method in ("trades", "mart"):
        cfg = tiny_config(
            tmp_path / method, method=method, awp=True, epochs=2, awp_warmup=1, train_eval_size=8
        )
        result = train(cfg, progress=False, data=synthetic_bundle(n_train=48, n_test=8))
        assert [r["awp"] for r in result.history] == [False, True]
        assert all(math.isfinite(r["train_loss"]) for r in result.history)
        saved = json.loads((tmp_path / method / "config.json").read_text())
        assert saved["gamma"] is None and saved["method"] == method  # what was given
        ckpt = torch.load(tmp_path / method / "checkpoints" / "last.pt", weights_only=True)
        used = ckpt["resolved_config"]  # what was used
        assert used["gamma"] == 0.005 and used["beta"] == 6.0 and used["attack_mode"] == "eval"
        assert used["attack_start"] == "gaussian" and used["awp_warmup"] == 1


def test_resume_accepts_a_config_written_with_explicit_defaults(tmp_path):
    """A run folder whose config.json spells out the defaults (older runs) resumes."""
    cfg = tiny_config(tmp_path / "run", epochs=2, awp=True, train_eval_size=8)
    killed = False

    def die(record):
        nonlocal killed
        killed = True
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, data=synthetic_bundle(n_train=48, n_test=8), on_epoch=die)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    saved.update(gamma=0.01, awp_warmup=0, attack_mode="train")
    for key in ("attack_start", "awp_alternations", "extra_data", "extra_fraction", "init"):
        del saved[key]  # fields that did not exist then
    model = saved.pop("model")  # the architecture was flat then: "model": "smallcnn", "width"...
    saved.update(model=model["name"], **{k: v for k, v in model.items() if k != "name"})
    path.write_text(json.dumps(saved))
    result = train(cfg, resume=True, progress=False, data=synthetic_bundle(n_train=48, n_test=8))
    assert killed and [r["epoch"] for r in result.history] == [1, 2]
    saved["gamma"] = 0.02
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="gamma: 0.02 in the run, 0.01 now"):
        train(cfg, resume=True, progress=False, data=synthetic_bundle())


def test_init_starts_from_weights_with_a_fresh_optimizer(tmp_path):
    first = train(tiny_config(tmp_path / "a", epochs=1), progress=False, data=synthetic_bundle())
    pretrained = {k: v.clone() for k, v in first.model.named_parameters()}
    foreign = tmp_path / "foreign.pt"  # the official layout: {'state_dict'} with module.
    torch.save(
        {"state_dict": {"module." + k: v for k, v in first.model.state_dict().items()}}, foreign
    )
    scripted = tmp_path / "model.ts"  # a TorchScript file: a model named by a source
    example = synthetic_bundle().train.x[:2].float() / 255
    torch.jit.save(torch.jit.trace(first.model.eval(), example), scripted)
    sources = [tmp_path / "a" / "checkpoints" / "last.pt", foreign, scripted]
    try:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in first.model.state_dict().items()}
        save_file(state, tmp_path / "weights.safetensors")
        sources.append(tmp_path / "weights.safetensors")
    except ImportError:  # the [safetensors] extra
        pass
    for source in sources:
        out = tmp_path / f"b_{source.stem}"
        cfg = tiny_config(out, epochs=1, lr=1e-9, init=str(source), schedule="constant")
        result = train(cfg, progress=False, data=synthetic_bundle())
        for name, p in result.model.named_parameters():  # lr 1e-9: still the init weights
            assert torch.allclose(p, pretrained[name], atol=1e-6), name
        ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
        assert ckpt["epoch"] == 1 and result.history[0]["lr"] == 1e-9  # a fresh schedule
        steps = ckpt["optimizer"]["state"][0]
        assert steps["momentum_buffer"].abs().max() < 1.0  # one epoch of fresh momentum
        assert ckpt["inputs"]["init"]["path"] == str(source)


def test_init_that_does_not_fit_is_a_clear_error_and_writes_nothing(tmp_path):
    train(tiny_config(tmp_path / "a", epochs=1), progress=False, data=synthetic_bundle())
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    from awp.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="--init.*missing keys"):
        train(
            tiny_config(tmp_path / "b", model=ModelConfig("vgg19"), init=str(last)),
            progress=False,
            data=synthetic_bundle(),
        )
    with pytest.raises(CheckpointError, match="trained on normalized input.*pass --normalize"):
        pass_raw = tiny_config(tmp_path / "c", normalize=False, init=str(last))
        train(pass_raw, progress=False, data=synthetic_bundle())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        train(tiny_config(tmp_path / "d", init="nope.pt"), progress=False, data=synthetic_bundle())
    for name in "bcd":
        assert not (tmp_path / name).exists()


def test_augmentation_can_be_switched_off(tmp_path):
    data = synthetic_bundle()
    off = train(tiny_config(tmp_path / "off", epochs=1, augment=False), progress=False, data=data)
    on = train(tiny_config(tmp_path / "on", epochs=1), progress=False, data=synthetic_bundle())
    again = train(
        tiny_config(tmp_path / "off2", epochs=1, augment=False),
        progress=False,
        data=synthetic_bundle(),
    )
    a, b, c = (m.model.state_dict() for m in (off, on, again))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # crops/flips changed the run
    assert all(torch.equal(a[k], c[k]) for k in a)  # and without them it is reproducible
    assert json.loads((tmp_path / "off" / "config.json").read_text())["augment"] is False


def test_gaussian_augmentation_resumes_exactly_and_no_noise_draws_nothing(tmp_path):
    # Gaussian-AWP: no attack (--eps 0), N(0, 0.1^2) noise on every training batch
    cfg = tiny_config(tmp_path / "full", awp=True, eps=0.0, noise_sd=0.1)
    assert cfg.describe().startswith("Gaussian-AWP") and "noise sd 0.1" in cfg.describe()
    full = train(cfg, progress=False, data=synthetic_bundle())
    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))

    def die(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False, on_epoch=die, data=synthetic_bundle())
    resumed = train(cut, resume=True, progress=False, data=synthetic_bundle())
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # the noise generator's state travels in last.pt
    drop = ("seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in full.history
    ]
    plain = train(dataclasses.replace(cfg, out=str(tmp_path / "plain"), noise_sd=0.0),
                  progress=False, data=synthetic_bundle())  # fmt: skip
    a, b = full.model.state_dict(), plain.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the noise did change training
    noisy_ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    plain_ckpt = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=True)
    assert "rng_noise" in noisy_ckpt and "rng_noise" not in plain_ckpt  # nothing drawn without
    assert noisy_ckpt["config"]["noise_sd"] == 0.1
    with pytest.raises(ValueError, match="25/255"):
        tiny_config(tmp_path / "x", noise_sd=25)


# The stated tolerance of the channels_last layout (TrainConfig.memory_format): the same
# arithmetic in another order, so one AT-AWP step agrees with the contiguous one to float32
# rounding, far below anything a run's numbers resolve.
CHANNELS_LAST_RTOL = 1e-4


def test_a_channels_last_step_matches_the_contiguous_step_within_the_stated_tolerance():
    """One AT-AWP step of a (narrow) PreActResNet-18, contiguous against channels_last (model and
    inputs): loss, accuracy and every updated weight within CHANNELS_LAST_RTOL."""
    from awp.config import AttackConfig, AWPConfig
    from awp.models import ModelSpec, build_model
    from awp.objectives import at_objective
    from awp.perturb import select_params
    from awp.step import train_step

    spec = ModelSpec(name="preactresnet18", width=0.125, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = synthetic_bundle(n_train=16)
    x, y = data.train.x.float() / 255, data.train.y
    results = {}
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = build_model(spec)
        xs = x
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xs = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        stats = train_step(
            model, opt, xs, y, attack=AttackConfig(steps=2, step_size=2 / 255),
            objective=at_objective, awp=AWPConfig(gamma=0.01), params=select_params(model),
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        results[layout] = (stats, {k: v.detach().clone() for k, v in model.state_dict().items()})
    (a, wa), (b, wb) = results["contiguous"], results["channels_last"]
    assert not wb["conv1.weight"].is_contiguous()  # the layout was really channels_last
    assert b.loss == pytest.approx(a.loss, rel=CHANNELS_LAST_RTOL)
    assert b.correct == a.correct
    for name in wa:
        scale = float(wa[name].abs().max()) or 1.0
        assert float((wa[name] - wb[name]).abs().max()) <= CHANNELS_LAST_RTOL * scale, name


def test_memory_format_auto_is_channels_last_on_the_cpu_only(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    assert cfg.memory_format == "auto" and cfg.channels_last("cpu")
    assert not cfg.channels_last(torch.device("cuda", 0))
    assert not dataclasses.replace(cfg, memory_format="contiguous").channels_last("cpu")
    with pytest.raises(ValueError, match="unknown memory_format 'nhwc'; choose one of auto"):
        dataclasses.replace(cfg, memory_format="nhwc")


def test_a_model_whose_channels_last_weight_gradient_crashes_stays_contiguous():
    """torch's CPU weight gradient of a strided 1x1 conv with fewer than 8 input channels
    corrupts the heap in channels_last: such a model (a PreActResNet-18 at width 0.0625) is
    kept contiguous by the CPU's channels_last choice, a wider one is not."""
    from awp.modes import channels_last_safe, cpu_channels_last

    narrow = build_model(ModelConfig("preactresnet18", width=0.0625).spec(num_classes=4))
    wide = build_model(ModelConfig("preactresnet18", width=0.125).spec(num_classes=4))
    assert not channels_last_safe(narrow) and channels_last_safe(wide)
    with cpu_channels_last(narrow):
        assert narrow.conv1.weight.is_contiguous()
    with cpu_channels_last(wide):
        assert not wide.conv1.weight.is_contiguous()
    assert wide.conv1.weight.is_contiguous()  # restored
