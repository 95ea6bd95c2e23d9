"""Post-training weight quantization: against a per-channel loop, a proxy quantized model, and
the figure."""

from __future__ import annotations

import copy

import pytest
import torch

from analysis.quantize import (
    FLOAT_BITS,
    QuantizeConfig,
    quantize_per_channel,
    quantized_accuracy,
)
from awp.config import AttackConfig
from awp.evaluate import evaluate_attack
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model


def _reference(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Channel by channel, value by value: the definition written out."""
    levels = 2 ** (bits - 1) - 1
    out = torch.empty_like(w)
    for c in range(w.shape[0]):
        ch = w[c].reshape(-1)
        m = max(abs(float(v)) for v in ch)
        step = m / levels if m > 0 else 1.0
        q = [max(-levels, min(levels, round(float(v) / step))) * step for v in ch]
        out[c] = torch.tensor(q, dtype=w.dtype).reshape(w[c].shape)
    return out


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_quantization_equals_the_per_channel_loop(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    w[2] = 0.0  # an all-zero channel stays zero
    q = quantize_per_channel(w, bits)
    torch.testing.assert_close(q, _reference(w, bits), rtol=0, atol=1e-12)
    assert torch.all(q[2] == 0)
    for c in (0, 1, 3, 4):  # at most 2L + 1 values per channel, the extreme one kept
        assert len(torch.unique(q[c])) <= 2**bits - 1
        assert float(q[c].abs().max()) == pytest.approx(float(w[c].abs().max()))


def test_more_bits_quantize_more_finely():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    errors = [float((quantize_per_channel(w, b) - w).norm()) for b in (2, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02 * float(w.norm())
    with pytest.raises(ValueError, match="at least 2 bits"):
        quantize_per_channel(w, 1)


def test_the_attack_is_regenerated_on_the_quantized_model_and_weights_come_back():
    model = tiny_model(0).eval()
    x, y = tiny_batch(16, seed=1)
    attack = AttackConfig(name="pgd", steps=3, step_size=2 / 255, mode="eval")
    cfg = QuantizeConfig(bits=(4, 2), n_test=0, attack=attack, batch_size=8, seed=3)
    before = snapshot(model)
    rows = quantized_accuracy(model, x, y, cfg)
    assert_same_state(model, before)  # restored bit for bit
    assert [r["bits"] for r in rows] == [FLOAT_BITS, 4, 2]
    for r in rows:  # the proxy: a copy whose weights were quantized by the reference loop
        proxy = copy.deepcopy(model)
        if r["bits"] != FLOAT_BITS:
            with torch.no_grad():
                for name, p in proxy.named_parameters():
                    if name.endswith("weight") and p.dim() > 1:
                        p.copy_(_reference(p.detach(), r["bits"]))
        nat = evaluate_attack(proxy, x, y, None, batch_size=8, seed=3)
        rob = evaluate_attack(proxy, x, y, attack, batch_size=8, seed=3)
        assert r["natural_acc"] == pytest.approx(nat.accuracy, abs=1e-9)
        assert r["robust_acc"] == pytest.approx(rob.accuracy, abs=1e-9)
        assert r["robust_loss"] == pytest.approx(rob.loss, rel=1e-5)
    assert rows[0]["weight_error"] == 0.0 < rows[1]["weight_error"] < rows[2]["weight_error"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="bits"):
        QuantizeConfig(bits=(4, 4))
    with pytest.raises(ValueError):
        QuantizeConfig(bits=(1,))


def test_the_figure_draws_one_line_per_model_with_float_last():
    from figures.quantize import plot_quantization

    rows = [
        {"label": lab, "bits": b, "natural_acc": 0.5 - 0.01 * i, "robust_acc": 0.2 - 0.01 * i}
        for lab in ("AT", "AT-AWP")
        for i, b in enumerate((FLOAT_BITS, 8, 4))
    ]
    fig = plot_quantization(rows)
    left, right = fig.axes[:2]
    assert len(left.lines) == len(right.lines) == 2
    assert [t.get_text() for t in left.get_xticklabels()] == ["4", "8", "float"]
    xs = list(left.lines[0].get_xdata())
    assert xs == sorted(xs) and xs[-1] == 10  # float drawn after the widest
    with pytest.raises(ValueError):
        plot_quantization([{"label": "AT"}])
