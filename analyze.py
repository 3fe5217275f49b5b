"""The paper's tables, figures and t-tests from finished runs, side by side with the paper's numbers.

    python analyze.py runs/maml runs/metasgd [more runs ...] --out report/

Reads only files on disk, from each run folder (or checkpoint path): the checkpoint (config and
learned rates), metrics.csv, lr_stats.csv, test.json and the probe records probe*.csv. Several runs
of one method (different seeds) are shown as mean and std across seeds. Writes into --out:
table1_learned_rates.{md,csv}, fig5_training.png, fig6_learned_rates.png, fig6_rates_over_training.png,
fig7_probe.png, stats.{md,json} and report.md, which holds everything on one page.
"""

import csv
import json
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import data
import maml
import probe

LAYERS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "logits"]
PAPER_TABLE1 = {
    "conv1": ("-0.006", "0.032"),
    "conv2": ("-0.004", "0.027"),
    "conv3": ("-0.013", "0.027"),
    "conv4": ("-0.018", "0.030"),
    "logits": ("0.043", "0.072"),
}
METHOD_NAMES = {"maml": "MAML", "metasgd": "Meta-SGD"}


class AnalysisError(Exception):
    """Missing, foreign or mismatched inputs."""


# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------


def load_run(path):
    """A run's files as plain data: {'folder', 'method', 'config', 'rates', 'metrics', 'lr_stats',
    'test', 'probes': {stem: {'records', 'settings'}}}."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [folder / "ckpt.pt", folder / "best.pt"]
        ckpt_path = next((c for c in candidates if c.exists()), None)
        if ckpt_path is None:
            raise AnalysisError(
                f"{folder} holds no checkpoint (ckpt.pt or best.pt); expected a run folder written by maml.py"
            )
    elif path.exists():
        ckpt_path = path
    else:
        raise AnalysisError(f"{path} does not exist; expected a run folder or a checkpoint written by maml.py")
    try:
        ckpt = maml.load_checkpoint(ckpt_path)
    except maml.CheckpointError as e:
        raise AnalysisError(str(e)) from None
    config = ckpt["config"]
    run = {
        "folder": folder,
        "checkpoint": ckpt_path,
        "config": config,
        "iteration": ckpt["iteration"],
        "method": "metasgd" if config["learn_lr"] else "maml",
        "rates": {n: r.double().numpy() for n, r in ckpt["inner_lrs"].items()} if config["learn_lr"] else None,
        "metrics": maml.read_log_strictly(folder / "metrics.csv") if (folder / "metrics.csv").exists() else [],
        "lr_stats": maml.read_log_strictly(folder / "lr_stats.csv") if (folder / "lr_stats.csv").exists() else [],
        "test": maml.read_json(folder / "test.json") if (folder / "test.json").exists() else None,
        "probes": {},
    }
    for records in sorted(folder.glob("probe*.csv")):
        summary = records.with_suffix(".json")
        settings = maml.read_json(summary).get("settings", {}) if summary.exists() else {}
        run["probes"][records.stem] = {"records": probe.read_records(records), "settings": settings}
    return run


# Flags that do not change what a run computes: runs that differ only in these are one run.
NOT_RESULTS = {"out", "resume", "no_progress", "debug", "device", "cache_dir", "task_batching", "log_every"}


def check_compatible(runs):
    """Refuse runs that cannot be analysed together: a run given twice, or two runs of identical config
    and seed (either would count one run as two seeds and double n), or mixed task shapes."""
    seen = {}
    for run in runs:
        folder = Path(run["folder"]).resolve()
        if folder in seen:
            raise AnalysisError(f"{run['folder']} is given twice (also as {seen[folder]}); give each run once")
        seen[folder] = run["folder"]
    configs = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run["config"].items() if k not in NOT_RESULTS}, sort_keys=True, default=str)
        if key in configs:
            raise AnalysisError(
                f"{configs[key]} and {run['folder']} have the same config and seed: they are one run made twice, "
                f"not two seeds; give one of them"
            )
        configs[key] = run["folder"]
    shapes = {(r["config"]["ways"], r["config"]["shots"]) for r in runs}
    if len(shapes) > 1:
        raise AnalysisError(
            "the runs mix task shapes ("
            + ", ".join(f"{w}-way {s}-shot" for w, s in sorted(shapes))
            + "); analyse runs of one shape together"
        )


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def rate_table(rates):
    """Table 1's numbers per layer (mean, std, fraction negative, min, max, and each parameter
    tensor's mean), as maml.rate_statistics computes them for lr_stats.csv. `rates` maps parameter
    name -> array."""
    rows = maml.rate_statistics({n: torch.from_numpy(np.asarray(r)) for n, r in rates.items()})
    table = {row["name"]: {**row, "tensor_means": {}} for row in rows if row["kind"] == "layer"}
    for row in rows:
        if row["kind"] == "tensor":
            table[maml.layer_of(row["name"])]["tensor_means"][row["name"].split(".", 1)[1]] = row["mean"]
    return {layer: table[layer] for layer in LAYERS if layer in table}


def across_seeds(values):
    """Mean and std (ddof=1; 0 for one run) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def pooled_records(runs, stem):
    """Per-iteration probe records of one probe kind, concatenated over the runs (seeds)."""
    pooled = {}
    for run in runs:
        if stem in run["probes"]:
            for k, v in run["probes"][stem]["records"].items():
                pooled.setdefault(k, []).extend(v)
    return pooled


def compute_stats(by_method):
    """Every test the report shows, as plain numbers."""
    out = {"methods": {}, "between_methods": {}}
    stems = sorted({s for runs in by_method.values() for r in runs for s in r["probes"]})
    for method, runs in by_method.items():
        m = out["methods"][method] = {"runs": len(runs), "probes": {}}
        tests = [r["test"] for r in runs if r["test"]]
        if tests:
            m["test_acc"] = {
                "per_run": [(t["test_acc"], t["test_ci95"]) for t in tests],
                "mean_std": across_seeds([t["test_acc"] for t in tests]),
            }
        vals = [max(float(row["val_acc"]) for row in r["metrics"]) for r in runs if r["metrics"]]
        if vals:
            m["best_val_acc"] = {"per_run": vals, "mean_std": across_seeds(vals)}
        for stem in stems:
            records = pooled_records(runs, stem)
            if records:
                s = probe.summarize(records)
                s["per_run_off_change"] = [
                    float(probe.changes(r["probes"][stem]["records"])[1].mean()) for r in runs if stem in r["probes"]
                ]
                m["probes"][stem] = s
    if len(by_method) == 2:
        for stem in stems:
            offs = {}
            for method, runs in by_method.items():
                records = pooled_records(runs, stem)
                if records:
                    offs[method] = probe.changes(records)[1]
            if len(offs) == 2:
                welch = stats.ttest_ind(offs["metasgd"], offs["maml"], equal_var=False)
                out["between_methods"][stem] = {
                    "test": "Welch t-test of off-task change, Meta-SGD vs MAML",
                    "t": float(welch.statistic),
                    "p": float(welch.pvalue),
                    "df": float(welch.df),
                    "mean_difference": float(offs["metasgd"].mean() - offs["maml"].mean()),
                }
    return out


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def fmt(mean_std, scale=1.0, digits=3):
    mean, std = mean_std
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std else "")


def write_table1(runs, out):
    """Table 1 for the Meta-SGD runs: across seeds, mean ± std of each statistic."""
    tables = [rate_table(r["rates"]) for r in runs if r["rates"] is not None]
    if not tables:
        return None
    rows = []
    for layer in LAYERS:
        if layer not in tables[0]:
            continue
        row = {"layer": layer}
        for key in ("mean", "std", "frac_negative", "min", "max"):
            row[key] = across_seeds([t[layer][key] for t in tables])
        row["tensor_means"] = {
            n: across_seeds([t[layer]["tensor_means"][n] for t in tables]) for n in tables[0][layer]["tensor_means"]
        }
        rows.append(row)
    with open(out / "table1_learned_rates.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "layer",
                "mean",
                "mean_seed_std",
                "std",
                "frac_negative",
                "min",
                "max",
                "tensor_means",
                "paper_mean",
                "paper_std",
                "runs",
            ]
        )
        for r in rows:
            paper = PAPER_TABLE1.get(r["layer"], ("", ""))
            w.writerow(
                [
                    r["layer"],
                    r["mean"][0],
                    r["mean"][1],
                    r["std"][0],
                    r["frac_negative"][0],
                    r["min"][0],
                    r["max"][0],
                    " ".join(f"{n}={v[0]:.6g}" for n, v in r["tensor_means"].items()),
                    paper[0],
                    paper[1],
                    len(tables),
                ]
            )
    lines = [
        f"Learned inner-loop rates of Meta-SGD ({len(tables)} run{'s' if len(tables) > 1 else ''}"
        f"{', mean ± std across seeds' if len(tables) > 1 else ''}); the paper's Table 1 beside.",
        "",
        "| layer | mean | std | fraction negative | min | max | mean per tensor | paper mean | paper std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER_TABLE1.get(r["layer"])
        tensors = ", ".join(f"{n} {fmt(v, digits=4)}" for n, v in r["tensor_means"].items())
        lines.append(
            f"| {r['layer']} | {fmt(r['mean'], digits=4)} | {fmt(r['std'], digits=4)} | "
            f"{fmt(r['frac_negative'], digits=3)} | {fmt(r['min'], digits=4)} | {fmt(r['max'], digits=4)} | "
            f"{tensors} | {paper[0] if paper else '—'} | {paper[1] if paper else '—'} |"
        )
    lines.append("")
    lines.append(
        "BatchNorm rows (bn1..bn4) are the rates of each conv block's BatchNorm scale and shift; the paper "
        "reports conv and logits layers only."
    )
    (out / "table1_learned_rates.md").write_text("\n".join(lines) + "\n")
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "figure.dpi": 120})
    return plt


def run_label(run):
    return f"{METHOD_NAMES[run['method']]} seed {run['config']['seed']}"


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
    fig.savefig(out / "fig5_training.png")
    plt.close(fig)


def fig6(runs, out):
    sgd = [r for r in runs if r["rates"] is not None]
    if not sgd:
        return False
    plt = _plt()
    layers = [layer for layer in LAYERS if any(maml.layer_of(n) == layer for n in sgd[0]["rates"])]
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, layer in zip(axes.flat, layers):
        for run in sgd:
            r = np.concatenate([v.ravel() for n, v in run["rates"].items() if maml.layer_of(n) == layer])
            ax.hist(r, bins=60, alpha=0.6, label=f"seed {run['config']['seed']}")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(layer)
        ax.set_xlabel("learned inner rate")
        ax.set_ylabel("parameters")
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Figure 6: Meta-SGD's learned inner-loop rates per layer (final checkpoint)")
    fig.tight_layout()
    fig.savefig(out / "fig6_learned_rates.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for run in sgd:
        rows = [r for r in run["lr_stats"] if r["kind"] == "layer"]
        for layer in layers:
            pts = [
                (int(r["iteration"]), float(r["mean"]), float(r["frac_negative"])) for r in rows if r["name"] == layer
            ]
            if pts:
                it, mean, neg = zip(*pts)
                label = layer if len(sgd) == 1 else f"{layer} (seed {run['config']['seed']})"
                axes[0].plot(it, mean, label=label)
                axes[1].plot(it, [100 * n for n in neg], label=label)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("mean learned rate")
    axes[1].set_ylabel("entries with a negative rate (%)")
    for ax in axes:
        ax.set_xlabel("meta-iteration")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Figure 6b: when do the rates turn negative? (statistics logged at every evaluation)")
    fig.tight_layout()
    fig.savefig(out / "fig6_rates_over_training.png")
    plt.close(fig)
    return True


def fig7(by_method, stats_out, out, stem="probe"):
    have = {m: s["probes"][stem] for m, s in stats_out["methods"].items() if stem in s["probes"]}
    if not have:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    regimes = [("pre_A", "pre-adaptation"), ("on_A", "on-task"), ("off_B", "off-task")]
    width = 0.8 / len(have)
    for i, (method, s) in enumerate(have.items()):
        xs = np.arange(3) + i * width
        means = [100 * s["regimes"][k]["mean"] for k, _ in regimes]
        errs = [100 * s["regimes"][k]["ci95"] for k, _ in regimes]
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
    low = min(100 * s["regimes"][k]["mean"] for s in have.values() for k, _ in regimes)
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
    fig.savefig(out / "fig7_probe.png")
    plt.close(fig)
    return True


def stats_markdown(stats_out):
    lines = ["## Statistics", ""]
    lines += ["| method | test accuracy (95% CI) | best validation accuracy |", "|---|---|---|"]
    for method, s in stats_out["methods"].items():
        test = "not measured (no test.json)"
        if "test_acc" in s:
            test = "; ".join(f"{100 * a:.2f} ± {100 * c:.2f}%" for a, c in s["test_acc"]["per_run"])
            if len(s["test_acc"]["per_run"]) > 1:
                test += f" (seeds: {fmt(s['test_acc']['mean_std'], 100, 2)}%)"
        val = fmt(s["best_val_acc"]["mean_std"], 100, 2) + "%" if "best_val_acc" in s else "not measured"
        lines.append(f"| {METHOD_NAMES[method]} | {test} | {val} |")
    lines += [
        "",
        "Probe (per-iteration records pooled over seeds). Changes are in percentage points; "
        "the paired t-test compares on-task change with off-task change iteration by iteration.",
        "",
        "| method | probe | iterations | pre A | on A | off B | on-task change | off-task change | "
        "paired t (on vs off) | p | on change vs 0: p | off change vs 0: p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda d: f"{100 * d['mean']:.2f} ± {100 * d['ci95']:.2f}"
    for method, s in stats_out["methods"].items():
        for stem, p in s["probes"].items():
            r = p["regimes"]
            lines.append(
                f"| {METHOD_NAMES[method]} | {stem} | {p['iterations']} | {pct(r['pre_A'])} | {pct(r['on_A'])} | "
                f"{pct(r['off_B'])} | {pct(p['on_change'])} | {pct(p['off_change'])} | "
                f"{p['paired_t_on_vs_off']['t']:.3f} | {p['paired_t_on_vs_off']['p']:.3g} | "
                f"{p['on_change_vs_zero']['p']:.3g} | {p['off_change_vs_zero']['p']:.3g} |"
            )
    if stats_out["between_methods"]:
        lines += [
            "",
            "| between methods | probe | t | df | p | off-change difference (Meta-SGD − MAML, pp) |",
            "|---|---|---|---|---|---|",
        ]
        for stem, b in stats_out["between_methods"].items():
            lines.append(
                f"| Welch t-test of off-task change | {stem} | {b['t']:.3f} | {b['df']:.1f} | {b['p']:.3g} | "
                f"{100 * b['mean_difference']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def comparison_table(by_method, stats_out, table1_rows):
    def ours_val(method):
        s = stats_out["methods"].get(method, {})
        return fmt(s["best_val_acc"]["mean_std"], 100, 1) + "%" if "best_val_acc" in s else "not measured"

    def ours_test(method):
        s = stats_out["methods"].get(method, {})
        return fmt(s["test_acc"]["mean_std"], 100, 1) + "% (test)" if "test_acc" in s else "not measured"

    def ours_off(method):
        p = stats_out["methods"].get(method, {}).get("probes", {}).get("probe")
        return f"{100 * p['off_change']['mean']:+.2f} pp" if p else "not measured"

    lines = [
        "| quantity | paper | ours |",
        "|---|---|---|",
        f"| MAML validation accuracy | ~46% | {ours_val('maml')} (best) |",
        f"| Meta-SGD validation accuracy | ~47% | {ours_val('metasgd')} (best) |",
        f"| MAML, original paper (test) | 48.7% | {ours_test('maml')} |",
        f"| Meta-SGD, original paper (test) | 50.5% | {ours_test('metasgd')} |",
    ]
    by_layer = {r["layer"]: r for r in (table1_rows or [])}
    for layer, (mean, std) in PAPER_TABLE1.items():
        r = by_layer.get(layer)
        ours = f"{fmt(r['mean'], digits=4)} / {fmt(r['std'], digits=4)}" if r else "not measured"
        lines.append(f"| Table 1 {layer} rate mean / std | {mean} / {std} | {ours} |")
    lines += [
        f"| Meta-SGD off-task change | +0.2 pp | {ours_off('metasgd')} |",
        f"| MAML off-task change | −0.3 pp | {ours_off('maml')} |",
    ]
    for method in ("maml", "metasgd"):
        p = stats_out["methods"].get(method, {}).get("probes", {}).get("probe")
        ours = f"{p['paired_t_on_vs_off']['p']:.3g}" if p else "not measured"
        lines.append(
            f"| {METHOD_NAMES[method]}: t-test p, on- vs off-task change (ours paired) | "
            f"0.00044 (one p for the study; test and pairing not stated) | {ours} |"
        )
    return "\n".join(lines) + "\n"


def provenance(runs):
    lines = [
        "| run | method | data | iterations | seed | image size | filters | probe files |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["config"]
        lines.append(
            f"| {r['folder']} | {METHOD_NAMES[r['method']]} | {c['data'] or 'synthetic glyphs'} | "
            f"{r['iteration']} of {c['iterations']} | {c['seed']} | {c['image_size']} | {c['hidden']} | "
            f"{', '.join(r['probes']) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def analyze(paths, out):
    """Read and check every run, then write the report into `out`. Returns the path of report.md."""
    runs = [load_run(p) for p in paths]
    if not runs:
        raise AnalysisError("give at least one run folder")
    check_compatible(runs)
    maml.check_out_folder(out)
    try:
        return write_report(runs, Path(out))
    except OSError as e:  # a full disk, say: name the file
        raise data.WriteError(data.write_failure(e.filename or out, e)) from None


def report_notes(runs, by_method):
    """What the report lacks (with the command that would supply it) and what its reader must know."""
    missing = []
    if "maml" not in by_method:
        missing.append("no MAML run: comparisons between methods are left out")
    if "metasgd" not in by_method:
        missing.append("no Meta-SGD run: Table 1 and Figure 6 (learned rates) are left out")
    for run in runs:
        if not run["probes"] and (Path(run["folder"]) / "best.pt").exists():
            missing.append(f"{run['folder']} has no probe records: run `python probe.py {run['folder']}/best.pt`")
        elif not run["probes"]:
            missing.append(
                f"{run['folder']} has no probe records and no best.pt yet (training stopped before its first "
                f"evaluation): continue it with `python maml.py --resume --out {run['folder']}`"
            )
        if run["test"] is None:
            missing.append(f"{run['folder']} has no test.json (training did not finish)")
    warnings = []
    if any(not r["config"]["data"] for r in runs):
        warnings.append(
            "**These numbers come from the built-in synthetic dataset, not Mini-ImageNet**: they show the "
            "pipeline works, and cannot confirm or refute the paper."
        )
    if any(r["iteration"] < 60000 for r in runs):
        warnings.append(
            f"**Short runs**: {', '.join(str(r['iteration']) for r in runs)} meta-iterations, against the "
            f"paper's 60,000."
        )
    for run in runs:
        for stem, p in run["probes"].items():
            n = len(p["records"]["pre_A"])
            if stem == "probe" and n < 40000:
                warnings.append(f"Probe of {run['folder']}: {n} iterations, against the paper's 40,000.")
    return missing, warnings


def write_report(runs, out):
    by_method = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    by_method = {m: by_method[m] for m in ("maml", "metasgd") if m in by_method}
    stats_out = compute_stats(by_method)
    (out / "stats.json").write_text(json.dumps(stats_out, indent=2) + "\n")
    (out / "stats.md").write_text(stats_markdown(stats_out))
    table1 = write_table1(by_method.get("metasgd", []), out)
    fig5(runs, out)
    have_fig6 = fig6(runs, out)
    have_fig7 = fig7(by_method, stats_out, out)

    missing, warnings = report_notes(runs, by_method)
    c = runs[0]["config"]
    parts = [f"# Report: negative inner-loop learning rates ({c['ways']}-way {c['shots']}-shot)", ""]
    parts += [f"> {w}" for w in warnings] + ([""] if warnings else [])
    if missing:
        parts += ["Missing:", ""] + [f"- {m}" for m in missing] + [""]
    parts += [
        "## The paper's numbers beside ours",
        "",
        comparison_table(by_method, stats_out, table1),
        "## Runs",
        "",
        provenance(runs),
        "## Figure 5: training",
        "",
        "![Figure 5](fig5_training.png)",
        "",
    ]
    if table1:
        parts += ["## Table 1: learned inner rates", "", (out / "table1_learned_rates.md").read_text(), ""]
    if have_fig6:
        parts += [
            "## Figure 6: learned rates",
            "",
            "![Figure 6](fig6_learned_rates.png)",
            "",
            "![Figure 6b](fig6_rates_over_training.png)",
            "",
        ]
    if have_fig7:
        parts += ["## Figure 7: embedding probe", "", "![Figure 7](fig7_probe.png)", ""]
    parts += [stats_markdown(stats_out)]
    (out / "report.md").write_text("\n".join(parts))
    return out / "report.md"


def main(argv=None):
    p = maml.argument_parser(
        "Write the paper's tables, figures and t-tests for finished runs, beside the paper's numbers, into one report."
    )
    p.add_argument("runs", nargs="+", help="run folders (or checkpoints) written by maml.py, probed by probe.py")
    p.add_argument("--out", default="report", help="folder for the report, tables and figures")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = p.parse_args(argv)
    report = analyze(args.runs, args.out)
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    maml.run_cli(main, errors=(AnalysisError,))
