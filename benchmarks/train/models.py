"""Models (all built with ``nn.ReLU``), the activation swap and the dying-ReLU stress init."""

from __future__ import annotations

import functools

import torch
from torch import nn

import sugar_kernels as sk

from ..common import swap_relu

BASE_ACTIVATIONS = ("relu", "gelu", "sugar-bsilu", "sugar-nelu")
BITS8_ACTIVATIONS = ("sugar-bsilu-b8", "sugar-nelu-b8")
MODELS = ("cnn", "resnet18", "vgg16", "vgg16_bn")


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
        return swap_relu(model, nn.GELU)
    kwargs = {} if spec["bits"] is None else {"bits": spec["bits"]}
    return sk.convert(model, spec["surrogate"], **kwargs)


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
