"""Command line: arguments, the whole run (every activation x seed), JSON / Markdown / plots."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import sugar_kernels as sk

from ..common import device_name, git_commit, log
from .data import DATASETS, load_data
from .loop import PROGRESS, train_one
from .models import MODELS, available_activations, bits8_available, parse_activation
from .plots import write_plots
from .report import aggregate, pct, report

SCHEMA_VERSION = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train",
        description="Train the same model with ReLU, GELU and SUGAR variants and compare test "
        "accuracy, dead units, sparsity, saved activation memory and step time.",
    )
    add = p.add_argument
    add("--data", choices=DATASETS, default="digits", help="cifar: the on-disk format")
    add("--data-dir", default=None, help="folder holding cifar-10-batches-py/ or cifar-100-python/")
    add("--download", action="store_true", help="download CIFAR into --data-dir if missing")
    add("--model", choices=MODELS, default="cnn", help="resnet18 and vgg16*: CIFAR variants")
    add("--activations", nargs="+", default=None, help="relu gelu sugar-<name>[-b<bits>] (all)")
    add("--width", type=int, default=None, help="channels of the cnn's first layer (32; quick 16)")
    add("--threads", type=int, default=None, help="torch CPU threads (quick: 1)")
    add("--epochs", type=int, default=None, help="default 20 (quick: 12)")
    add("--seeds", type=int, default=None, help="seeds first-seed, first-seed+1, ... (3; quick 2)")
    add("--first-seed", type=int, default=0)
    add("--lr", type=float, default=None, help="default 0.05 for sgd, 1e-3 for adam")
    add("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    add("--weight-decay", type=float, default=0.0)
    add("--batch-size", type=int, default=None, help="default 64")
    add("--optimizer", choices=("sgd", "adam"), default="sgd")
    add("--augment", action="store_true", help="random crop + flip")
    add("--paper", action="store_true", help="the paper's: SGD, lr 0.001, batch 128, no augment")
    add("--stress", action="store_true", help="dying ReLUs: hidden biases start at -STRESS_BIAS")
    add("--stress-bias", type=float, default=0.5, help="default 0.5 (~90%% of units start dead)")
    add("--quick", action="store_true", help="digits, cnn, 12 epochs, 2 seeds (~1 min on 2 CPUs)")
    add("--dry-run", action="store_true", help="seconds: 1 epoch, 1 seed, a tiny cnn")
    add("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    add("--json", dest="json_path", default=None, help="write the results as JSON here")
    add("--out", default=None, help="folder for results.md and PNG plots")
    add("--progress", choices=PROGRESS, default="auto", help="auto, lines: one line per epoch")
    add("--no-progress", action="store_true", help="same as --progress off")
    args = p.parse_args(argv)

    if args.dry_run:
        args.quick, args.epochs, args.seeds, args.width = True, 1, 1, 4
        args.activations = args.activations or ["relu", "sugar-bsilu"]
    if args.quick:
        args.data, args.model = "digits", "cnn"
        args.epochs, args.seeds = args.epochs or 12, args.seeds or 2
        args.width, args.threads = args.width or 16, args.threads or 1
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
    runs, progress = [], "off" if args.no_progress else args.progress
    for act in args.activations:
        r = aggregate(act, [train_one(args, data, act, s, device, progress) for s in seeds])
        runs.append(r)
        acc = f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f}%"
        step = f"step {r['step_time_ms']:.2f} ms"
        log(f"{act:>16}: test acc {acc}  dead {pct(r['dead_fraction'])}  {step}")
    skip = ("json_path", "out", "no_progress", "progress")
    config = {k: v for k, v in vars(args).items() if k not in skip} | {"seeds": seeds}
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "environment": {
            "machine": device_name(device),
            "commit": git_commit(),
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
        figures = "\n".join(f"![{p}]({p})" for p in write_plots(result, out))
        (out / "results.md").write_text(f"# Training comparison\n\n{text}\n\n{figures}\n")
    return 0
