"""Weight spectra: singular values, the FFT operator norm against the convolution itself, the
power-law fit against Pareto samples and scipy, the model-level records and ``awp spectra``."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps

from analysis.conv_operator import (
    conv_operator_norm,
    conv_singular_values,
    zero_padded_norm_lower,
    zero_padding_bound,
)
from analysis.powerlaw import fit_power_law, ks_distance
from analysis.weight_spectra import (
    LayerGeometry,
    SpectraConfig,
    esd_layer_name,
    layer_geometry,
    layer_spectrum,
    model_spectra,
    singular_values,
)
from awp.checkpoint import save_checkpoint
from awp.config import to_dict
from awp.data import DataConfig
from awp.models import ModelSpec, build_model
from awp_landscape.cli import main
from tests.helpers import assert_same_state, snapshot, tiny_model

# ----------------------------------------------------------------------------- matrices


def test_singular_values_of_the_reshaped_weight_match_torch_svdvals():
    g = torch.Generator().manual_seed(0)
    for w in (torch.randn(5, 3, 3, 3, generator=g), torch.randn(7, 4, generator=g)):
        # the WeightWatcher matrix, built row by row: output filter o flattened
        rows = [w[o].reshape(-1).double() for o in range(w.shape[0])]
        expected = torch.linalg.svdvals(torch.stack(rows)).numpy()
        got = singular_values(w)
        assert got.dtype == np.float64 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
        rec, eigs = layer_spectrum(w, LayerGeometry("linear"), power_iterations=0)
        np.testing.assert_allclose(eigs, np.sort(expected**2), rtol=1e-12)
        assert rec.frobenius_norm == pytest.approx(float(w.double().norm()), rel=1e-12)
        assert rec.spectral_norm == pytest.approx(expected[0], rel=1e-12)
        assert rec.stable_rank == pytest.approx(float(w.double().norm() ** 2) / expected[0] ** 2)


# ----------------------------------------------------------------------------- conv operators


def circular_conv(x, k, *, stride, dilation, groups):
    """y[t] = sum_a k[a] x[(s t + d a) mod n]: wrap-around padding written out with F.pad."""
    ext = [dilation * (s - 1) for s in k.shape[-2:]]
    xp = F.pad(x, (0, ext[1], 0, ext[0]), mode="circular")
    return F.conv2d(xp, k, stride=stride, dilation=dilation, groups=groups)


def dense(op, shape):
    """The matrix of a linear map on tensors of ``shape``, one basis vector at a time."""
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64)
    return torch.stack([op(eye[i].reshape(shape)).reshape(-1) for i in range(n)], 1)


CASES = [  # (cout, cin, k, n, stride, dilation, groups)
    (3, 2, 3, 6, 1, 1, 1),
    (3, 2, 3, 6, 2, 1, 1),  # a downsampling conv
    (4, 2, 1, 6, 2, 1, 1),  # a 1x1 shortcut
    (4, 4, 3, 8, 1, 2, 2),  # dilation and groups
    (2, 3, 2, 4, 1, 1, 1),  # an even kernel
]


@pytest.mark.parametrize("cout,cin,k,n,stride,dilation,groups", CASES)
def test_fft_singular_values_are_those_of_the_circular_conv(
    cout, cin, k, n, stride, dilation, groups
):
    g = torch.Generator().manual_seed(cout * 10 + k)
    kernel = torch.randn(cout, cin // groups, k, k, generator=g, dtype=torch.float64)

    def op(x):
        return circular_conv(x, kernel, stride=stride, dilation=dilation, groups=groups)

    expected = torch.linalg.svdvals(dense(op, (1, cin, n, n))).numpy()
    got = conv_singular_values(kernel, n, stride=stride, dilation=dilation, groups=groups)
    # float64 SVDs of matrices of norm ~5: agreement to rounding, 1e-10 leaves room
    np.testing.assert_allclose(got, expected[: len(got)], rtol=0, atol=1e-10)
    assert np.all(expected[len(got) :] < 1e-10)  # the dense matrix's extra zeros, if any
    norm = conv_operator_norm(kernel, n, stride=stride, dilation=dilation, groups=groups)
    assert norm == pytest.approx(expected[0], rel=1e-12)


def sigma_max(op, shape):
    """The largest singular value of a linear map, exactly: the 2-norm of its dense matrix
    (float64 SVD), not an iteration that converges from below."""
    return float(torch.linalg.matrix_norm(dense(op, shape), ord=2))


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
def test_fft_norm_and_power_iteration_on_the_conv_itself(k, stride, padding):
    """Circular padding: the FFT value is exact. Zero padding (the networks'): the real conv's
    norm (its dense matrix's, exactly) stays below the guaranteed bound, our power iteration on
    the conv itself reaches it from below, and it is near the circular value on n."""
    n, ratios = 8, []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        kernel = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64)
        circ = conv_operator_norm(kernel, n, stride=stride)
        wrap = sigma_max(
            lambda x, k=kernel: circular_conv(x, k, stride=stride, dilation=1, groups=1),
            (1, 3, n, n),
        )
        # both exact up to float64 rounding (the FFT's and the dense SVD's)
        assert wrap == pytest.approx(circ, rel=1e-10)
        zero = sigma_max(
            lambda x, k=kernel: F.conv2d(x, k, stride=stride, padding=padding), (1, 3, n, n)
        )
        bound = zero_padding_bound(kernel, n, stride=stride, padding=padding)
        assert zero <= bound * (1 + 1e-9)
        ours = zero_padded_norm_lower(kernel, n, stride=stride, padding=padding, iterations=300)
        assert ours <= zero * (1 + 1e-9) and ours == pytest.approx(zero, rel=1e-3)
        ratios.append(zero / circ)
    if k == 1 and padding == 0:
        # nothing wraps: zero padding and circular padding are the same operator
        np.testing.assert_allclose(ratios, 1.0, rtol=1e-9)
    else:
        # Measured relation on n = 8 (random 4x3 kernels): the zero-padded norm was 0.91-1.00
        # of the circular one (stride 2 on n = 6 was once 1.03): close, and not a bound.
        assert 0.85 < min(ratios) and max(ratios) < 1.05


def test_conv_operator_refusals():
    kernel = torch.ones(2, 2, 3, 3)
    with pytest.raises(ValueError, match="not divisible by the stride"):
        conv_operator_norm(kernel, 7, stride=2)
    with pytest.raises(ValueError, match="groups"):
        conv_operator_norm(kernel, 8, groups=3)
    with pytest.raises(ValueError, match="iterations"):
        zero_padded_norm_lower(kernel, 8, iterations=0)


# ----------------------------------------------------------------------------- power law


def pareto(n, alpha, xmin, rng):
    """Continuous power law p(x) ~ x^-alpha on [xmin, inf) by inverse CDF sampling."""
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


def test_power_law_mle_matches_scipy_and_ks_matches_kstest():
    rng = np.random.default_rng(0)
    x = pareto(300, 2.5, 1.0, rng)
    fit = fit_power_law(x, xmin=1.0)
    b, _, _ = sps.pareto.fit(x, floc=0, fscale=1.0)  # scipy's MLE of the Pareto shape b
    assert fit.alpha == pytest.approx(b + 1, rel=1e-9) and fit.n_tail == 300
    assert fit.alpha_se == pytest.approx((fit.alpha - 1) / np.sqrt(300))
    free = fit_power_law(x, min_tail=10)
    tail = np.sort(x[x >= free.xmin])
    ref = sps.kstest(tail, lambda t: 1 - (t / free.xmin) ** (1 - free.alpha)).statistic
    assert free.ks_distance == pytest.approx(ref, abs=1e-12)
    assert ks_distance(tail, free.xmin, free.alpha) == free.ks_distance


def test_power_law_fit_recovers_alpha_within_its_standard_error():
    # 200 independent samples: the fitted alpha should fall within one standard error of the
    # truth about 68% of the time and within two about 95% (binomial spread +-0.07 at n=200).
    rng = np.random.default_rng(1)
    one = two = 0
    for _ in range(200):
        fit = fit_power_law(pareto(400, 2.5, 1.0, rng), min_tail=50)
        err = abs(fit.alpha - 2.5) / fit.alpha_se
        one, two = one + (err <= 1), two + (err <= 2)
    assert 0.55 <= one / 200 <= 0.8 and two / 200 >= 0.88


def test_power_law_finds_the_tail_of_a_mixture():
    # a uniform body on [0.1, 1) below a Pareto tail from 1: x_min is found near 1
    rng = np.random.default_rng(2)
    x = np.r_[rng.uniform(0.1, 1.0, 400), pareto(600, 3.0, 1.0, rng)]
    fit = fit_power_law(x, min_tail=20)
    assert 0.9 < fit.xmin < 1.3 and abs(fit.alpha - 3.0) < 2 * fit.alpha_se


def test_power_law_without_enough_values():
    fit = fit_power_law(np.array([0.0, 1.0, 2.0, 3.0]), min_tail=10)
    assert np.isnan(fit.alpha) and fit.n == 3 and fit.n_tail == 0
    assert np.isnan(fit_power_law(np.ones(20), min_tail=5).alpha)  # one repeated value
    with pytest.raises(ValueError, match="min_tail"):
        fit_power_law(np.ones(3), min_tail=1)


# ----------------------------------------------------------------------------- models

SPEC = ModelSpec(name="preactresnet18", num_classes=10, width=0.125)


def test_layer_geometry_follows_the_network():
    torch.manual_seed(0)
    model = build_model(SPEC).train()
    before = snapshot(model)
    geo = layer_geometry(model, image_size=32)
    assert model.training and all(m.training for m in model.modules())  # mode left as it was
    assert_same_state(model, before)
    assert geo["conv1.weight"].input_size == (32, 32)
    assert geo["layer2.0.conv1.weight"].stride == (2, 2)
    assert geo["layer2.0.conv1.weight"].input_size == (32, 32)
    assert geo["layer2.0.conv2.weight"].input_size == (16, 16)
    assert geo["layer4.1.conv2.weight"].input_size == (4, 4)
    assert geo["layer3.0.shortcut.0.weight"].padding == (0, 0)
    assert geo["linear.weight"].kind == "linear"


def test_model_spectra_records():
    torch.manual_seed(0)
    model = build_model(SPEC)
    recs, esds = model_spectra(model, SpectraConfig(power_iterations=20), label="AT")
    convs = [n for n, p in model.named_parameters() if p.dim() == 4]
    assert [r.layer for r in recs] == [*convs, "linear.weight"]
    assert [r.depth for r in recs] == list(range(len(recs)))
    lin = recs[-1]
    assert lin.op_norm_circular == lin.op_norm_zero_bound == lin.spectral_norm
    for r in recs[:-1]:
        assert r.op_norm_zero_lower <= r.op_norm_zero_bound * (1 + 1e-9)
    assert recs[0].fft_size == 32 and recs[0].bound_grid == 33
    assert set(esds) == {r.layer for r in recs}
    fixed, _ = model_spectra(model, SpectraConfig(fft_size=16, power_iterations=0))
    assert {r.fft_size for r in fixed[:-1]} == {16} and np.isnan(fixed[0].op_norm_zero_lower)
    with pytest.raises(ValueError, match="picks no conv or linear"):
        model_spectra(model, SpectraConfig(layers=("norm",)))
    params = dict(model.named_parameters())
    assert esd_layer_name(params, "last-conv") == convs[-1]
    with pytest.raises(ValueError, match="must pick one"):
        esd_layer_name(params, "conv")


def test_tiny_model_spectra_uses_its_own_sizes():
    recs, _ = model_spectra(tiny_model(), SpectraConfig(image_size=8, power_iterations=10))
    assert [r.fft_size for r in recs] == [8, 8, 0]


# ----------------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def run_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    spec = ModelSpec(name="smallcnn", num_classes=10, width=0.5)
    paths = []
    for run, awp in (("at", False), ("at_awp", True)):
        for epoch in (1, 2):
            torch.manual_seed(epoch + 10 * awp)
            paths.append(
                save_checkpoint(
                    root / run / "checkpoints" / f"epoch_{epoch:03d}.pt",
                    model=build_model(spec),
                    model_spec=to_dict(spec),
                    config={"method": "at", "awp": awp, "data": to_dict(DataConfig())},
                    epoch=epoch,
                )
            )
    return root, paths


def test_spectra_command_writes_records_and_figures(run_ckpts, capsys):
    root, paths = run_ckpts
    out = root / "out"
    args = ["spectra", *map(str, paths), "--out", str(out), "--min-tail", "4", "--no-progress"]
    assert main([*args, "--power-iterations", "10"]) == 0
    res = json.loads((out / "spectra.json").read_text())
    assert res["final"] == ["AT ep2", "AT-AWP ep2"]
    assert len(res["stats"]) == 4 * 3 and len(res["summary"]) == 4
    assert {r["method"] for r in res["stats"]} == {"AT", "AT-AWP"}
    assert res["config"]["min_tail"] == 4 and "circular" in res["operator_note"]
    assert [r["layer"] for r in res["esd"]] == ["conv2.weight"] * 4
    assert res["summary"][0]["alpha_mean"] == pytest.approx(
        np.nanmean([r["alpha"] for r in res["stats"] if r["label"] == "AT ep1"]), nan_ok=True
    )
    for name in ("spectra_esd", "spectra_depth", "spectra_epochs"):
        assert (out / f"{name}.png").exists(), name
    assert "op_norm_zero_bound" in capsys.readouterr().out
    # a rerun computes nothing again (the results are on disk) and gives the same records
    results = sorted((out / "spectra_units").glob("*/result.json"))
    kept = [json.loads(p.read_text())["result"] for p in results]
    assert len(results) == 4
    assert main([*args, "--power-iterations", "10", "--labels", "a", "b", "c", "d"]) == 0
    assert "4 of 4 checkpoint(s) already measured" in capsys.readouterr().out
    assert [json.loads(p.read_text())["result"] for p in results] == kept
    again = json.loads((out / "spectra.json").read_text())
    assert [r["alpha"] for r in again["stats"]] == pytest.approx(
        [r["alpha"] for r in res["stats"]], nan_ok=True
    )
    assert again["final"] == ["b", "d"]
    # other settings in the same folder are refused; bad selectors get a clear error
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err
    bad = ["spectra", str(paths[0]), "--out", str(root / "bad"), "--no-progress"]
    assert main([*bad, "--layers", "norm"]) == 2
    assert "picks no conv or linear" in capsys.readouterr().err
    assert main([*bad, "--min-tail", "1"]) == 2
    assert "min_tail" in capsys.readouterr().err
