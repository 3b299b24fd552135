"""Activation memory per training step, the largest batch under a memory cap, code-mode errors.

    python -m benchmarks.memory                  # saved bytes and the error table
    python -m benchmarks.memory --device cuda    # + peak train memory and the largest batches

Saved bytes: what autograd keeps for backward after one forward (saved_tensors_hooks; storages
once, parameters excluded), batch 128 of 3x32x32, float32. On a GPU also peak_train_MiB (the
peak torch.cuda.max_memory_allocated of one eager train step above what was allocated before
it) and, for ResNet-18, the largest batch whose train step fits in --cap-gib of GPU memory
(torch.cuda.set_per_process_memory_fraction). Errors: relative L2 error of the code modes'
gradient against the exact one on N(0,1) inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import sugar_kernels as sk
from sugar_kernels.code_tables import quantizer

from .common import (
    TARGETS,
    environment,
    header,
    log,
    markdown_table,
    parser,
    peak_mib,
    pick_device,
    write_csv,
    write_report,
)
from .common import saved_bytes as _saved_bytes
from .common import swap_relu as _swap


class PaperSugar(nn.Module):
    """The paper's plain-PyTorch formula (forward gradient injection) as a module."""

    def __init__(self, surrogate: str = "bsilu"):
        super().__init__()
        self.surrogate = surrogate

    def forward(self, x):
        return sk.paper_formula(x, self.surrogate)


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
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU(inplace=True))
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (one ReLU module used twice), without torchvision: the
    lent GPU machine's image does not have it."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 convolution, no max pool)."""
    layers, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*stem, *layers, *head)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float().pow(2).mean()


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward pass (storages once, no parameters)."""
    return _saved_bytes(lambda: _loss(model, x), model.parameters())


def peak_train_mib(model: nn.Module, x: torch.Tensor, device: str) -> float | None:
    """The peak allocation of one train step on CUDA (after a warm-up step: cuDNN workspaces,
    gradient buffers)."""
    if device != "cuda":
        return None
    _loss(model, x).backward()
    model.zero_grad(set_to_none=True)
    peak = peak_mib(lambda: _loss(model, x).backward(), device)
    model.zero_grad(set_to_none=True)
    return peak


def fits(model: nn.Module, batch: int, image: int, device: str, cap: int) -> bool:
    """Whether a train step at ``batch`` fits under ``cap`` bytes: on CUDA, run it with the
    process limited to ``cap``; on the CPU (dry run), compare the saved bytes with it."""
    if device != "cuda":
        return saved_bytes(model, torch.randn(batch, 3, image, image)) <= cap
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()  # what an earlier, failed try left cached
    try:
        _loss(model, torch.randn(batch, 3, image, image, device=device)).backward()
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False


def largest_batch(fits_at, start: int = 64, resolution: float = 0.02) -> int:
    """The largest batch for which ``fits_at(batch)`` holds, to ``resolution`` (doubling, then
    bisection); 0 if not even batch 1 fits."""
    lo = start
    while lo >= 1 and not fits_at(lo):
        lo //= 2
    if lo < 1:
        return 0
    hi = 2 * lo
    while hi <= 1 << 20 and fits_at(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > max(1, resolution * lo):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_at(mid) else (lo, mid)
    return lo


def memory_rows(device, batch, image, nets: dict, cap: int, cap_model: str) -> list[dict]:
    rows = []
    for model_name, build in nets.items():
        log(f"memory: {model_name}, {len(VARIANTS)} variants")
        x, base = torch.randn(batch, 3, image, image, device=device), None
        for variant, factory in VARIANTS.items():
            torch.manual_seed(0)
            model = _swap(build(), factory).to(device).train()
            nbytes = saved_bytes(model, x)
            base = base or nbytes
            row = dict(model=model_name, variant=variant, saved_MiB=nbytes / 2**20)
            row["vs_relu"] = nbytes / base
            row["peak_train_MiB"] = peak_train_mib(model, x, device)
            row["largest_batch"] = None
            if model_name == cap_model:
                row["largest_batch"] = largest_batch_under(model, image, device, cap, batch)
            rows.append(row)
            del model
    return rows


def largest_batch_under(model: nn.Module, image: int, device: str, cap: int, start: int) -> int:
    if device != "cuda":
        return largest_batch(lambda b: fits(model, b, image, device, cap), start)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.mem_get_info()[1])
    try:
        return largest_batch(lambda b: fits(model, b, image, device, cap), start)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def error_rows(surrogates, bits_list) -> list[dict]:
    """Relative L2 error of g against exact on N(0,1) inputs, per surrogate, region and bits."""
    log("memory: code-mode error table (quantiser tables are computed on first use)")
    return [
        {"surrogate": name, "region": region}
        | {f"{bits} bits": quantizer(name, None, region, bits).rel_l2_error for bits in bits_list}
        for name in surrogates
        for region in sk.REGIONS
    ]


def table(rows: list[dict], fmt) -> str:
    keys = [k for k in rows[0] if any(r[k] is not None for r in rows)]
    cells = [[fmt(k, r[k]) if isinstance(r[k], float) else r[k] for k in keys] for r in rows]
    cells = [["—" if c is None else c for c in row] for row in cells]
    return markdown_table(keys, cells, "ll" + "r" * (len(keys) - 2))


def judge(rows: list[dict]) -> list[list[str]]:
    """The memory targets: bits=8 in place's peak against ReLU's; the largest batches."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        of = {r["variant"]: r for r in rows if r["model"] == model}
        relu, gelu = of["relu (inplace)"], of["gelu"]
        if relu["peak_train_MiB"]:
            ratio = of["sugar bits=8 inplace"]["peak_train_MiB"] / relu["peak_train_MiB"]
            text, limit = TARGETS["memory.peak"]
            out.append([f"{model}: {text}", f"{ratio:.3f}x", "met" if ratio <= limit else "missed"])
        for variant, r in of.items():
            if variant.startswith("sugar") and relu["largest_batch"]:
                ratio = r["largest_batch"] / relu["largest_batch"]
                text, limit = TARGETS["memory.batch_relu"]
                out.append(
                    [f"{variant}: {text}", f"{ratio:.3f}x", "met" if ratio >= limit else "missed"]
                )
                ratio = r["largest_batch"] / max(gelu["largest_batch"], 1)
                text, limit = TARGETS["memory.batch_gelu"]
                out.append(
                    [f"{variant}: {text}", f"{ratio:.3f}x", "met" if ratio > limit else "missed"]
                )
    return out


def main(argv=None) -> int:
    ap = parser("benchmarks.memory", __doc__)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", default=None, help="comma list of: conv-bn-relu-x6,resnet18")
    ap.add_argument("--cap-gib", type=float, default=2.0, help="memory cap of the batch search")
    ap.add_argument("--no-errors", action="store_true", help="skip the code-mode error table")
    args = ap.parse_args(argv)
    device = pick_device(args.device, args.dry_run)
    nets = {"conv-bn-relu-x6": conv_bn_net, "resnet18": resnet18}
    if args.models:
        nets = {k: v for k, v in nets.items() if k in args.models.split(",")}
    batch, image, cap = args.batch, 32, int(args.cap_gib * 2**30)
    if args.dry_run:  # a small net, small images, a cap of a few MiB
        nets = {"conv-bn-relu-x6 (small)": lambda: conv_bn_net(width=8, depth=2)}
        batch, image, cap = 4, 8, 2**16
    cap_model = next(iter(nets)) if args.dry_run else "resnet18"
    cap_model = cap_model if device == "cuda" or args.dry_run else ""  # a GPU measures it
    env = environment(device)
    rows = memory_rows(device, batch, image, nets, cap, cap_model)
    write_csv(args.results / "memory.csv", [r | env for r in rows])
    lines = header("benchmarks.memory", argv, env, None)[:2]
    what = (
        f"Per training step, batch {batch} of 3x{image}x{image} float32: bytes saved for backward"
    )
    if device == "cuda":
        what += ", the peak allocation of a train step"
    if cap_model:
        fit = "the saved bytes fit" if device != "cuda" else "a train step fits"
        what += f"; the largest batch of {cap_model} for which {fit} in {cap / 2**30:.3g} GiB"
    lines += [
        what + ".",
        "",
        table(rows, lambda k, v: f"{v:.2f}x" if k == "vs_relu" else f"{v:.1f}"),
        "",
    ]
    verdicts = judge(rows)
    if verdicts:
        lines += [markdown_table(["target", "measured", "verdict"], verdicts, "lrl"), ""]
    if not args.no_errors:
        surrogates, bits = (["bsilu"], (8,)) if args.dry_run else (sk.SURROGATES, (8, 4, 2, 1))
        errs = error_rows(surrogates, bits)
        lines += ["Code modes: relative L2 error of the gradient against exact, N(0,1) inputs:", ""]
        lines.append(table(errs, lambda k, v: f"{100 * v:.3g}%" if math.isfinite(v) else "—"))
    write_report(args.results, "memory", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
