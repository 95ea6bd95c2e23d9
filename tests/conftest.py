import os
import pathlib
import sys

# Tiny models run fastest on one thread, and a subprocess started by a test (torchrun, a killed
# `awp train`) must use the same thread count as the test itself for bit-equal results.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_demo_folder(tmp_path_factory):
    """One `awp demo` as small as it runs (tests.test_demo.TINY: smallcnn at width 1/4, 3
    epochs, 48 training and 16 test images of 4 classes), run once for every test that reads a
    demo folder: (its folder, its dataset). Its layers are too small for a power-law fit, so
    spectra.json holds "alpha": null. A test that changes the folder works on a copy."""
    from awp_landscape.cli import main
    from tests.helpers import make_image_folder
    from tests.test_demo import TINY

    root = tmp_path_factory.mktemp("tiny_demo")
    data = make_image_folder(root / "data", classes=4, n_train=48, n_test=16)
    out = root / "out"
    assert main(["demo", "--out", str(out), "--dataset", str(data), *TINY]) == 0
    return out, data
