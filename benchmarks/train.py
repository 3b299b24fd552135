"""Training comparison: the same model trained with ReLU, GELU and SUGAR variants.

    python -m benchmarks.train                    # digits (bundled with scikit-learn), small CNN
    python -m benchmarks.train --quick --json out.json --out results/
    python -m benchmarks.train --data cifar10 --data-dir ~/data --model vgg16 --paper --epochs 100
    python -m benchmarks.train --stress               # dying-ReLU stress (negative bias init)

Every activation trains from the same initial weights for a given seed (the model is built with
``nn.ReLU`` and then converted). Per activation it reports test accuracy (mean +- std over seeds),
dead units (total and per layer), sparsity, the gradient share reaching inactive units, saved
activation bytes per training step and the median step time.

Measurement definitions:

* dead units / sparsity: ``sugar_kernels.diagnostics.ActivationMonitor`` over the *test set*, model
  in eval mode, measured before training (epoch 0) and after each epoch. A unit is a channel of a
  conv feature map or a feature of a linear layer; it is dead when its output was > 0 on no element
  of any test image.
* grad -> inactive: share of the gradient (L1 mass, w.r.t. the activations' inputs) that reaches
  inactive elements (output <= 0), over the training steps of the last epoch. 0 for ReLU.
* saved bytes: bytes of the tensors autograd saves for backward in one training step (forward of
  one batch), via ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once,
  parameters excluded. Includes what the convolutions/linears save, so it is the whole model's
  activation memory, not only the activation layers'.
* step time: median wall time of forward + backward + optimizer step, excluding the first steps and
  the last epoch (where the gradient monitor runs; with ``--epochs 1`` it is included), measured on
  whatever machine runs this, as it is loaded at the time.

Data never downloads unless ``--download`` is given. CIFAR is read from the torchvision on-disk
format: ``DATA_DIR/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
``DATA_DIR/cifar-100-python/{train,test}`` (``DATA_DIR`` may also be that folder itself).

Models (all built with ``nn.ReLU``):

* ``cnn``: 3 conv layers (W/2W/4W channels, W = ``--width``, default 32; no batch norm) and a
  128-unit hidden linear layer.
* ``resnet18``: torchvision ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max pool.
* ``vgg16``: VGG-16 (configuration D) without batch norm, CIFAR variant: a 512-512-classes head
  after global average pooling; max pools that would shrink the map below 1x1 are dropped (digits).
  ``vgg16_bn`` is the same with batch norm after each conv.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import pickle
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sugar_kernels as sk
from sugar_kernels.diagnostics import ActivationMonitor

SCHEMA_VERSION = 1
BASE_ACTIVATIONS = ("relu", "gelu", "sugar-bsilu", "sugar-nelu")
BITS8_ACTIVATIONS = ("sugar-bsilu-b8", "sugar-nelu-b8")
MODELS = ("cnn", "resnet18", "vgg16", "vgg16_bn")
DATASETS = ("digits", "cifar10", "cifar100")


# ---------------------------------------------------------------------------------------------
# activations


@functools.cache
def bits8_available() -> bool:
    """Whether ``bits=8`` works in this build (probed once per process)."""
    try:
        y = sk.sugar_relu(torch.randn(4, requires_grad=True) * 1, bits=8)
        y.sum().backward()
    except (ValueError, NotImplementedError, RuntimeError):
        return False
    return True


def available_activations() -> list[str]:
    names = list(BASE_ACTIVATIONS)
    if bits8_available():
        names += BITS8_ACTIVATIONS
    return names


def parse_activation(name: str) -> dict:
    """``relu`` / ``gelu`` / ``sugar-<surrogate>[-b<bits>]`` -> description dict."""
    if name in ("relu", "gelu"):
        return {"kind": name, "surrogate": None, "bits": None}
    if name.startswith("sugar-"):
        rest = name[len("sugar-") :]
        bits = None
        if "-b" in rest:
            rest, b = rest.rsplit("-b", 1)
            bits = int(b)
        if rest not in sk.SURROGATES:
            raise ValueError(
                f"unknown surrogate in activation {name!r}; known: {', '.join(sk.SURROGATES)}"
            )
        return {"kind": "sugar", "surrogate": rest, "bits": bits}
    raise ValueError(f"unknown activation {name!r}; use relu, gelu or sugar-<surrogate>[-b8]")


def apply_activation(model: nn.Module, name: str) -> nn.Module:
    """Swap the model's ``nn.ReLU`` modules for the named activation (in place)."""
    spec = parse_activation(name)
    if spec["kind"] == "relu":
        return model
    if spec["kind"] == "gelu":
        for parent in list(model.modules()):
            for cname, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, cname, nn.GELU())
        return model
    kwargs = {} if spec["bits"] is None else {"bits": spec["bits"]}
    return sk.convert(model, spec["surrogate"], **kwargs)


# ---------------------------------------------------------------------------------------------
# data


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


# ---------------------------------------------------------------------------------------------
# models


class SmallCNN(nn.Module):
    """conv32-relu, conv64-relu, pool, conv128-relu, pool, avgpool 2x2, fc128-relu, fc."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * w, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 (configuration D) for small images: global average pool + 512-512-classes head."""

    def __init__(
        self, in_channels: int, num_classes: int, image_size: int = 32, batch_norm: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for v in VGG16_CFG:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def resnet18_cifar(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem: 3x3 stride-1 conv, no max pool."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int, width: int = 32
) -> nn.Module:
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, width)
    if name == "resnet18":
        return resnet18_cifar(in_channels, num_classes)
    if name in ("vgg16", "vgg16_bn"):
        return VGG16(in_channels, num_classes, image_size, batch_norm=name == "vgg16_bn")
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def stress_init(model: nn.Module, bias: float) -> None:
    """Dying-ReLU stress: every hidden conv/linear bias and batch-norm shift set to ``-bias``.

    The last linear layer (the classifier output) is left alone.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not last and m.bias is not None:
                m.bias.fill_(-bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.bias.fill_(-bias)


# ---------------------------------------------------------------------------------------------
# measurements


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training forward (each storage once, no params).

    Runs on a copy of the model so that batch-norm statistics of the real one are not touched.
    """
    model = copy.deepcopy(model).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[tuple, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        key = (str(t.device), st.data_ptr())
        if st.data_ptr() not in params and key not in seen:
            seen[key] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(seen.values())


def evaluate(model: nn.Module, data: Dataset, device, batch_size: int = 512) -> tuple[float, dict]:
    """Test accuracy and the monitor summary over the test set (eval mode, no grad)."""
    model.eval()
    correct = 0
    with ActivationMonitor(model, track_grad=False) as mon, torch.no_grad():
        for start in range(0, len(data.test), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data.test)))
            x, y = data.batch(data.test, idx, device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data.test), mon.summary()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# training


def train_one(
    cfg: argparse.Namespace,
    data: Dataset,
    activation: str,
    seed: int,
    device,
    progress: bool = True,
) -> dict:
    """Train one (activation, seed) and return its measurements."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = build_model(cfg.model, data.in_channels, data.num_classes, data.image_size, cfg.width)
    if cfg.stress:
        stress_init(model, cfg.stress_bias)
    apply_activation(model, activation)
    model.to(device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    n_train = len(data.train)
    gen = torch.Generator().manual_seed(seed)
    bs = cfg.batch_size
    steps_per_epoch = math.ceil(n_train / bs)

    x0, y0 = data.batch(data.train, torch.arange(min(bs, n_train)), device)
    saved = saved_activation_bytes(model, x0, y0)

    acc0, summ0 = evaluate(model, data, device)
    curve = {
        "epoch": [0],
        "test_accuracy": [acc0],
        "train_loss": [None],
        "dead_fraction": [summ0["total"]["dead_fraction"]],
    }
    step_times: list[float] = []
    grad_summary = None
    t_start = time.perf_counter()
    bar = tqdm(
        range(1, cfg.epochs + 1),
        desc=f"{activation} seed {seed}",
        unit="ep",
        disable=not progress,
        leave=True,
        file=sys.stderr,
    )
    for epoch in bar:
        model.train()
        last = epoch == cfg.epochs
        mon = ActivationMonitor(model, track_grad=True).attach() if last else None
        perm = torch.randperm(n_train, generator=gen)
        losses = []
        inner = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
            disable=not progress or steps_per_epoch < 100,
            file=sys.stderr,
        )
        for step in inner:
            idx = perm[step * bs : (step + 1) * bs]
            x, y = data.batch(data.train, idx, device)
            if cfg.augment:
                x = augment(x, gen)
            _sync(device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            dt = time.perf_counter() - t0
            if not last or cfg.epochs == 1:
                step_times.append(dt)
            losses.append(loss.item())
        if mon is not None:
            grad_summary = mon.summary()
            mon.detach()
        acc, summ = evaluate(model, data, device)
        curve["epoch"].append(epoch)
        curve["test_accuracy"].append(acc)
        curve["train_loss"].append(statistics.fmean(losses) if losses else None)
        curve["dead_fraction"].append(summ["total"]["dead_fraction"])
        bar.set_postfix(
            loss=f"{curve['train_loss'][-1]:.3f}",
            acc=f"{acc:.3f}",
            dead=f"{summ['total']['dead_fraction']:.2f}",
        )
    bar.close()
    wall = time.perf_counter() - t_start
    warm = step_times[3:] if len(step_times) > 6 else step_times
    final = summ
    gtot = grad_summary["total"] if grad_summary else {}
    return {
        "seed": seed,
        "test_accuracy": curve["test_accuracy"][-1],
        "dead_fraction": final["total"]["dead_fraction"],
        "dead_fraction_init": summ0["total"]["dead_fraction"],
        "dead_fraction_per_layer": {k: v["dead_fraction"] for k, v in final["layers"].items()},
        "dead_units_per_layer": {k: v["dead_units"] for k, v in final["layers"].items()},
        "units_per_layer": {k: v["units"] for k, v in final["layers"].items()},
        "sparsity": final["total"]["sparsity"],
        "inactive_fraction": final["total"]["inactive_fraction"],
        "grad_to_inactive": gtot.get("grad_to_inactive"),
        "grad_inactive_nonzero": gtot.get("grad_inactive_nonzero"),
        "saved_activation_bytes": saved,
        "step_time_ms": 1e3 * statistics.median(warm) if warm else None,
        "train_wall_s": wall,
        "curve": curve,
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(activation: str, per_seed: list[dict]) -> dict:
    """One ``runs`` entry: means (and std of accuracy/dead fraction) over seeds."""
    spec = parse_activation(activation)
    layers = list(per_seed[0]["dead_fraction_per_layer"])
    n_epochs = len(per_seed[0]["curve"]["epoch"])
    curve = {"epoch": per_seed[0]["curve"]["epoch"]}
    for key in ("test_accuracy", "train_loss", "dead_fraction"):
        curve[key] = [_mean([r["curve"][key][i] for r in per_seed]) for i in range(n_epochs)]
    return {
        "activation": activation,
        "surrogate": spec["surrogate"],
        "bits": spec["bits"],
        "seeds": [r["seed"] for r in per_seed],
        "test_accuracy": _mean([r["test_accuracy"] for r in per_seed]),
        "test_accuracy_std": _std([r["test_accuracy"] for r in per_seed]),
        "dead_fraction": _mean([r["dead_fraction"] for r in per_seed]),
        "dead_fraction_std": _std([r["dead_fraction"] for r in per_seed]),
        "dead_fraction_init": _mean([r["dead_fraction_init"] for r in per_seed]),
        "dead_fraction_per_layer": {
            k: _mean([r["dead_fraction_per_layer"][k] for r in per_seed]) for k in layers
        },
        "units_per_layer": per_seed[0]["units_per_layer"],
        "sparsity": _mean([r["sparsity"] for r in per_seed]),
        "inactive_fraction": _mean([r["inactive_fraction"] for r in per_seed]),
        "grad_to_inactive": _mean([r["grad_to_inactive"] for r in per_seed]),
        "grad_inactive_nonzero": _mean([r["grad_inactive_nonzero"] for r in per_seed]),
        "saved_activation_bytes": per_seed[0]["saved_activation_bytes"],
        "step_time_ms": _mean([r["step_time_ms"] for r in per_seed]),
        "curve": curve,
        "per_seed": per_seed,
    }


# ---------------------------------------------------------------------------------------------
# reporting


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown_table(runs: list[dict]) -> str:
    lines = [
        "| activation | test acc. (mean ± std) | dead units (init → final) | sparsity "
        "| grad → inactive | saved act. bytes/step | step time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['activation']} | {100 * r['test_accuracy']:.2f} ± "
            f"{100 * r['test_accuracy_std']:.2f}% | {_pct(r['dead_fraction_init'])} → "
            f"{_pct(r['dead_fraction'])} | {_pct(r['sparsity'])} | {_pct(r['grad_to_inactive'])}"
            f" | {_fmt_bytes(r['saved_activation_bytes'])} | "
            + ("n/a" if r["step_time_ms"] is None else f"{r['step_time_ms']:.2f} ms")
            + " |"
        )
    return "\n".join(lines)


def per_layer_table(runs: list[dict]) -> str:
    layers = list(runs[0]["dead_fraction_per_layer"])
    head = "| layer (units) | " + " | ".join(r["activation"] for r in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for k in layers:
        units = runs[0]["units_per_layer"].get(k)
        cells = " | ".join(_pct(r["dead_fraction_per_layer"].get(k)) for r in runs)
        lines.append(f"| {k} ({units}) | {cells} |")
    return "\n".join(lines)


def machine_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def write_plots(runs: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        axes[0].plot(
            r["curve"]["epoch"],
            [100 * a for a in r["curve"]["test_accuracy"]],
            label=r["activation"],
        )
        axes[1].plot(
            r["curve"]["epoch"],
            [100 * d for d in r["curve"]["dead_fraction"]],
            label=r["activation"],
        )
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean over seeds)")
    axes[1].set(xlabel="epoch", ylabel="dead units (%)", title="Dead units (test set)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    files.append("accuracy.png")

    layers = list(runs[0]["dead_fraction_per_layer"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(layers) * max(1, len(runs)) / 2), 4))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        xs = [j + i * width for j in range(len(layers))]
        ax.bar(
            xs,
            [100 * (r["dead_fraction_per_layer"].get(k) or 0) for k in layers],
            width,
            label=r["activation"],
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="dead units (%)", title="Dead units per layer after training (test set)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "dead_units.png", dpi=120)
    plt.close(fig)
    files.append("dead_units.png")
    return files


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train",
        description="Train the same model with ReLU, GELU and SUGAR variants and compare test "
        "accuracy, dead units, sparsity, saved activation memory and step time.",
    )
    p.add_argument(
        "--data",
        choices=DATASETS,
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits (default, no download); "
        "cifar10/cifar100: torchvision on-disk format under --data-dir",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder containing cifar-10-batches-py/ or cifar-100-python/",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR with torchvision into --data-dir if missing (never otherwise)",
    )
    p.add_argument(
        "--model",
        choices=MODELS,
        default="cnn",
        help="cnn (small, no BN), resnet18 (CIFAR stem), vgg16 (no BN), vgg16_bn",
    )
    p.add_argument(
        "--activations",
        nargs="+",
        default=None,
        help="activations to compare (space- or comma-separated): relu gelu "
        "sugar-bsilu sugar-nelu [sugar-bsilu-b8 sugar-nelu-b8, when bits=8 is "
        "available]; any sugar-<surrogate>[-b<bits>] works. Default: all "
        "available",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="channels of the first cnn layer (default 32, quick: 16)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's default; quick: 1, which is faster "
        "for this tiny model on a busy machine)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default 20 (quick: 12)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds, run as first-seed, first-seed+1, ... (default 3, quick: 2)",
    )
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="default 0.05 for sgd, 1e-3 for adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="default 64")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument(
        "--augment",
        action="store_true",
        help="random crop + flip (off by default and with --paper)",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's setup: SGD, lr 0.001, batch 128, no augmentation "
        "(momentum stays --momentum)",
    )
    p.add_argument(
        "--stress",
        action="store_true",
        help="dying-ReLU stress: hidden biases (and BN shifts) initialised to "
        "-STRESS_BIAS, so many units start dead",
    )
    p.add_argument(
        "--stress-bias",
        type=float,
        default=0.5,
        help="bias used by --stress (default 0.5: ~90%% of the small cnn's units start dead)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fast comparison: digits, cnn, 12 epochs, 2 seeds (~1-2 min on 2 CPUs)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--json", dest="json_path", default=None, help="write results as JSON here")
    p.add_argument("--out", default=None, help="folder for results.md and PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)

    if args.quick:
        args.data = "digits"
        args.model = "cnn"
        args.epochs = args.epochs or 12
        args.seeds = args.seeds or 2
        args.width = args.width or 16
        args.threads = args.threads or 1
    if args.paper:
        if args.optimizer != "sgd" or args.augment:
            p.error("--paper means SGD without augmentation")
        args.lr = args.lr or 0.001
        args.batch_size = args.batch_size or 128
    args.epochs = 20 if args.epochs is None else args.epochs
    args.seeds = 3 if args.seeds is None else args.seeds
    args.batch_size = args.batch_size or 64
    args.width = args.width or 32
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "sgd" else 1e-3
    if args.epochs < 1 or args.seeds < 1 or args.batch_size < 1:
        p.error("--epochs, --seeds and --batch-size must be >= 1")
    if args.data != "digits" and args.data_dir is None:
        p.error(f"--data {args.data} needs --data-dir")

    available = available_activations()
    if args.activations is None:
        args.activations = available
    else:
        names = [a for item in args.activations for a in item.split(",") if a]
        for a in names:
            try:
                spec = parse_activation(a)
            except ValueError as e:
                p.error(str(e))
            if spec["bits"] is not None and not bits8_available():
                p.error(f"{a}: bits={spec['bits']} is not available in this build")
        args.activations = names
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.data, args.data_dir, args.download)
    device = torch.device(args.device)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs = []
    for act in args.activations:
        per_seed = [
            train_one(args, data, act, s, device, progress=not args.no_progress) for s in seeds
        ]
        runs.append(aggregate(act, per_seed))
        r = runs[-1]
        print(
            f"{act:>16}: test acc {100 * r['test_accuracy']:.2f} ± "
            f"{100 * r['test_accuracy_std']:.2f}%  dead {_pct(r['dead_fraction'])}  "
            f"step {r['step_time_ms']:.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    config = {k: v for k, v in vars(args).items() if k not in ("json_path", "out", "no_progress")}
    config["seeds"] = seeds
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "environment": {
            "machine": machine_name(device),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "sugar_kernels": sk.__version__,
            "backends": sk.available_backends(device),
            "bits8_available": bits8_available(),
            "dataset": {
                "name": data.name,
                "train": len(data.train),
                "test": len(data.test),
                "classes": data.num_classes,
                "shape": list(data.train.x.shape[1:]),
            },
        },
        "runs": runs,
        "wall_s": time.perf_counter() - t0,
    }


def report(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    stress = f", STRESS (hidden biases -{cfg['stress_bias']})" if cfg["stress"] else ""
    d = env["dataset"]
    head = (
        f"{d['name']} ({d['train']} train / {d['test']} test), model {cfg['model']}, "
        f"{cfg['optimizer']} lr {cfg['lr']} batch {cfg['batch_size']}, {cfg['epochs']} "
        f"epochs, seeds {cfg['seeds']}{stress}"
        f"; {env['machine']}; backend {env['backends'][0]}; wall {result['wall_s']:.0f} s"
    )
    return "\n\n".join(
        [
            head,
            markdown_table(result["runs"]),
            "Dead units per layer (test set):",
            per_layer_table(result["runs"]),
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = report(result)
    print(text)
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(result["runs"], out)
        md = (
            "# Training comparison\n\n"
            + text
            + "\n\n"
            + "\n".join(f"![{p}]({p})" for p in plots)
            + "\n"
        )
        (out / "results.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
