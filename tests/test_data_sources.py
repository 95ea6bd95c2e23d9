"""Data from elsewhere: tensors files, py: dataset functions, ImageNet-style crops of folders,
and a DataLoader or (x, y) from Python, each against the tensors written by the test."""

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from awp.data import DataConfig, load_data, tensors_of
from tests.helpers import make_image_folder, synthetic_images


def config(dataset, **kw):
    return DataConfig(dataset=str(dataset), val_size=0, **kw)


def test_a_pt_file_of_images_and_one_of_splits(tmp_path):
    x, y = synthetic_images(12, classes=3, size=8)
    torch.save({"x": x, "y": y, "classes": ["a", "b", "c"]}, tmp_path / "d.pt")
    data = load_data(config(tmp_path / "d.pt"), progress=False)
    assert torch.equal(data.train.x, x) and torch.equal(data.test.y, y)
    assert data.classes == ("a", "b", "c") and data.name == "d"
    assert data.mean == pytest.approx(tuple((x.double() / 255).mean((0, 2, 3)).tolist()))
    xt, yt = synthetic_images(5, classes=3, size=8, seed=3)
    torch.save({"train_x": x, "train_y": y, "test_x": xt, "test_y": yt}, tmp_path / "s.pt")
    data = load_data(DataConfig(dataset=str(tmp_path / "s.pt"), val_size=2), progress=False)
    assert len(data.train) == 10 and len(data.val) == 2 and torch.equal(data.test.x, xt)
    assert data.classes == ("0", "1", "2")


def test_npz_and_safetensors_of_non_image_features(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 8, generator=g)
    y = torch.randint(0, 4, (20,), generator=g)
    np.savez(tmp_path / "tab.npz", x=x.numpy(), y=y.numpy(), classes=np.array(list("wxyz")))
    data = load_data(config(tmp_path / "tab.npz"), progress=False)
    assert torch.equal(data.train.x, x) and data.num_classes == 4 and data.mean == ()
    st = pytest.importorskip("safetensors.torch")
    st.save_file({"x": x, "y": y}, str(tmp_path / "tab.safetensors"))
    data = load_data(config(tmp_path / "tab.safetensors"), progress=False)
    assert torch.equal(data.test.x, x) and data.classes == ("0", "1", "2", "3")


def test_a_tensors_file_without_x_and_y_is_one_line(tmp_path):
    torch.save({"images": torch.zeros(2, 3, 4, 4)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"holds \['images'\]; it needs x and y"):
        load_data(config(tmp_path / "bad.pt"), progress=False)
    torch.save({"x": torch.zeros(3, 2), "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "n.pt")
    with pytest.raises(ValueError, match=r"x \(3, 2\) and y \(2,\) need the same number"):
        load_data(config(tmp_path / "n.pt"), progress=False)


@pytest.fixture
def dataset_module(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from PIL import Image

            class Pictures:
                classes = ["cat", "dog"]

                def __init__(self, split):
                    rng = np.random.default_rng(0 if split == "train" else 1)
                    self.images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)

                def __len__(self):
                    return len(self.images)

                def __getitem__(self, i):
                    return Image.fromarray(self.images[i]), i % 2

            def pictures(split):
                return Pictures(split)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("userdata", None)


def test_a_py_dataset_function_gets_its_split(dataset_module):
    import userdata

    data = load_data(config("py:userdata:pictures"), progress=False)
    for split, ds in (("train", userdata.Pictures("train")), ("test", userdata.Pictures("test"))):
        want = torch.from_numpy(ds.images.transpose(0, 3, 1, 2).copy())
        assert torch.equal(getattr(data, split).x, want)
        assert getattr(data, split).y.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.classes == ("cat", "dog")
    with pytest.raises(ValueError, match="userdata has no 'picturez'"):
        load_data(config("py:userdata:picturez"), progress=False)


def test_center_crop_is_imagenets_evaluation_transform(tmp_path):
    import torchvision.transforms as T

    folder = make_image_folder(tmp_path / "big", n_train=4, n_test=3, size=20)
    data = load_data(config(folder, center_crop=12), progress=False)
    assert data.train.x.shape[1:] == (3, 12, 12)
    # the reference: torchvision's Resize(round(12 / 0.875)) and CenterCrop(12) on the PNG
    first = sorted((folder / "test").glob("*/*.png"))[0]
    ref = T.CenterCrop(12)(T.Resize(14)(Image.open(first).convert("RGB")))
    assert torch.equal(data.test.x[0], torch.from_numpy(np.asarray(ref).transpose(2, 0, 1).copy()))
    with pytest.raises(ValueError, match="center_crop .* resizes and crops images of a folder"):
        load_data(config(tmp_path / "x.pt", center_crop=12), progress=False)


def test_tensors_of_a_dataloader_a_dataset_or_a_pair():
    x = torch.rand(10, 8)
    y = torch.arange(10) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    for data in (loader, TensorDataset(x, y), (x, y)):
        gx, gy = tensors_of(data)
        assert torch.equal(gx, x) and torch.equal(gy, y)
    gx, gy = tensors_of(loader, limit=6)
    assert torch.equal(gx, x[:6]) and torch.equal(gy, y[:6])
    with pytest.raises(ValueError, match="cannot take data from a int"):
        tensors_of(3)
