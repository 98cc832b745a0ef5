"""Fashion-MNIST read offline from the idx files of Debian's ``dataset-fashion-mnist``.

The package installs ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under
``/usr/share/datasets/fashion-mnist``; they are parsed here with numpy (no torchvision).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_MAGIC = {"images": 2051, "labels": 2049}  # idx: 0x0000 0x08 (uint8) ndim


class DatasetMissingError(FileNotFoundError):
    """Raised when the idx files are not where we look; says how to install them."""


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetMissingError(
        f"Fashion-MNIST file {stem}(.gz) not found in {data_dir}.\n"
        "Install the Debian/Ubuntu package that provides it:\n"
        "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
        "(or run `bash scripts/install_data.sh` as root), or pass --data-dir pointing at a folder "
        "holding the four idx files of https://github.com/zalandoresearch/fashion-mnist."
    )


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse one idx file (gzip or raw): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[kind]:
        raise ValueError(f"{path}: idx magic number {magic:#x}, expected {_MAGIC[kind]:#x} for {kind}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


@dataclass(frozen=True)
class Split:
    """Images as float32 (B, 1, 28, 28), standardised with the training set's mean/std;
    labels as int64 (B,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A class-stratified-by-chance random subset of n examples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.images[idx], self.labels[idx])


def load_fashion_mnist(data_dir: str | Path = DEFAULT_DATA_DIR) -> tuple[Split, Split]:
    """(train, test): 60,000 and 10,000 examples of 10 classes."""
    data_dir = Path(data_dir)
    arrays = {key: read_idx(_find(data_dir, stem), key[1]) for key, stem in _FILES.items()}
    train_x = torch.from_numpy(arrays["train", "images"].astype(np.float32) / 255.0)
    mean, std = train_x.mean(), train_x.std()
    splits = []
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[split, "images"].astype(np.float32) / 255.0)
        y = torch.from_numpy(arrays[split, "labels"].astype(np.int64))
        if len(x) != len(y):
            raise ValueError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
        splits.append(Split(((x - mean) / std).unsqueeze(1).contiguous(), y))
    return splits[0], splits[1]
