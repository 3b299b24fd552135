"""Datasets: scikit-learn's bundled digits and CIFAR-10/100 in torchvision's on-disk format
(never downloaded unless asked), normalised batches and augmentation."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DATASETS = ("digits", "cifar10", "cifar100")


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W] (CIFAR) or float32 (digits)
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    mean: torch.Tensor  # [C], in the units of x / scale
    std: torch.Tensor
    scale: float
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]

    def batch(self, split: Split, idx, device) -> tuple[torch.Tensor, torch.Tensor]:
        x = split.x[idx].to(device=device, dtype=torch.float32)
        x = (x / self.scale - self.mean.to(device).view(1, -1, 1, 1)) / self.std.to(device).view(
            1, -1, 1, 1
        )
        return x, split.y[idx].to(device)


def load_digits(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), fixed split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8], values 0..16
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=test_fraction, random_state=0, stratify=d.target
    )
    train = Split(x[idx_train], y[idx_train])
    test = Split(x[idx_test], y[idx_test])
    mean, std = _channel_stats(train.x, 16.0)
    return Dataset("digits", train, test, mean, std, 16.0, 10)


def _channel_stats(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.to(torch.float64) / scale
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean.float(), std.float()


CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def cifar_folder(name: str, data_dir) -> Path:
    """Where the pickles of ``name`` live under ``data_dir`` (the parent or the folder itself)."""
    folder, train_files, _, _, _ = CIFAR_LAYOUT[name]
    root = Path(data_dir).expanduser()
    for cand in (root / folder, root):
        if (cand / train_files[0]).is_file():
            return cand
    raise FileNotFoundError(
        f"{name} not found: expected {root / folder / train_files[0]} (torchvision's on-disk "
        f"format). Point --data-dir at the folder that contains {folder}/, or pass --download "
        f"to fetch it there with torchvision."
    )


def _read_cifar_files(folder: Path, files, label_key) -> Split:
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")  # as torchvision: py2 pickles, str keys
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        xs.append(torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        ys.append(torch.as_tensor(entry[label_key], dtype=torch.int64))
    return Split(torch.cat(xs), torch.cat(ys))


def load_cifar(name: str, data_dir, download: bool = False) -> Dataset:
    """CIFAR-10/100 from torchvision's on-disk format; downloads only when ``download``."""
    if name not in CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR dataset {name!r}")
    folder_name, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[name]
    if data_dir is None:
        raise ValueError(
            f"--data {name} needs --data-dir DIR (the folder containing {folder_name}/)"
        )
    try:
        folder = cifar_folder(name, data_dir)
    except FileNotFoundError:
        if not download:
            raise
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(root=str(Path(data_dir).expanduser()), train=True, download=True)
        folder = cifar_folder(name, data_dir)
    train = _read_cifar_files(folder, train_files, label_key)
    test = _read_cifar_files(folder, test_files, label_key)
    mean, std = _channel_stats(train.x, 255.0)
    return Dataset(name, train, test, mean, std, 255.0, num_classes)


def load_data(name: str, data_dir=None, download: bool = False) -> Dataset:
    if name == "digits":
        return load_digits()
    return load_cifar(name, data_dir, download)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4) and horizontal flip, per image, on a normalised batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    xp = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    return torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
