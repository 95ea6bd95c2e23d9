"""Images as tensors: uint8 to float, and the standard CIFAR augmentation as batched tensor ops.

Pure tensor code with explicit generators: random draws are made on a CPU generator and moved to
the images' device, so a seed gives the same batch on every device.
"""

from __future__ import annotations

import torch


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1]: uint8 (0..255) is converted, float is returned as it is."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images to float32 in [0, 1].

    Args:
        x: images, (N, C, H, W) uint8 (any shape works), any device.

    Returns:
        float32 tensor of the same shape and device, x / 255.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got dtype {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def augment(
    x: torch.Tensor, *, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, as batched tensor ops.

    Equivalent per image to: reflect-pad by `padding` pixels, crop an H x W window at a
    uniformly random offset, flip left-right with probability 1/2. Reflect padding is
    folded into the gather indices, so no padded copy of the batch is made.

    Args:
        x: images, (N, C, H, W) uint8, any device.
        generator: CPU generator for the random offsets and flips; the draws are moved to
            x.device, so a seed gives the same result on every device.
        padding: pixels of reflect padding on each side, 0 <= padding < min(H, W).
        flip: apply random horizontal flips.

    Returns:
        float32 images in [0, 1], (N, C, H, W), on x.device.

    Reference: the standard CIFAR augmentation (RandomCrop(32, padding=4) and
    RandomHorizontalFlip) of the official AWP code, with reflect instead of zero padding.
    """
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(
            f"augment expects uint8 images (N, C, H, W), got dtype {x.dtype} and shape "
            f"{tuple(x.shape)}; augment the uint8 tensors from load_data"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"augment needs a CPU torch.Generator (got one on {generator.device}) so that "
            "results match across devices"
        )
    n, c, h, w = x.shape
    if not 0 <= padding < min(h, w):
        raise ValueError(f"padding must be in [0, {min(h, w)}) for {h}x{w} images, got {padding}")
    dev = x.device
    dy, dx, flips = _crop_offsets_and_flips(n, generator, padding)
    dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H), padded coordinates
    cols = dx[:, None] + torch.arange(w, device=dev)  # (N, W), padded coordinates
    if flip:
        # Reading the crop's columns right to left is the flip of the crop.
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    rows = _reflect(rows - padding, h)
    cols = _reflect(cols - padding, w)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    out = x[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
    return to_float(out)


def _crop_offsets_and_flips(
    n: int, generator: torch.Generator, padding: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the random crop offsets and flip decisions that `augment` uses.

    Always draws all three, in this order, so the stream is the same with or without flips.

    Args:
        n: number of images.
        generator: CPU generator.
        padding: reflect padding; offsets are in [0, 2 * padding] in padded coordinates.

    Returns:
        (dy, dx, flips): (N,) int64 row and column offsets of the crop's top-left corner in
        the padded image, and (N,) bool flip decisions; all on the CPU.
    """
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flips


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates in [-(size-1), 2*(size-1)] into [0, size) by mirroring at the edges.

    Edge pixels are not repeated (-1 -> 1, size -> size - 2), as in F.pad(mode="reflect").
    """
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)
