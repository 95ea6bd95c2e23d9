"""Which data a run uses (:class:`DataConfig`), in a module that imports no torch, so that
the parsers of ``awp CMD --help`` are built without it; :mod:`awp.data` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from awp.config import check_bounds, opt


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to hold out a validation split.

    Args:
        dataset: "sample" (embedded CIFAR-10 subset, 4,000 train + 1,000 test), "cifar10",
            "cifar100", "svhn" (torchvision), or a path to an ImageFolder directory or a
            ``.tar.gz``/``.tgz``/``.tar`` archive with ``train/<class>/*`` and ``test/<class>/*``.
            Names win over paths: write ``./cifar10`` for a local folder of that name.
        data_root: directory where torchvision datasets live (or are downloaded to).
        download: let torchvision download a missing dataset; never happens otherwise.
        val_size: number of training images held out as a validation split (0 = none).
        split_seed: seed of the random validation split.
        train_size: keep only this many training images (a seeded subset of what the
            validation split leaves; 0 = all), e.g. to study robust overfitting on small data.
        center_crop: ImageNet-style evaluation transform for folders and archives: the shorter
            side resized to ``round(N / 0.875)`` (256 for 224), then the centre N x N crop
            (None: images as stored, all of one size).

    Data from elsewhere: ``dataset`` may also be a tensors file (``.pt``, ``.npz``,
    ``.safetensors`` holding ``x`` and ``y``) or ``py:package.module:function`` returning a
    torch Dataset (:mod:`awp.data_sources`).
    """

    dataset: str = opt(
        "sample",
        "sample (the bundled CIFAR-10 subset) | cifar10 | cifar100 | svhn | a folder or .tar.gz "
        "in ImageFolder layout | a tensors file (.pt/.npz/.safetensors with x, y) | "
        "py:module:function returning a Dataset",
    )
    data_root: str = opt("data", "folder of the torchvision datasets")
    download: bool = opt(False, "let torchvision download a missing dataset (never otherwise)")
    val_size: int = opt(
        1000, "training images held out as the validation split (0 = none)", bounds=(0, None)
    )
    split_seed: int = opt(
        0, "seed of the validation split and the training subset", bounds=(0, None)
    )
    train_size: int = opt(
        0,
        "keep this many training images, a seeded subset of what the validation split leaves "
        "(0 = all)",
        bounds=(0, None),
    )

    center_crop: int | None = opt(
        None,
        "ImageNet-style evaluation of a folder or archive: resize the shorter side to "
        "N/0.875 and centre-crop N x N",
        bounds=(1, 4096),
        shown="none: images as stored",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(
                f"dataset must be a non-empty string, got {self.dataset!r}: use 'sample', "
                "'cifar10', 'cifar100', 'svhn' or a path to an ImageFolder folder or .tar.gz"
            )
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int):
            raise ValueError(f"val_size must be an int, got {self.val_size!r}")
        if self.val_size < 0:
            raise ValueError(
                f"val_size must be >= 0 (0 = no validation split), got {self.val_size}"
            )
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int):
            raise ValueError(f"train_size must be an int, got {self.train_size!r}")
        if self.train_size < 0:
            raise ValueError(
                f"train_size must be >= 0 (0 = every training image), got {self.train_size}"
            )
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an int, got {self.split_seed!r}")
        check_bounds(self)
