"""Figures of a run: test accuracy and dead units over epochs (mean over seeds, a band of +-1 std),
dead units per layer after training (mean over seeds, an error bar of +-1 std). Titles name the
dataset, model, seeds, machine and commit; zero values stay visible."""

from __future__ import annotations

import statistics
from pathlib import Path

# one style per activation, so that curves lying on top of each other stay distinguishable
_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1)), "v"), ((0, (3, 1)), "P")]


def _mean_std(values: list[list[float | None]]) -> tuple[list[float], list[float]]:
    """Per index, in percent: mean and std (0 for one seed) over the seeds; None dropped."""
    columns = [[100 * v for v in column if v is not None] for column in zip(*values)]
    means = [statistics.fmean(xs) if xs else float("nan") for xs in columns]
    return means, [statistics.stdev(xs) if len(xs) > 1 else 0.0 for xs in columns]


def title(result: dict) -> str:
    """Dataset, model, seeds, machine and commit of a run (two lines)."""
    cfg, env = result["config"], result["environment"]
    d = env["dataset"]
    stress = f", stress init (hidden biases -{cfg['stress_bias']})" if cfg.get("stress") else ""
    return (
        f"{d['name']} ({d['train']} train / {d['test']} test), {cfg['model']}, "
        f"{cfg['epochs']} epochs, seeds {cfg['seeds']}{stress}\n"
        f"{env['machine']}, torch {env['torch']}, commit {env.get('commit', '?')}"
    )


def write_plots(result: dict, out: Path) -> list[str]:
    """Write accuracy.png and dead_units.png into ``out``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = result["runs"]
    spread = "±1 std over seeds" if len(runs[0]["seeds"]) > 1 else "one seed: no spread"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for (linestyle, marker), r in zip(_STYLES * len(runs), runs):
        epochs = r["curve"]["epoch"]
        for ax, key in zip(axes, ("test_accuracy", "dead_fraction")):
            mean, std = _mean_std([s["curve"][key] for s in r["per_seed"]])
            style = dict(linestyle=linestyle, marker=marker, markersize=4, linewidth=1.4)
            (line,) = ax.plot(epochs, mean, label=r["activation"], **style)
            lo, hi = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy (mean, {spread})")
    title_dead = f"Dead units on the test set (mean, {spread})"
    axes[1].set(xlabel="epoch", ylabel="dead units (%)", title=title_dead, ylim=(-2, None))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title(result), fontsize=9)
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    layers = list(runs[0]["dead_fraction_per_layer"])
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(
        figsize=(max(7, 0.37 * len(layers) * len(runs)), 4.6), layout="constrained"
    )
    for i, r in enumerate(runs):
        xs = [j + i * width for j in range(len(layers))]
        per_seed = [[s["dead_fraction_per_layer"].get(k) for k in layers] for s in r["per_seed"]]
        mean, std = _mean_std(per_seed)
        errors = std if len(r["per_seed"]) > 1 else None
        bars = ax.bar(xs, mean, width, yerr=errors, capsize=2, label=r["activation"])
        # a zero-height bar is invisible: mark zeros with a short line in the bar's colour
        zeros = [x for x, m in zip(xs, mean) if m == 0]
        colour = bars[0].get_facecolor()
        ax.scatter(
            zeros, [0] * len(zeros), marker="_", s=250, linewidths=2.5, color=colour, zorder=3
        )
    ax.axhline(0, color="grey", linewidth=0.8)
    units = runs[0]["units_per_layer"]
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(
        [f"{k} ({units.get(k)})" for k in layers], rotation=30, ha="right", fontsize=8
    )
    what = f"Dead units per layer after training, test set\n(mean, {spread}; a dash at 0: none)"
    ax.set(
        xlabel="layer (units)", ylabel="dead units after training (%)", title=what, ylim=(-3, None)
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title(result), fontsize=9)
    fig.savefig(out / "dead_units.png", dpi=110)
    plt.close(fig)
    return ["accuracy.png", "dead_units.png"]
