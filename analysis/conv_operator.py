"""Singular values of a convolution as a linear map on images, by the 2-D DFT.

A 2-D convolution with ``cin`` input and ``cout`` output channels on ``n_h x n_w`` inputs with
*circular* (wrap-around) padding is block-diagonalized by the unitary 2-D DFT: at each
frequency (u, v) it acts as the ``cout x cin`` matrix

    K^(u, v) = sum_{a,b} K[:, :, a, b] exp(-2 pi i (u a / n_h + v b / n_w)),

so its singular values are the union over the ``n_h n_w`` frequencies of the singular values of
these matrices, and its operator norm is their largest (Sedghi, Gupta, Long 2019). Cross-
correlation (PyTorch's ``conv2d``) instead of convolution, and any padding offset, multiply
K^ by unit-modulus phases or conjugate it: the singular values do not change.

Strided convolutions (stride s, the ResNets' downsampling convs and 1x1 shortcuts) are the
circular convolution followed by keeping every s-th output. Subsampling folds the input
frequencies u + k n_h/s (k = 0..s-1) onto output frequency u, so the operator is block-
diagonal over the (n_h/s) x (n_w/s) output frequencies with blocks

    M(u, v) = [K^(u + k n_h/s_h, v + l n_w/s_w)]_{k, l} / sqrt(s_h s_w)   (cout x cin s_h s_w)

whose singular values, together, are exactly those of the strided circular operator (this needs
n divisible by s). Dilation places the taps d apart; groups make the operator block-diagonal
over groups (union of the groups' singular values).

The networks here pad with *zeros*, for which the circular value is not exact. What holds:
the zero-padded convolution on n x n equals an isometric embedding into an N x N grid, the
circular (strided) convolution on that grid, and a coordinate projection, as soon as
N >= n + p (so wrap-around only reads the embedded zeros) and N covers every output position;
so its norm is at most the circular norm on that N (:func:`zero_padding_grid`). The circular
norm on n itself can be above or below the zero-padded norm; tests measure by how much.

Reference: Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019
(Theorem 6; the strided case is the standard polyphase decomposition, derived above).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[int, int]
# Complex entries per chunk of frequency matrices (64 MiB of complex128).
_CHUNK_ENTRIES = 1 << 22


def _pair(v: int | Sequence[int]) -> Pair:
    if isinstance(v, int):
        return (v, v)
    a, b = (int(x) for x in v)
    return (a, b)


def _check(kernel: torch.Tensor, size: Pair, stride: Pair, dilation: Pair, groups: int) -> None:
    if kernel.dim() != 4:
        raise ValueError(
            f"need a conv kernel (cout, cin/groups, kh, kw), got {tuple(kernel.shape)}"
        )
    if groups < 1 or kernel.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {kernel.shape[0]} output channels")
    if min(*size, *stride, *dilation) < 1:
        raise ValueError(f"sizes, strides and dilations must be >= 1: {size}, {stride}, {dilation}")
    for n, s, axis in ((size[0], stride[0], "height"), (size[1], stride[1], "width")):
        if n % s:
            raise ValueError(
                f"input {axis} {n} is not divisible by the stride {s}: the strided circular "
                "convolution is then not shift-structured (no exact FFT formula)"
            )


def _frequency_blocks(
    kernel: torch.Tensor,
    size: Pair,
    stride: Pair,
    dilation: Pair,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The blocks M(u, v) for output frequencies u in ``rows``, v in ``cols``, complex128.

    Returns:
        (len(rows) * len(cols), cout, cin * s_h * s_w).
    """
    (n_h, n_w), (s_h, s_w), (d_h, d_w) = size, stride, dilation
    cout, cin, kh, kw = kernel.shape
    m_h, m_w = n_h // s_h, n_w // s_w
    k = kernel.to(torch.complex128)
    dev = kernel.device
    # Input frequencies folded onto output frequency (u, v): u + a m_h, v + b m_w.
    fu = (rows[:, None] + m_h * torch.arange(s_h, device=dev)[None, :]).to(torch.float64)
    fv = (cols[:, None] + m_w * torch.arange(s_w, device=dev)[None, :]).to(torch.float64)
    th = torch.arange(kh, device=dev, dtype=torch.float64) * d_h  # tap positions
    tw = torch.arange(kw, device=dev, dtype=torch.float64) * d_w
    ph = torch.exp(-2j * math.pi * fu[..., None] * th / n_h)  # (rows, s_h, kh)
    pw = torch.exp(-2j * math.pi * fv[..., None] * tw / n_w)  # (cols, s_w, kw)
    # K^ at every folded frequency: (rows, cols, s_h, s_w, cout, cin)
    khat = torch.einsum("rap,vbq,oipq->rvaboi", ph, pw, k)
    blocks = khat.permute(0, 1, 4, 2, 3, 5).reshape(len(rows) * len(cols), cout, s_h * s_w * cin)
    return blocks / math.sqrt(s_h * s_w)


def _chunks(
    kernel: torch.Tensor,
    size: Pair,
    stride: Pair,
    dilation: Pair,
    groups: int,
    *,
    half: bool,
) -> Iterator[torch.Tensor]:
    """The frequency blocks of every group, a chunk of output-frequency rows at a time.

    ``half`` keeps the columns v <= m_w / 2 only: for a real kernel the block at (-u, -v) is the
    complex conjugate of the one at (u, v) up to a column permutation (same singular values),
    and every pair has a member with v <= m_w / 2.
    """
    _check(kernel, size, stride, dilation, groups)
    w = kernel.detach().to(torch.float64)
    cout_g = w.shape[0] // groups
    m_h, m_w = size[0] // stride[0], size[1] // stride[1]
    cols = torch.arange(m_w // 2 + 1 if half else m_w, device=w.device)
    per_row = len(cols) * cout_g * w.shape[1] * stride[0] * stride[1]
    step = max(1, _CHUNK_ENTRIES // max(1, per_row))
    for g in range(groups):
        wg = w[g * cout_g : (g + 1) * cout_g]
        for start in range(0, m_h, step):
            rows = torch.arange(start, min(m_h, start + step), device=w.device)
            yield _frequency_blocks(wg, size, stride, dilation, rows, cols)


def conv_singular_values(
    kernel: torch.Tensor,
    size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> np.ndarray:
    """Every singular value of the circular convolution on ``size`` inputs (float64).

    Args:
        kernel: (cout, cin / groups, kh, kw) weights (any float dtype; computed in complex128).
        size: input height and width n (an int for n x n); each divisible by its stride.
        stride, dilation: as in ``torch.nn.Conv2d``; groups: channel groups.

    Returns:
        (k,) singular values in decreasing order: per output frequency min(cout_g, cin_g s_h s_w)
        values for each group, k = groups * (n_h/s_h) (n_w/s_w) * that.

    Reference: Sedghi, Gupta, Long, ICLR 2019, Theorem 6 (stride 1, circular padding).
    """
    size, stride, dilation = _pair(size), _pair(stride), _pair(dilation)
    chunks = _chunks(kernel, size, stride, dilation, groups, half=False)
    values = torch.cat([torch.linalg.svdvals(b).reshape(-1).cpu() for b in chunks])
    return np.sort(values.numpy())[::-1].copy()


def conv_operator_norm(
    kernel: torch.Tensor,
    size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> float:
    """The operator (spectral) norm of the circular convolution on ``size`` inputs.

    The exact largest singular value of x -> conv(x) with wrap-around padding on n_h x n_w
    inputs (arguments as :func:`conv_singular_values`). Only half the frequencies are visited
    (conjugate symmetry of a real kernel), and each block's largest singular value is the
    square root of the top eigenvalue of its smaller Gram matrix (Hermitian, 2-3x faster than
    an SVD; the top eigenvalue is accurate to rounding relative to itself).
    """
    size, stride, dilation = _pair(size), _pair(stride), _pair(dilation)
    top = 0.0
    for b in _chunks(kernel, size, stride, dilation, groups, half=True):
        gram = b @ b.mH if b.shape[1] <= b.shape[2] else b.mH @ b
        top = max(top, float(torch.linalg.eigvalsh(gram)[:, -1].max()))
    return math.sqrt(max(top, 0.0))


def zero_padding_grid(
    size: int | Sequence[int],
    *,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Pair:
    """The circular grid N whose circular operator norm bounds the zero-padded conv's on n.

    Output i of the zero-padded conv reads inputs s i + a d - p, from -p to n + p - 1 at most.
    On an N x N circular grid holding the input at 0..n-1 and zeros elsewhere, the reads at -p..-1
    wrap to N-p..N-1, which are zeros when N >= n + p; and the m outputs are among the N/s
    strided outputs when s m <= N. Then zero-padded = projection o circular_N o embedding, so
    ||zero-padded on n|| <= ||circular on N||.

    Returns:
        (N_h, N_w): the smallest such sizes that are multiples of the stride.
    """
    size, ks, stride = _pair(size), _pair(kernel_size), _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    out = []
    for n, k, s, p, d in zip(size, ks, stride, padding, dilation):
        extent = d * (k - 1) + 1
        m = (n + 2 * p - extent) // s + 1  # output size of the zero-padded conv
        if m < 1:
            raise ValueError(f"input size {n} is smaller than the kernel's extent {extent}")
        need = max(n + p, s * m)
        out.append(-(-need // s) * s)
    return out[0], out[1]


def zero_padding_bound(
    kernel: torch.Tensor,
    size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> float:
    """An upper bound of the operator norm of the *zero-padded* convolution on ``size`` inputs.

    The circular operator norm on the grid of :func:`zero_padding_grid` (exact for the
    circular operator there, a bound for the zero-padded one; equal to it when nothing wraps,
    e.g. a 1x1 conv without padding).
    """
    grid = zero_padding_grid(
        size,
        kernel_size=tuple(kernel.shape[-2:]),
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return conv_operator_norm(kernel, grid, stride=stride, dilation=dilation, groups=groups)


def zero_padded_norm_lower(
    kernel: torch.Tensor,
    size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    iterations: int = 50,
    seed: int = 0,
) -> float:
    """A lower bound of the zero-padded conv's operator norm, by power iteration on the conv.

    Iterates x <- A^T A x with A the convolution exactly as ``torch.nn.functional.conv2d``
    computes it (zero padding) and A^T its adjoint (``torch.nn.grad.conv2d_input``), from a
    seeded Gaussian start, in float64. Any x gives ||A x|| / ||x|| <= ||A||, so the result is a
    lower bound at every iteration and increases to the norm; with
    :func:`zero_padding_bound` it brackets the norm of the layer as the network applies it.

    Args:
        kernel: (cout, cin / groups, kh, kw); size: the input's n (or (n_h, n_w)).
        stride, padding, dilation, groups: as in ``torch.nn.Conv2d``.
        iterations: power iterations (>= 1); seed: of the start vector.

    Returns:
        ||A x|| / ||x|| at the last iterate.
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be >= 1")
    k = kernel.detach().to(torch.float64)
    size = _pair(size)
    shape = (1, k.shape[1] * groups, *size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(k.device)
    conv = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, k, groups=groups, **conv)

    for _ in range(iterations):
        x = x / x.norm()
        x = torch.nn.grad.conv2d_input(shape, k, apply(x), groups=groups, **conv)
    return float(apply(x).norm() / x.norm())
