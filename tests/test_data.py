"""Tests for awp.data: the embedded sample, ImageFolder folders/archives, cache, augmentation."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from awp import data, imagefolder
from awp.augment import _crop_offsets_and_flips, augment, to_float
from awp.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    SAMPLE_PATH,
    DataConfig,
    channel_stats,
    fixed_subset,
    iterate_batches,
    load_data,
)
from awp.imagefolder import read_imagefolder_files

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Never touch ~/.cache: every test gets its own cache directory."""
    monkeypatch.setenv("AWP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory):
    """One decoded cache of the sample, shared by the tests that only read the sample."""
    return tmp_path_factory.mktemp("sample_cache")


def _load_sample(cache: Path, monkeypatch, **cfg) -> data.DataBundle:
    monkeypatch.setenv("AWP_CACHE", str(cache))
    return load_data(DataConfig(**cfg), progress=False)


# ----------------------------------------------------------------------------- tiny datasets


def _images(n: int, seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    # PNG is lossless, so the loaded pixels must equal the written ones exactly.
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_files(classes=("cat", "ant"), n_train: int = 3, n_test: int = 2) -> dict:
    """split -> class -> [(name, pixels (H, W, 3))], distinct random images per class."""
    files: dict = {}
    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        files[split] = {
            cls: [(f"{i:02d}.png", img) for i, img in enumerate(_images(n, seed=10 * s + c))]
            for c, cls in enumerate(classes)
        }
    return files


def _write_folder(root: Path, files: dict, prefix: str = "") -> Path:
    for split, by_class in files.items():
        for cls, items in by_class.items():
            d = root / prefix / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for name, pixels in items:
                (d / name).write_bytes(_png(pixels))
    return root


def _write_tar(path: Path, files: dict, prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for split, by_class in files.items():
            for cls, items in by_class.items():
                for name, pixels in items:
                    blob = _png(pixels)
                    info = tarfile.TarInfo(f"{prefix}{split}/{cls}/{name}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    return path


def _expected(files: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: ImageFolder order is sorted classes, then sorted file names."""
    xs, ys = [], []
    for label, cls in enumerate(sorted(files[split])):
        for _, pixels in sorted(files[split][cls], key=lambda t: t[0]):
            xs.append(torch.from_numpy(pixels).permute(2, 0, 1))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def _image_set(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


# ----------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(ValueError, match="val_size"):
        DataConfig(val_size=-1)
    with pytest.raises(ValueError, match="non-empty"):
        DataConfig(dataset="  ")
    assert DataConfig(val_size=0).val_size == 0


# ----------------------------------------------------------------------------- embedded sample


def test_sample_archive_is_balanced_and_matches_manifest():
    files = read_imagefolder_files(SAMPLE_PATH)
    assert sorted(files["train"]) == sorted(files["test"])
    assert len(files["train"]) == 10
    assert {len(v) for v in files["train"].values()} == {400}
    assert {len(v) for v in files["test"].values()} == {100}
    assert all(name.endswith(".jpg") for v in files["train"].values() for name, _ in v)
    assert SAMPLE_PATH.stat().st_size <= 6_000_000
    manifest = json.loads((SAMPLE_PATH.parent / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(SAMPLE_PATH.read_bytes()).hexdigest()
    assert manifest["counts"] == {"train": 4000, "test": 1000}
    assert manifest["classes"] == sorted(files["train"])


def test_sample_loads(sample_cache, monkeypatch):
    b = _load_sample(sample_cache, monkeypatch, val_size=500)
    assert b.name == "sample"
    assert (len(b.train), len(b.val), len(b.test)) == (3500, 500, 1000)
    assert b.num_classes == 10 and b.classes[0] == "airplane" and b.classes[-1] == "truck"
    for split in (b.train, b.val, b.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (3, 32, 32)
        assert split.x.device.type == "cpu"
        assert 0 <= int(split.y.min()) and int(split.y.max()) < 10
    assert torch.bincount(b.test.y, minlength=10).tolist() == [100] * 10
    assert (b.mean, b.std) == (CIFAR10_MEAN, CIFAR10_STD)
    # The published CIFAR-10 statistics should describe a real CIFAR-10 sample closely.
    mean, std = channel_stats(b.train.x)
    assert np.allclose(mean, CIFAR10_MEAN, atol=0.01) and np.allclose(std, CIFAR10_STD, atol=0.01)


def test_val_split_disjoint_deterministic_seeded(sample_cache, monkeypatch):
    full = _load_sample(sample_cache, monkeypatch, val_size=0)
    assert len(full.train) == 4000 and len(full.val) == 0 and full.val.x.shape[1:] == (3, 32, 32)
    a = _load_sample(sample_cache, monkeypatch, val_size=300, split_seed=1)
    a2 = _load_sample(sample_cache, monkeypatch, val_size=300, split_seed=1)
    c = _load_sample(sample_cache, monkeypatch, val_size=300, split_seed=2)
    train_set, val_set = _image_set(a.train.x), _image_set(a.val.x)
    assert len(val_set) == 300 and not train_set & val_set
    assert train_set | val_set == _image_set(full.train.x)
    assert torch.equal(a.test.x, full.test.x) and torch.equal(a.test.y, full.test.y)
    assert torch.equal(a.val.x, a2.val.x) and torch.equal(a.train.y, a2.train.y)
    assert _image_set(c.val.x) != val_set


def test_val_size_too_large(sample_cache, monkeypatch):
    with pytest.raises(ValueError, match="val_size=4000 leaves no training images"):
        _load_sample(sample_cache, monkeypatch, val_size=4000)


# ----------------------------------------------------------------------------- ImageFolder


@pytest.mark.parametrize("kind", ["folder", "tar", "folder-wrapped", "tar-wrapped"])
def test_imagefolder_loads_exact_pixels(tmp_path, kind):
    files = _tiny_files()
    if kind.startswith("folder"):
        path = _write_folder(tmp_path / "tiny", files, prefix="inner" if "wrapped" in kind else "")
    else:
        path = _write_tar(tmp_path / "tiny.tar.gz", files, "inner/" if "wrapped" in kind else "")
    b = load_data(DataConfig(dataset=str(path), val_size=0), progress=False)
    assert b.name == "tiny" and b.classes == ("ant", "cat")
    for split, got in (("train", b.train), ("test", b.test)):
        x, y = _expected(files, split)
        assert torch.equal(got.x, x) and torch.equal(got.y, y)
    # Not a CIFAR-10 name: the statistics come from the train split.
    assert b.mean == channel_stats(b.train.x)[0] and b.std == channel_stats(b.train.x)[1]


def test_imagefolder_val_split_and_cifar10_named_stats(tmp_path):
    files = _tiny_files(n_train=5)
    path = _write_tar(tmp_path / "my-cifar10-jpeg.tar.gz", files)
    b = load_data(DataConfig(dataset=str(path), val_size=4, split_seed=3), progress=False)
    assert b.name == "my-cifar10-jpeg"
    assert (b.mean, b.std) == (CIFAR10_MEAN, CIFAR10_STD)
    assert (len(b.train), len(b.val), len(b.test)) == (6, 4, 4)
    x, _ = _expected(files, "train")
    assert _image_set(b.train.x) | _image_set(b.val.x) == _image_set(x)


def test_channel_stats_oracle():
    x = torch.from_numpy(_images(5, seed=7)).permute(0, 3, 1, 2).contiguous()
    mean, std = channel_stats(x, chunk=2)
    xf = x.double() / 255
    assert np.allclose(mean, xf.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    assert np.allclose(std, xf.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-12)


def test_missing_path_error(tmp_path):
    missing = tmp_path / "nowhere.tar.gz"
    with pytest.raises(FileNotFoundError, match="nowhere.tar.gz.*does not exist"):
        load_data(DataConfig(dataset=str(missing)), progress=False)


def test_folder_without_train_test(tmp_path):
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "0.png").write_bytes(_png(_images(1, 0)[0]))
    with pytest.raises(ValueError, match=r"bad.*expected train/<class>/\*.jpg"):
        load_data(DataConfig(dataset=str(tmp_path / "bad")), progress=False)


def test_tar_without_test_split(tmp_path):
    files = _tiny_files()
    del files["test"]
    path = _write_tar(tmp_path / "notest.tar.gz", files)
    with pytest.raises(ValueError, match=r"no test images found.*notest.tar.gz"):
        load_data(DataConfig(dataset=str(path), val_size=0), progress=False)


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_mismatched_classes(tmp_path, kind):
    files = _tiny_files()
    files["test"]["dog"] = files["test"].pop("cat")
    if kind == "folder":
        path = _write_folder(tmp_path / "mis", files)
    else:
        path = _write_tar(tmp_path / "mis.tar.gz", files)
    with pytest.raises(ValueError, match=r"only in train \['cat'\], only in test \['dog'\]"):
        load_data(DataConfig(dataset=str(path), val_size=0), progress=False)


def test_several_top_level_folders(tmp_path):
    path = tmp_path / "two.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for top in ("a", "b"):
            blob = _png(_images(1, 0)[0])
            info = tarfile.TarInfo(f"{top}/train/cat/0.png")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(ValueError, match="several top-level folders"):
        load_data(DataConfig(dataset=str(path)), progress=False)


def test_bad_archive_and_bad_images(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar archive")
    with pytest.raises(ValueError, match="cannot read archive .*junk.tar.gz"):
        load_data(DataConfig(dataset=str(junk)), progress=False)

    files = _tiny_files()
    files["test"]["cat"][0] = ("00.png", _images(1, 0, size=9)[0])
    path = _write_folder(tmp_path / "sizes", files)
    with pytest.raises(ValueError, match="test/cat/00.png is 9x9.*same size"):
        load_data(DataConfig(dataset=str(path), val_size=0), progress=False)

    path = _write_folder(tmp_path / "corrupt", _tiny_files())
    (path / "train" / "ant" / "01.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot decode image .*train/ant/01.png"):
        load_data(DataConfig(dataset=str(path), val_size=0), progress=False)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*'cifar10'"):
        load_data(DataConfig(dataset="mnist"), progress=False)


@pytest.mark.parametrize("name", ["cifar10", "CIFAR-100", "svhn"])
def test_missing_torchvision_dataset(tmp_path, name):
    root = tmp_path / "empty_root"
    root.mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"not found under data root .*--download.*--data-root"
    ):
        load_data(DataConfig(dataset=name, data_root=str(root)), progress=False)


class _FakeCIFAR10:
    """Stands in for torchvision's CIFAR10: same attributes, (N, H, W, C) data, list targets."""

    base_folder = "cifar-10-batches-py"
    classes = ["a", "b", "c"]

    def __init__(self, root, train=True, download=False):
        n = 6 if train else 4
        self.data = _images(n, seed=int(train), size=32)
        self.targets = [i % 3 for i in range(n)]


class _FakeSVHN:
    """Stands in for torchvision's SVHN: (N, C, H, W) data, int64 labels."""

    def __init__(self, root, split="train", download=False):
        n = 6 if split == "train" else 4
        self.data = _images(n, seed=5, size=32).transpose(0, 3, 1, 2).copy()
        self.labels = np.arange(n, dtype=np.int64) % 10


def test_torchvision_arrays_converted(monkeypatch):
    from torchvision import datasets

    monkeypatch.setattr(datasets, "CIFAR10", _FakeCIFAR10)
    monkeypatch.setattr(datasets, "SVHN", _FakeSVHN)
    b = load_data(DataConfig(dataset="cifar10", val_size=2), progress=False)
    assert (b.name, b.classes, b.mean, b.std) == (
        "cifar10",
        ("a", "b", "c"),
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    assert (len(b.train), len(b.val), len(b.test)) == (4, 2, 4)
    hwc = _FakeCIFAR10(None, train=False).data
    assert torch.equal(b.test.x, torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert b.test.y.dtype == torch.int64 and b.test.y.tolist() == [0, 1, 2, 0]
    s = load_data(DataConfig(dataset="svhn", val_size=0), progress=False)
    assert s.classes == tuple("0123456789") and s.mean == data.SVHN_MEAN
    assert torch.equal(s.train.x, torch.from_numpy(_FakeSVHN(None).data))


# ----------------------------------------------------------------------------- cache


def test_cache_reused_and_corrupt_cache_rebuilt(tmp_path, monkeypatch, caplog):
    files = _tiny_files()
    path = _write_tar(tmp_path / "tiny.tar.gz", files)
    cfg = DataConfig(dataset=str(path), val_size=0)
    first = load_data(cfg, progress=False)
    caches = list((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 1
    with np.load(caches[0], allow_pickle=False) as z:  # plain arrays, no pickled objects
        assert z["train_x"].dtype == np.uint8

    # Second load: served from the cache, decoding would fail the test.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(imagefolder, "_decode", no_decode)
        second = load_data(cfg, progress=False)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)

    # A torn cache file is ignored with a warning and rebuilt in place.
    caches[0].write_bytes(b"PK\x03\x04 torn write")
    with caplog.at_level(logging.WARNING, logger="awp.data"):
        third = load_data(cfg, progress=False)
    assert "ignoring unreadable cache" in caplog.text
    assert torch.equal(first.train.x, third.train.x)
    with np.load(caches[0], allow_pickle=False) as z:
        assert np.array_equal(z["train_x"], first.train.x.numpy())
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_cache_follows_source_changes(tmp_path):
    path = _write_tar(tmp_path / "tiny.tar.gz", _tiny_files())
    cfg = DataConfig(dataset=str(path), val_size=0)
    load_data(cfg, progress=False)
    changed = _tiny_files(n_train=4)
    _write_tar(path, changed)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    b = load_data(cfg, progress=False)
    x, _ = _expected(changed, "train")
    assert torch.equal(b.train.x, x)


# ----------------------------------------------------------------------------- augmentation


def _batch(n: int = 12, size: int = 8) -> torch.Tensor:
    return torch.from_numpy(_images(n, seed=3, size=size)).permute(0, 3, 1, 2).contiguous()


def test_to_float():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.equal(to_float(x), torch.tensor([[0.0, 0.2, 1.0]]))
    with pytest.raises(ValueError, match="uint8"):
        to_float(x.float())


def test_augment_range_shape_determinism():
    x = _batch()
    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    again = augment(x, generator=torch.Generator().manual_seed(0))
    other = augment(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(x, _batch())  # input untouched


def test_augment_identity_without_padding_and_flip():
    x = _batch()
    out = augment(x, generator=torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(out, to_float(x))


def test_augment_flip_only():
    x = _batch(n=32)
    out = augment(x, generator=torch.Generator().manual_seed(5), padding=0, flip=True)
    _, _, flips = _crop_offsets_and_flips(32, torch.Generator().manual_seed(5), 0)
    assert 0 < int(flips.sum()) < 32  # both branches are exercised
    assert torch.equal(out[flips], torch.flip(to_float(x[flips]), dims=[3]))
    assert torch.equal(out[~flips], to_float(x[~flips]))


@pytest.mark.parametrize(("padding", "flip"), [(4, True), (2, False), (7, True)])
def test_augment_matches_per_image_loop(padding, flip):
    x = _batch(n=24, size=8)
    out = augment(x, generator=torch.Generator().manual_seed(11), padding=padding, flip=flip)
    dy, dx, flips = _crop_offsets_and_flips(24, torch.Generator().manual_seed(11), padding)
    for i in range(24):
        img = to_float(x[i : i + 1])  # (1, C, H, W)
        padded = F.pad(img, (padding,) * 4, mode="reflect")
        crop = padded[0, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        if flip and flips[i]:
            crop = torch.flip(crop, dims=[2])
        assert torch.equal(out[i], crop), f"image {i}"


def test_augment_bad_input():
    x = _batch()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="uint8"):
        augment(to_float(x), generator=gen)
    with pytest.raises(ValueError, match="padding"):
        augment(x, generator=gen, padding=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_same_on_gpu():
    x = _batch(n=64)
    cpu = augment(x, generator=torch.Generator().manual_seed(2))
    gpu = augment(x.cuda(), generator=torch.Generator().manual_seed(2))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("shuffle", [False, True])
def test_iterate_batches_covers_every_index_once(shuffle):
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(10, 3, shuffle=shuffle, generator=gen))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert all(b.dtype == torch.int64 and b.device.type == "cpu" for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    if not shuffle:
        assert torch.cat(batches).tolist() == list(range(10))
    dropped = list(iterate_batches(10, 3, shuffle=shuffle, drop_last=True))
    assert [len(b) for b in dropped] == [3, 3, 3]
    assert list(iterate_batches(0, 3, shuffle=shuffle)) == []


def test_iterate_batches_seeded():
    a = torch.cat(
        list(iterate_batches(50, 7, shuffle=True, generator=torch.Generator().manual_seed(4)))
    )
    b = torch.cat(
        list(iterate_batches(50, 7, shuffle=True, generator=torch.Generator().manual_seed(4)))
    )
    assert torch.equal(a, b) and not torch.equal(a, torch.arange(50))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(5, 0, shuffle=False))


def test_fixed_subset():
    a = fixed_subset(100, 10, seed=0)
    assert torch.equal(a, fixed_subset(100, 10, seed=0))
    assert not torch.equal(a, fixed_subset(100, 10, seed=1))
    assert a.dtype == torch.int64 and len(set(a.tolist())) == 10
    assert torch.equal(a, a.sort().values) and 0 <= int(a.min()) and int(a.max()) < 100
    assert torch.equal(fixed_subset(5, 5, seed=0), torch.arange(5))
    assert torch.equal(fixed_subset(5, 9, seed=0), torch.arange(5))


# ----------------------------------------------------------------------------- make_sample.py


def _make_sample_module():
    spec = importlib.util.spec_from_file_location(
        "make_sample", REPO_ROOT / "scripts" / "make_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_sample_is_reproducible_and_loadable(tmp_path):
    make_sample = _make_sample_module()
    source = _write_tar(tmp_path / "src.tar.gz", _tiny_files(n_train=5, n_test=3))
    args = ["--source", str(source), "--per-class-train", "2", "--per-class-test", "1"]
    assert make_sample.main([*args, "--out", str(tmp_path / "a" / "s.tar.gz"), "--seed", "1"]) == 0
    assert make_sample.main([*args, "--out", str(tmp_path / "b" / "s.tar.gz"), "--seed", "1"]) == 0
    first = (tmp_path / "a" / "s.tar.gz").read_bytes()
    assert first == (tmp_path / "b" / "s.tar.gz").read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(first).hexdigest()
    assert manifest["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["counts"] == {"train": 4, "test": 2} and manifest["seed"] == 1
    # The chosen files are byte-identical copies of the source's files.
    src, out = read_imagefolder_files(source), read_imagefolder_files(tmp_path / "a" / "s.tar.gz")
    for split in ("train", "test"):
        for cls, items in out[split].items():
            assert set(items) <= set(src[split][cls])
    b = load_data(DataConfig(dataset=str(tmp_path / "a" / "s.tar.gz"), val_size=0), progress=False)
    assert (len(b.train), len(b.test)) == (4, 2)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="shared CIFAR-10 archive not present")
def test_shared_archive_and_sample_provenance():
    """Decodes all 60k images (15 s on 2 cores): the full archive and the sample's origin."""
    b = load_data(DataConfig(dataset=str(SHARED_ARCHIVE), val_size=0), progress=False)
    assert (len(b.train), len(b.test), b.num_classes) == (50000, 10000, 10)
    assert torch.bincount(b.train.y).tolist() == [5000] * 10
    mean, std = channel_stats(b.train.x)
    assert np.allclose(mean, CIFAR10_MEAN, atol=0.005) and np.allclose(std, CIFAR10_STD, atol=0.005)
    manifest = json.loads((SAMPLE_PATH.parent / "manifest.json").read_text())
    assert manifest["source_sha256"] == hashlib.sha256(SHARED_ARCHIVE.read_bytes()).hexdigest()
    src, sample = read_imagefolder_files(SHARED_ARCHIVE), read_imagefolder_files(SAMPLE_PATH)
    for split in ("train", "test"):
        for cls, items in sample[split].items():
            assert set(items) <= set(src[split][cls])  # original JPEG bytes, not re-encoded


def test_train_size_keeps_a_seeded_subset_of_the_training_split():
    from awp.data import DataConfig, load_data

    full = load_data(DataConfig(dataset="sample", val_size=500), progress=False)
    small = load_data(DataConfig(dataset="sample", val_size=500, train_size=700), progress=False)
    again = load_data(DataConfig(dataset="sample", val_size=500, train_size=700), progress=False)
    assert len(small.train) == 700 and torch.equal(small.train.x, again.train.x)
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)
    # every kept image is one of the full training split's images
    flat_full = {bytes(t.numpy().tobytes()) for t in full.train.x}
    assert all(bytes(t.numpy().tobytes()) in flat_full for t in small.train.x)
    with pytest.raises(ValueError, match="train_size=9999"):
        load_data(DataConfig(dataset="sample", val_size=500, train_size=9999), progress=False)
    with pytest.raises(ValueError, match="train_size"):
        DataConfig(train_size=-1)
