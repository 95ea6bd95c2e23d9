import os
import pickle

import pytest
import torch

from awp import checkpoint as ck
from awp.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from awp.config import to_dict
from awp.models import ModelSpec, build_model


def saved(tmp_path, name="m.pt", spec=ModelSpec(name="smallcnn"), wrap=False, **kw):
    torch.manual_seed(0)
    model = build_model(spec)
    target = torch.nn.DataParallel(model) if wrap else model
    path = save_checkpoint(
        tmp_path / name,
        model=target,
        model_spec=to_dict(spec),
        config={"lr": 0.1},
        epoch=3,
        metrics={"acc": 0.5},
        **kw,
    )
    return path, model


def test_round_trip_and_plain_torch_load(tmp_path):
    path, model = saved(tmp_path, wrap=True)
    raw = torch.load(path, weights_only=True)
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    assert raw["epoch"] == 3 and raw["config"] == {"lr": 0.1} and "torch" in raw["versions"]
    loaded, meta = load_model(path)
    assert not loaded.training
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert meta["metrics"] == {"acc": 0.5}


def test_strip_prefixes():
    sd = {"module._orig_mod.conv1.weight": torch.zeros(1), "linear.bias": torch.ones(1)}
    assert list(ck.strip_prefixes(sd)) == ["conv1.weight", "linear.bias"]


def test_missing_truncated_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    path, _ = saved(tmp_path)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt.*truncated or corrupt"):
        load_checkpoint(trunc)
    # random bytes, and a valid file with random bytes spliced in, fail in many different places
    # of the unpickler (IndexError, KeyError, RuntimeError...): always one clear error
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        junk = tmp_path / f"junk{i}.pt"
        noise = bytes(torch.randint(0, 256, (2000,), generator=g, dtype=torch.uint8).tolist())
        junk.write_bytes(noise if i % 2 else data[:300] + noise + data[2300:])
        with pytest.raises(CheckpointError, match=f"junk{i}.pt"):
            load_checkpoint(junk)


def test_a_file_that_is_no_torch_file_is_named_as_such(tmp_path):
    # bytes the weights-only unpickler cannot parse are not "objects it refused"
    for name, data in [("text.pt", b"{}"), ("config.pt", b'{"lr": 0.1}\n')]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch file") as err:
            load_checkpoint(tmp_path / name)
        assert "objects other than tensors" not in str(err.value)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors") as err:
        load_checkpoint(path)
    # the message names the refused object, without torch's paragraph on its change of default
    assert "system" in str(err.value) and "PyTorch 2.6" not in str(err.value)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(plain)


def test_foreign_file_and_mismatches_are_named(tmp_path):
    raw = tmp_path / "raw.pt"
    torch.save(build_model(ModelSpec(name="smallcnn")).state_dict(), raw)
    with pytest.raises(CheckpointError, match="not an awp-landscape checkpoint"):
        load_checkpoint(raw)
    path, model = saved(tmp_path, spec=ModelSpec(name="smallcnn", num_classes=10))
    other = build_model(ModelSpec(name="smallcnn", num_classes=100))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*\(10, .*\(100, "):
        ck.load_state_dict_checked(other, load_checkpoint(path)["state_dict"], source=str(path))
    arch = build_model(ModelSpec(name="preactresnet18", width=0.125))
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        ck.load_state_dict_checked(arch, load_checkpoint(path)["state_dict"], source=str(path))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path, model = saved(tmp_path, name="last.pt")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, model_spec={"name": "smallcnn"}, epoch=4)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
