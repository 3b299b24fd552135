"""Aggregation over seeds and the Markdown report of a run."""

from __future__ import annotations

import statistics

from .models import parse_activation


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
    means = ["test_accuracy", "dead_fraction", "dead_fraction_init", "sparsity"]
    means += ["inactive_fraction", "grad_to_inactive", "grad_inactive_nonzero", "step_time_ms"]
    return {
        "activation": activation,
        "surrogate": spec["surrogate"],
        "bits": spec["bits"],
        "seeds": [r["seed"] for r in per_seed],
        **{k: _mean([r[k] for r in per_seed]) for k in means},
        "test_accuracy_std": _std([r["test_accuracy"] for r in per_seed]),
        "dead_fraction_std": _std([r["dead_fraction"] for r in per_seed]),
        "dead_fraction_per_layer": {
            k: _mean([r["dead_fraction_per_layer"][k] for r in per_seed]) for k in layers
        },
        "units_per_layer": per_seed[0]["units_per_layer"],
        "saved_activation_bytes": per_seed[0]["saved_activation_bytes"],
        "curve": curve,
        "per_seed": per_seed,
    }


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pct(x) -> str:
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
            f"{100 * r['test_accuracy_std']:.2f}% | {pct(r['dead_fraction_init'])} → "
            f"{pct(r['dead_fraction'])} | {pct(r['sparsity'])} | {pct(r['grad_to_inactive'])}"
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
        cells = " | ".join(pct(r["dead_fraction_per_layer"].get(k)) for r in runs)
        lines.append(f"| {k} ({units}) | {cells} |")
    return "\n".join(lines)


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
