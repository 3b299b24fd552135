"""Saved activation memory per training step, and code-mode gradient error.

    python -m benchmarks.memory            # Markdown tables on stdout
    python -m benchmarks.memory --json F   # also write the rows as JSON

Saved bytes are what autograd keeps for backward, measured with saved_tensors_hooks: every saved
tensor's storage counted once (in-place ops share storage), parameters excluded. On a GPU it also
reports torch.cuda.max_memory_allocated of a full train step (forward + backward).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch
from torch import nn

import sugar_kernels as sk
from sugar_kernels.codes import quantizer

from .common import saved_bytes as common_saved_bytes


class PaperSugar(nn.Module):
    """The paper's plain-PyTorch formula (forward gradient injection) as a module."""

    def __init__(self, surrogate: str = "bsilu"):
        super().__init__()
        self.surrogate = surrogate
        self.alpha = sk.SURROGATES[surrogate].alpha or 0.0

    def forward(self, x):
        return sk.paper_formula(x, self.surrogate, self.alpha)


# name -> factory of the activation module replacing nn.ReLU
VARIANTS = {
    "relu (inplace)": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "paper formula (bsilu)": PaperSugar,
    "sugar exact": lambda: sk.SugarReLU("bsilu"),
    **{
        f"sugar bits={b} inplace": (lambda b=b: sk.SugarReLU("bsilu", bits=b, inplace=True))
        for b in (8, 4, 2, 1)
    },
}


def conv_bn_net(width: int = 64, depth: int = 6) -> nn.Module:
    layers, cin = [], 3
    for _ in range(depth):
        layers += [
            nn.Conv2d(cin, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _torchvision_models():
    try:
        import torchvision
    except ImportError:
        return {}

    def resnet18():
        m = torchvision.models.resnet18(num_classes=10)
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # CIFAR stem
        m.maxpool = nn.Identity()
        return m

    def vgg16():
        return torchvision.models.vgg16_bn(num_classes=10)

    return {"resnet18": resnet18, "vgg16_bn": vgg16}


def _swap(model: nn.Module, factory) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, factory())
    return model


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward pass (storages once, no parameters)."""
    return common_saved_bytes(lambda: model(x).float().pow(2).mean(), model.parameters())


def peak_train_step_bytes(model: nn.Module, x: torch.Tensor) -> int | None:
    if x.device.type != "cuda":
        return None
    model(x).float().pow(2).mean().backward()  # warm-up (cudnn workspaces, autotuning)
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model(x).float().pow(2).mean().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=True)
    return peak


def memory_rows(device: str = "cpu", batch: int = 128, models=None) -> list[dict]:
    builders = {"conv-bn-relu x6": conv_bn_net, **_torchvision_models()}
    if models:
        builders = {k: v for k, v in builders.items() if k in models}
    rows = []
    for i, (model_name, build) in enumerate(builders.items()):
        progress(f"memory: {model_name} ({i + 1}/{len(builders)}), {len(VARIANTS)} variants ...")
        t0 = time.perf_counter()
        x = torch.randn(batch, 3, 32, 32, device=device)
        base = None
        for variant, factory in VARIANTS.items():
            torch.manual_seed(0)
            model = _swap(build(), factory).to(device).train()
            nbytes = saved_bytes(model, x)
            base = base or nbytes
            rows.append(
                {
                    "model": model_name,
                    "variant": variant,
                    "saved_MiB": nbytes / 2**20,
                    "vs_relu": nbytes / base,
                    "peak_train_MiB": _mib(peak_train_step_bytes(model, x)),
                }
            )
            del model
        progress(f"memory: {model_name} done ({time.perf_counter() - t0:.0f} s)")
    return rows


def progress(msg: str) -> None:
    """Progress on stderr: stdout carries only the Markdown tables (``make bench`` embeds it)."""
    print(msg, file=sys.stderr, flush=True)


def _mib(n):
    return None if n is None else n / 2**20


def error_rows() -> list[dict]:
    """Relative L2 error of g vs exact on N(0,1) inputs, per surrogate x region x bits."""
    progress(
        f"memory: code-mode error table ({2 * len(sk.SURROGATES)} x 4 quantiser tables, "
        "computed on first use) ..."
    )
    rows = []
    for name in sk.SURROGATES:
        for region in sk.REGIONS:
            row = {"surrogate": name, "region": region}
            for bits in (8, 4, 2, 1):
                row[f"{bits} bits"] = quantizer(name, None, region, bits).rel_l2_error
            rows.append(row)
    return rows


def markdown(rows: list[dict], fmt=None) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            if v is None:
                cells.append("—")
            elif isinstance(v, float):
                cells.append(fmt(k, v) if fmt else f"{v:.2f}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--models", nargs="*", help="subset of: conv-bn-relu x6 resnet18 vgg16_bn")
    p.add_argument("--no-errors", action="store_true", help="skip the code-mode error table")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(
        f"## Saved activation memory per training step (batch {args.batch}, 3x32x32, "
        f"{args.device}: {machine or platform.machine()}, torch {torch.__version__})\n"
    )
    rows = memory_rows(args.device, args.batch, args.models)
    print(markdown(rows, lambda k, v: f"{v:.2f}x" if k == "vs_relu" else f"{v:.1f}"))
    result = {"memory": rows}
    if not args.no_errors:
        print("\n## Code modes: relative L2 error of the gradient vs exact, N(0,1) inputs\n")
        errs = error_rows()
        print(markdown(errs, lambda k, v: f"{100 * v:.3g}%" if math.isfinite(v) else "—"))
        result["errors"] = errs
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
