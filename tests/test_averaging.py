"""EMA and SWA against hand loops, the averaged checkpoints, and every new method training and
resuming exactly (killed after an epoch and resumed = uninterrupted)."""

import dataclasses
import json

import pytest
import torch

import awp.train
from awp.augment import to_float
from awp.averaging import averaged_copy, ema_update_, swa_update_
from awp.checkpoint import load_checkpoint, load_model
from awp.train import train
from tests.helpers import synthetic_bundle, tiny_model
from tests.test_train import tiny_config

DROP = ("seconds", "eval_seconds")


def _states(n, seed=0):
    """n weight states of the tiny network (float64), as a training run would pass through."""
    models = []
    for k in range(n):
        m = tiny_model(seed + k, dtype=torch.float64)
        models.append(m)
    return models


def test_ema_update_is_the_hand_recurrence_and_copies_buffers():
    decay = 0.9
    states = _states(4)
    avg = averaged_copy(states[0])
    hand = {n: p.detach().clone() for n, p in states[0].named_parameters()}
    for model in states[1:]:
        ema_update_(avg, model, decay=decay)
        for n, p in model.named_parameters():
            hand[n] = decay * hand[n] + (1 - decay) * p.detach()
    for n, p in avg.named_parameters():
        assert torch.allclose(p, hand[n], rtol=0, atol=1e-14), n  # float64, 3 roundings
        assert not p.requires_grad
    for (n, b), last in zip(avg.named_buffers(), states[-1].buffers()):
        assert torch.equal(b, last), n
    with pytest.raises(ValueError, match="decay"):
        ema_update_(avg, states[0], decay=1.0)


def test_swa_update_is_the_mean_of_the_models():
    states = _states(3, seed=5)
    avg = averaged_copy(_states(1, seed=99)[0])  # whatever it held before: n = 1 replaces it
    for k, model in enumerate(states, start=1):
        swa_update_(avg, model, n=k)
    for n, p in avg.named_parameters():
        mean = sum(dict(m.named_parameters())[n].detach() for m in states) / len(states)
        assert torch.allclose(p, mean, rtol=0, atol=1e-14), n
    first = averaged_copy(states[2])
    swa_update_(first, states[0], n=1)
    for a, b in zip(first.parameters(), states[0].parameters()):
        assert torch.equal(a, b)  # the first model is copied exactly
    with pytest.raises(ValueError, match="n >= 1"):
        swa_update_(avg, states[0], n=0)


def test_averages_leave_training_unchanged_and_follow_hand_averages(tmp_path, monkeypatch):
    """AT with --ema --swa trains exactly as AT; the EMA checkpoint is the hand recurrence over
    every step's weights, the SWA checkpoint the mean of the epochs' weights with BatchNorm
    statistics re-estimated on the training images (torch's update_bn as the reference)."""
    plain = train(
        tiny_config(tmp_path / "plain", epochs=3, save_every=1),
        progress=False,
        data=synthetic_bundle(),
    )
    decay, steps = 0.8, []
    real = awp.train.train_step

    def spy(model, *args, **kw):
        if not steps:  # the weights the averages start from
            steps.append({n: p.detach().clone() for n, p in model.named_parameters()})
        out = real(model, *args, **kw)
        steps.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return out

    monkeypatch.setattr(awp.train, "train_step", spy)
    cfg = tiny_config(
        tmp_path / "avg", epochs=3, save_every=1, ema=True, ema_decay=decay, swa=True, swa_start=2
    )
    data = synthetic_bundle()
    avg = train(cfg, progress=False, data=data)
    # Training itself is untouched: same weights, same metrics apart from the averages' columns.
    for (name, a), b in zip(plain.model.state_dict().items(), avg.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(plain.history, avg.history):
        own = {k: v for k, v in b.items() if not k.startswith(("ema_", "swa_")) and k not in DROP}
        assert own == {k: v for k, v in a.items() if k not in DROP}
    assert all("ema_test_robust_acc" in r for r in avg.history)
    assert ["swa_test_robust_acc" in r for r in avg.history] == [False, True, True]
    # EMA: the recurrence over all 9 steps (3 epochs x 3 batches), in float64 by hand.
    hand = {n: t.double() for n, t in steps[0].items()}
    for state in steps[1:]:
        hand = {n: decay * hand[n] + (1 - decay) * state[n].double() for n in hand}
    ema = load_checkpoint(tmp_path / "avg" / "checkpoints" / "ema" / "last.pt")
    assert ema["average"] == "ema" and ema["epoch"] == 3 and len(steps) == 10
    for n, t in hand.items():
        # float32 recurrence against float64: 9 steps of ~1e-7 relative rounding
        assert torch.allclose(ema["state_dict"][n].double(), t, rtol=1e-5, atol=1e-7), n
    final = avg.model.state_dict()
    for n in ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(ema["state_dict"][n], final[n].cpu())  # buffers copied each step
    assert ema["metrics"]["test_robust_acc"] == avg.history[-1]["ema_test_robust_acc"]
    # SWA: the mean of epochs 2 and 3, BatchNorm statistics of the training images.
    ckpts = tmp_path / "avg" / "checkpoints"
    e2, e3 = (load_checkpoint(ckpts / f"epoch_00{k}.pt")["state_dict"] for k in (2, 3))
    swa = load_checkpoint(ckpts / "swa" / "last.pt")
    assert swa["average"] == "swa" and swa["swa_n"] == 2
    assert (
        not (ckpts / "swa" / "epoch_001.pt").exists() and (ckpts / "swa" / "epoch_002.pt").exists()
    )
    ref, _ = load_model(ckpts / "swa" / "last.pt")  # loadable as every checkpoint is
    state = ref.state_dict()
    for n, _ in ref.named_parameters():
        mean = (e2[n] + e3[n]) / 2
        assert torch.allclose(state[n], mean, rtol=1e-6, atol=1e-7), n
        state[n] = mean
    saved = {k: v.clone() for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    loader = [to_float(data.train.x[i : i + 64]) for i in range(0, len(data.train.x), 64)]
    torch.optim.swa_utils.update_bn(loader, ref)
    compared = [n for n, b in ref.named_buffers() if n.endswith(("running_mean", "running_var"))]
    assert compared
    buffers = dict(ref.named_buffers())
    for n in compared:  # channels_last in training, contiguous here: float rounding
        assert torch.allclose(saved[n], buffers[n], rtol=1e-4, atol=1e-6), n
        assert not torch.allclose(saved[n], e3[n], rtol=1e-3)  # not the trained model's


METHODS = {
    "at-sam": dict(method="at-sam", ema=True),
    "at-asam": dict(method="at-asam", swa=True, swa_start=2),
    "trades-rwp": dict(method="trades-rwp", awp_warmup=1, rwp_steps=2, ema=True, swa=True),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_and_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, name):
    kw = METHODS[name]
    cfg_a = tiny_config(tmp_path / "a", epochs=3, **kw)
    full = train(cfg_a, progress=False, data=synthetic_bundle())
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    weights = kw["method"].split("-")[1]
    assert [r[weights] for r in full.history] == (
        [False, True, True] if name == "trades-rwp" else [True] * 3
    )
    cfg_b = dataclasses.replace(cfg_a, out=str(tmp_path / "b"))

    def die(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was saved

    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, progress=False, on_epoch=die, data=synthetic_bundle())
    resumed = train(cfg_b, resume=True, progress=False, data=synthetic_bundle())
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    drop = lambda r: {k: v for k, v in r.items() if k not in DROP}  # noqa: E731
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [drop(json.loads(x)) for x in lines] == [drop(r) for r in full.history]
    for kind in ("ema", "swa"):
        if not kw.get(kind):
            assert not (tmp_path / "a" / "checkpoints" / kind).exists()
            continue
        a = load_checkpoint(tmp_path / "a" / "checkpoints" / kind / "last.pt")
        b = load_checkpoint(tmp_path / "b" / "checkpoints" / kind / "last.pt")
        for n, t in a["state_dict"].items():
            assert torch.equal(t, b["state_dict"][n]), (kind, n)
        assert a["metrics"] == b["metrics"]


def test_resume_refuses_a_checkpoint_without_the_average_state(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=2, method="at-sam")
    train(cfg, progress=False, data=synthetic_bundle())
    with pytest.raises(ValueError, match="configuration differs.*ema"):
        train(
            dataclasses.replace(cfg, epochs=3, ema=True),
            resume=True,
            progress=False,
            data=synthetic_bundle(),
        )


def test_the_command_line_trains_a_method_by_name_and_its_average_is_evaluated(tmp_path, capsys):
    from awp_landscape.cli import main
    from tests.helpers import make_image_folder

    folder = make_image_folder(tmp_path / "data", n_train=24, n_test=8)
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(folder), "--val-size", "6", "--model", "smallcnn"]
    argv += ["--epochs", "2", "--batch-size", "12", "--attack-steps", "1", "--eval-steps", "1"]
    argv += ["--eval-n-train", "6", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--method", "at-sam", "--rho", "0.1", "--ema", "--swa"]) == 0
    text = capsys.readouterr().out
    assert "AT-SAM (rho 0.1, EMA decay 0.999, SWA from epoch 2)" in text
    assert text.count("[SAM]") == 2 and "EMA test rob" in text and "SWA test rob" in text
    saved = json.loads((out / "config.json").read_text())
    assert (saved["method"], saved["weight_method"], saved["rho"]) == ("at", "sam", 0.1)
    for kind in ("ema", "swa"):
        ckpt = out / "checkpoints" / kind / "last.pt"
        code = main(["eval", str(ckpt), "--attacks", "natural", "--device", "cpu"])
        assert code == 0
        assert f"results: {out / 'analysis' / f'eval_{kind}_last_test.json'}" in (
            capsys.readouterr().out
        )  # beside the run's own eval_last_test.json, never over it
    # An option the method ignores: one line, exit 2, nothing written.
    assert main([*argv[:-1], str(tmp_path / "bad"), "--method", "at-rwp", "--rho", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "rho=0.1 (--rho) is a setting of SAM and ASAM" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()


def test_a_run_trained_with_one_average_is_measured_by_it(tmp_path):
    """RunFolder(out, "ema") (what the pipelines use for an at+ema run): the average's
    checkpoints and its per-epoch evaluation under the usual names; finished only when the
    plain run and the average both are; a plain folder reads the plain weights' columns."""
    from awp.method_config import measured_average, split_average
    from awp.runs import RunFolder

    assert split_average("AT-SAM+ema") == ("at-sam", "ema") and split_average("at") == ("at", "")
    with pytest.raises(ValueError, match=r"unknown weight average 'mean'.*at\+ema"):
        split_average("at+mean")
    with pytest.raises(ValueError, match="unknown method"):
        split_average("sgd+ema")
    assert measured_average({"ema": True, "swa": False}) == "ema"
    assert measured_average({"ema": False}) == measured_average({"ema": 1, "swa": 1}) == ""

    plain = RunFolder(tmp_path)
    plain.append_metrics({"epoch": 1, "lr": 0.1, "seconds": 2.0, "test_robust_loss": 2.0,
                          "ema_test_robust_loss": 1.5, "ema_val_robust_acc": 0.3})  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({"method": "at", "ema": True}))
    ema = RunFolder.measured(tmp_path)
    assert ema.average == "ema" and ema.last == tmp_path / "checkpoints" / "ema" / "last.pt"
    assert ema.epoch_ckpt(3) == tmp_path / "checkpoints" / "ema" / "epoch_003.pt"
    assert ema.read_metrics() == [{"epoch": 1, "lr": 0.1, "seconds": 2.0,
                                   "test_robust_loss": 1.5, "val_robust_acc": 0.3}]  # fmt: skip
    assert plain.read_metrics()[0]["test_robust_loss"] == 2.0
    plain.ckpt_dir.mkdir()
    plain.last.write_bytes(b"")
    assert plain.finished(1) and not ema.finished(1)  # the average's last.pt is missing
    ema.ckpt_dir.mkdir()
    ema.last.write_bytes(b"")
    assert ema.finished(1) and not ema.finished(2)
    with pytest.raises(ValueError, match="plain run folder"):
        ema.append_metrics({"epoch": 2})
