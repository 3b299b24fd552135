"""Training one (activation, seed), evaluation, the saved-bytes measurement, and progress output
(one line per epoch on stderr)."""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from sugar_kernels.diagnostics import ActivationMonitor

from ..common import saved_bytes
from .data import Dataset, augment
from .models import apply_activation, build_model, stress_init


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training forward (each storage once, no params).

    Runs on a copy of the model so that batch-norm statistics of the real one are not touched.
    """
    model = copy.deepcopy(model).train()
    return saved_bytes(lambda: F.cross_entropy(model(x), y), model.parameters())


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


PROGRESS = ("auto", "lines", "off")


def train_one(
    cfg: argparse.Namespace,
    data: Dataset,
    activation: str,
    seed: int,
    device,
    progress: str = "auto",
) -> dict:
    """Train one (activation, seed) and return its measurements; progress ("auto" or "lines":
    one line per epoch) goes to stderr."""
    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS)}, not {progress!r}")

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
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        last = epoch == cfg.epochs
        mon = ActivationMonitor(model, track_grad=True).attach() if last else None
        perm = torch.randperm(n_train, generator=gen)
        losses = []
        for step in range(steps_per_epoch):
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
        stats = {
            "loss": f"{curve['train_loss'][-1]:.3f}",
            "acc": f"{acc:.3f}",
            "dead": f"{summ['total']['dead_fraction']:.2f}",
        }
        if progress != "off":
            print(
                f"{activation} seed {seed} epoch {epoch}/{cfg.epochs}: "
                + " ".join(f"{k} {v}" for k, v in stats.items())
                + f" ({time.perf_counter() - t_start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
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
