"""Checks that need a CUDA device (run with `pytest -m gpu` on a GPU machine)."""

import pytest
import torch

from awp.attacks import pgd
from awp.config import PGD10_TRAIN, AWPConfig
from awp.objectives import at_objective
from awp.train import train_step
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_seeded_attack_start_is_device_independent():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(dtype=torch.float64)
    kw = dict(eps=8 / 255, step_size=2 / 255, steps=0)  # only the random start
    cpu = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    gpu = pgd(model.cuda(), x.cuda(), y.cuda(), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(cpu, gpu.cpu())


def test_awp_step_on_cuda_restores_and_trains():
    model = tiny_model().cuda()
    x, y = (t.cuda() for t in tiny_batch())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = snapshot(model)
    stats = train_step(
        model,
        opt,
        x,
        y,
        attack=PGD10_TRAIN,
        objective=at_objective,
        awp=AWPConfig(gamma=0.01),
        generator=torch.Generator().manual_seed(0),
    )
    assert stats.n == len(y)
    with pytest.raises(AssertionError):
        assert_same_state(model, snap)  # the step did move the weights
