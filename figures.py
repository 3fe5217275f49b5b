"""The report's figures (matplotlib, written as PNG files): Figure 5 (training and validation
accuracy), Figure 6 (Meta-SGD's learned rates, and how they move during training) and Figure 7 (the
embedding probe), from the runs and statistics that analyze.py has read and computed.
"""

import numpy as np

from cli import atomic_write
from flags import METHOD_NAMES
from stats import CKA_LAYERS, LAYERS, figure_numbers, layer_of


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "figure.dpi": 120})
    return plt


def save(fig, path):
    """A figure as a PNG file, through the one atomic writer (a kill leaves the old file or the new)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def run_label(run):
    seed = run["config"]["seed"]
    return f"{METHOD_NAMES[run['method']]} seed {'unknown' if seed is None else seed}"


def fig5(runs, out):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in runs:
        rows = run["metrics"]
        if not rows:
            continue
        train = [(int(r["iteration"]), 100 * float(r["train_acc"])) for r in rows if r["train_acc"] not in ("", None)]
        val = [(int(r["iteration"]), 100 * float(r["val_acc"])) for r in rows]
        if train:
            axes[0].plot(*zip(*train), marker=".", label=run_label(run))
        axes[1].plot(*zip(*val), marker=".", label=run_label(run))
    chance = 100 / runs[0]["config"]["ways"]
    for ax, title in zip(axes, ("training query accuracy (mean since last evaluation)", "validation accuracy")):
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.0f}%)")
        ax.set_xlabel("meta-iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(f"Figure 5: {runs[0]['config']['ways']}-way {runs[0]['config']['shots']}-shot training")
    fig.tight_layout()
    save(fig, out / "fig5_training.png")
    plt.close(fig)


def fig6(runs, out):
    sgd = [r for r in runs if r["table1"] is not None]
    if not sgd:
        return False
    plt = _plt()
    layers = [layer for layer in LAYERS if any(layer_of(n) == layer for n in sgd[0]["table1"]["rates"])]
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, layer in zip(axes.flat, layers):
        for run in sgd:
            rates = run["table1"]["rates"]
            r = np.concatenate([v.ravel() for n, v in rates.items() if layer_of(n) == layer and "weight" in n])
            ax.hist(
                r, bins=60, alpha=0.6, histtype="stepfilled", label=f"seed {run['config']['seed']}"
            )  # one patch, not 60
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(layer)
        ax.set_xlabel("learned inner rate")
        ax.set_ylabel("parameters")
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    source = ", ".join(sorted({r["table1"]["checkpoint"] for r in sgd}))
    fig.suptitle(f"Figure 6: Meta-SGD's learned inner-loop rates per layer, weights only (from {source}, as Table 1)")
    fig.tight_layout()
    save(fig, out / "fig6_learned_rates.png")
    plt.close(fig)
    fig6_over_training(sgd, layers, out)
    return True


# Seeds beyond these share a style (and then only lines of different layers, so of different colours, do).
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2)))


def fig6_over_training(sgd, layers, out):
    """Figure 6b: each layer's mean learned rate and fraction of negative rates at every evaluation."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = plt.get_cmap("tab10").colors  # a colour per layer, a line style per seed: no two lines alike
    for s, run in enumerate(sgd):
        rows = [r for r in run["lr_stats"] if r["kind"] == "layer"]
        for i, layer in enumerate(layers):
            pts = [
                (int(r["iteration"]), float(r["mean"]), float(r["frac_negative"])) for r in rows if r["name"] == layer
            ]
            if pts:
                it, mean, neg = zip(*pts)
                label = layer if len(sgd) == 1 else f"{layer} (seed {run['config']['seed']})"
                style = {"color": colours[i % len(colours)], "ls": LINE_STYLES[s % len(LINE_STYLES)], "label": label}
                axes[0].plot(it, mean, **style)
                axes[1].plot(it, [100 * n for n in neg], **style)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("mean learned rate")
    axes[1].set_ylabel("entries with a negative rate (%)")
    for ax in axes:
        ax.set_xlabel("meta-iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Figure 6b: when do the rates turn negative? (statistics logged at every evaluation)")
    fig.tight_layout()
    save(fig, out / "fig6_rates_over_training.png")
    plt.close(fig)


def fig7(stats_out, out, stem="probe"):
    have = {m: figure_numbers(s["probes"][stem]) for m, s in stats_out["methods"].items() if stem in s["probes"]}
    if not have:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    regimes = [("pre_A", "pre-adaptation"), ("on_A", "on-task"), ("off_B", "off-task")]
    width = 0.8 / len(have)
    for i, (method, s) in enumerate(have.items()):
        xs = np.arange(3) + i * width
        means = [100 * s[k]["mean"] for k, _ in regimes]
        errs = [100 * s[k]["ci95"] for k, _ in regimes]
        axes[0].bar(xs, means, width, yerr=errs, capsize=4, label=METHOD_NAMES[method])
        changes = [s["on_change"], s["off_change"]]
        axes[1].bar(
            np.arange(2) + i * width,
            [100 * c["mean"] for c in changes],
            width,
            yerr=[100 * c["ci95"] for c in changes],
            capsize=4,
            label=METHOD_NAMES[method],
        )
    axes[0].set_xticks(np.arange(3) + width * (len(have) - 1) / 2, [n for _, n in regimes])
    axes[0].set_ylabel("prototype accuracy (%), 95% CI")
    low = min(100 * s[k]["mean"] for s in have.values() for k, _ in regimes)
    axes[0].set_ylim(max(0, low - 10), None)
    axes[1].set_xticks(
        np.arange(2) + width * (len(have) - 1) / 2, ["on-task change (on_A - pre_A)", "off-task change (off_B - pre_B)"]
    )
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_ylabel("accuracy change (percentage points), 95% CI")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Figure 7: embedding probe, cosine nearest-prototype accuracy of the encoder")
    fig.tight_layout()
    save(fig, out / "fig7_probe.png")
    plt.close(fig)
    return True


def cka_lines(stats_out, stem="probe"):
    """The CKA figure's lines, {label: (summary, per-seed summaries)}: per method, the mean and interval over
    its seeds probed with --similarity when there are several, else the one seed's; each seed's own means
    beside them. A method with seeds probed without --similarity says how many had it."""
    have = {}
    for method, s in stats_out["methods"].items():
        p = s["probes"].get(stem) or {"per_seed": []}
        measured = [r for r in p["per_seed"] if "similarity" in r]  # seeds probed without --similarity: named
        label = METHOD_NAMES[method] + (
            f" ({len(measured)} of {len(p['per_seed'])} seeds)" if len(measured) < len(p["per_seed"]) else ""
        )
        if measured:
            summary = p["across_seeds"].get("similarity") or measured[0]["similarity"]
            have[label] = (summary, [r["similarity"] for r in measured] if len(measured) > 1 else [])
    return have


def clipped_interval(mean, ci95):
    """An interval's extent below and above `mean`, within CKA's range [0, 1] (an interval over two seeds can
    run far outside it); no interval where none was measured."""
    if not np.isfinite(ci95):
        return 0.0, 0.0
    return mean - max(0.0, mean - ci95), min(1.0, mean + ci95) - mean


def fig_cka(stats_out, out, stem="probe"):
    """Linear CKA before vs after adaptation per layer, on- and off-task: per method its mean with a 95%
    interval clipped to [0, 1] (the caption says so) and, with several seeds, each seed's mean as a dot."""
    have = cka_lines(stats_out, stem)
    if not have:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    x = np.arange(len(CKA_LAYERS))
    for ax, (regime, title) in zip(
        axes, (("on", "on-task (task A's queries)"), ("off", "off-task (task B's queries)"))
    ):
        for label, (cka, seeds) in have.items():
            numbers = [cka[f"cka_{regime}_{layer}"] for layer in CKA_LAYERS]
            means = [c["mean"] for c in numbers]
            extent = np.array([clipped_interval(c["mean"], c["ci95"]) for c in numbers]).T
            line = ax.errorbar(x, means, yerr=extent, marker="o", capsize=3, label=label)
            for seed in seeds:
                ys = [seed[f"cka_{regime}_{layer}"]["mean"] for layer in CKA_LAYERS]
                ax.plot(x, ys, ls="none", marker=".", color=line[0].get_color(), alpha=0.6)
        ax.set_xticks(x, CKA_LAYERS)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("linear CKA, before vs after adaptation")
    axes[0].legend(fontsize=8)
    fig.suptitle("Where adaptation changes the representation: 1 = unchanged (up to rotation and scale)")
    fig.text(0.5, 0.01, "Lines: the mean (over seeds where there are several); bars: its 95% interval, clipped to "
             "CKA's range [0, 1]; dots: each seed's mean.", ha="center", fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, out / "fig_cka_per_layer.png")
    plt.close(fig)
    return True
