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
