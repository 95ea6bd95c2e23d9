"""Extra data (RST): safe file formats, the batch mix, and training that really uses it."""

import numpy as np
import pytest
import torch

import awp.train
from awp.extra_data import extra_count, load_extra_data, mixed_batches
from tests.helpers import synthetic_bundle
from tests.test_train import tiny_config

SHAPE = (3, 8, 8)


def images(n, value=None, seed=0):
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)  # HWC, as the RST pickle
    if value is not None:
        x[:] = value
    return x, g.integers(0, 3, n)


def test_npz_and_torch_files_load_in_both_layouts(tmp_path):
    x, y = images(10)
    np.savez(tmp_path / "hwc.npz", x=x, y=y)
    np.savez(tmp_path / "rst.npz", data=x, extrapolated_targets=y)  # the RST release's names
    torch.save(
        {"x": torch.from_numpy(x).permute(0, 3, 1, 2), "y": torch.from_numpy(y)},
        tmp_path / "chw.pt",
    )
    for name in ("hwc.npz", "rst.npz", "chw.pt"):
        split = load_extra_data(tmp_path / name, image_shape=SHAPE, num_classes=3)
        assert split.x.shape == (10, 3, 8, 8) and split.x.dtype == torch.uint8
        assert torch.equal(split.x, torch.from_numpy(x).permute(0, 3, 1, 2))
        assert torch.equal(split.y, torch.from_numpy(y).long()) and split.x.device.type == "cpu"


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, int)), "uint8"),
        (dict(x=np.zeros((4, 16, 16, 3), np.uint8), y=np.zeros(4, int)), r"\(M, 3, 8, 8\)"),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.full(4, 3)), "labels span"),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.full(4, -1)), "pseudo-labels"),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(3, int)), "one per image"),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4)), "integers"),
        (dict(images_=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, int)), "no images array"),
    ],
)
def test_bad_files_are_named_with_the_fix(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_extra_data(tmp_path / "bad.npz", image_shape=SHAPE, num_classes=3)


def test_pickles_are_never_loaded(tmp_path):
    x, y = images(4)
    np.savez(tmp_path / "obj.npz", x=x, y=np.array([object()] * 4))
    with pytest.raises(ValueError, match="pickled"):
        load_extra_data(tmp_path / "obj.npz", image_shape=SHAPE, num_classes=3)
    (tmp_path / "ti.pickle").write_bytes(b"not read")
    with pytest.raises(ValueError, match="Pickle files are never read"):
        load_extra_data(tmp_path / "ti.pickle", image_shape=SHAPE, num_classes=3)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_extra_data(tmp_path / "missing.npz", image_shape=SHAPE, num_classes=3)


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.7])
def test_batches_mix_at_the_fraction_and_cover_the_training_set(fraction):
    g = torch.Generator().manual_seed(0)
    seen, total_extra, total = [], 0, 0
    for train_idx, extra_idx, order in mixed_batches(50, 7, 16, fraction, generator=g):
        seen += train_idx.tolist()
        assert len(extra_idx) == extra_count(len(train_idx), fraction)
        assert extra_idx.min() >= 0 and extra_idx.max() < 7
        assert sorted(order.tolist()) == list(range(len(train_idx) + len(extra_idx)))
        total_extra += len(extra_idx)
        total += len(train_idx) + len(extra_idx)
    assert sorted(seen) == list(range(50))  # one pass over the training set per epoch
    assert abs(total_extra / total - fraction) < 0.03
    with pytest.raises(ValueError, match="fraction"):
        next(mixed_batches(50, 7, 16, 1.0, generator=g))


def test_training_uses_the_extra_images_at_the_fraction(tmp_path, monkeypatch):
    x, _ = images(20, value=200)  # constant images: recognizable after crop and flip
    np.savez(tmp_path / "extra.npz", x=x, y=np.zeros(20, int))
    seen = []
    real = awp.train.train_step

    def spy(model, optimizer, xb, yb, **kw):
        flat = xb.flatten(1)
        constant = (flat.amax(1) - flat.amin(1)) == 0
        seen.append((int(constant.sum()), len(yb), bool((yb[constant] == 0).all())))
        return real(model, optimizer, xb, yb, **kw)

    monkeypatch.setattr(awp.train, "train_step", spy)
    cfg = tiny_config(
        tmp_path / "run", epochs=1, extra_data=str(tmp_path / "extra.npz"), extra_fraction=0.5
    )
    result = awp.train.train(cfg, progress=False, data=synthetic_bundle(n_train=64))
    assert seen and all(c == n // 2 and labels_ok for c, n, labels_ok in seen)
    assert sum(n - c for c, n, _ in seen) == 64  # the training set once
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert (
        ckpt["inputs"]["extra_data"]["n"] == 20
        and len(ckpt["inputs"]["extra_data"]["sha256"]) == 64
    )
    assert result.history[0]["epoch"] == 1


def test_a_bad_extra_file_leaves_no_run_behind(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 9, 9, 3), np.uint8), y=np.zeros(4, int))
    cfg = tiny_config(tmp_path / "run", epochs=1, extra_data=str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="shape"):
        awp.train.train(cfg, progress=False, data=synthetic_bundle())
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="extra_fraction"):
        tiny_config(tmp_path / "r", extra_data="x.npz", extra_fraction=0.0)
