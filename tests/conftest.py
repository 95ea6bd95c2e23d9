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
    spectra.json holds "alpha": null. A test that changes the folder works on a copy.

    Under pytest-xdist each worker is a session of its own: the first worker that asks runs
    the demo in the folder the workers share, the others wait for it (a lock) and read it.
    """
    import fcntl
    import shutil

    from awp_landscape.cli import main
    from tests.helpers import make_image_folder
    from tests.test_demo import TINY

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0, gw1...: the run's folder is the parent
        shared = shared.parent
    root = shared / "tiny_demo"
    data, out = root / "data", root / "out"
    with open(shared / "tiny_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "finished").exists():
            shutil.rmtree(root, ignore_errors=True)
            make_image_folder(data, classes=4, n_train=48, n_test=16)
            assert main(["demo", "--out", str(out), "--dataset", str(data), *TINY]) == 0
            (root / "finished").touch()
    return out, data
