"""stats.md: the report's statistics as markdown tables. Accuracy per method; the probe per seed (unit: its
iterations), across seeds (unit: the seed) and between methods (each against MAML, paired over identical
task pairs); and, for probes run with --similarity, each layer's CKA before vs after adaptation. Every
p-value is written with its test, unit and n (`p_text`). Reads stats.compute_stats's numbers only.
"""

import numpy as np

from flags import METHOD_NAMES, METHODS
from stats import CKA_LAYERS


def fmt(mean_std, scale=1.0, digits=3):
    mean, std = mean_std
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std and np.isfinite(std) else "")


def pct(d):
    """A mean ± 95% CI half-width in percent (or percentage points); one value has no interval."""
    if d["ci95"] is None or not np.isfinite(d["ci95"]):
        return f"{100 * d['mean']:.2f} (n = 1: no interval)"
    return f"{100 * d['mean']:.2f} ± {100 * d['ci95']:.2f}"


def p_text(test):
    """A p-value with what it is: its test, its unit and n. Every p-value of the report goes through here."""
    where = f"{test['test']}, n = {test['n']} {test['unit']}"
    if test.get("note"):
        return f"{test['note']} ({where})"
    if not np.isfinite(test["p"]):
        why = "needs n ≥ 2" if test["n"] < 2 else "every value is the same, so there is no variance to test"
        return f"no test ({where}: {why})"
    return f"t = {test['t']:.3f}, p = {test['p']:.3g} ({where})"


def accuracy_markdown(stats_out):
    lines = ["| method | test accuracy (95% CI) | best validation accuracy |", "|---|---|---|"]
    for method, s in stats_out["methods"].items():
        test = "not measured (no test.json)"
        if "test_acc" in s:
            test = "; ".join(f"{100 * a:.2f}" + (f" ± {100 * c:.2f}%" if c is not None else "% (one task: no interval)")
                             for a, c in s["test_acc"]["per_run"])  # fmt: skip
            if len(s["test_acc"]["per_run"]) > 1:
                test += f" (seeds: {fmt(s['test_acc']['mean_std'], 100, 2)}%)"
        val = fmt(s["best_val_acc"]["mean_std"], 100, 2) + "%" if "best_val_acc" in s else "not measured"
        lines.append(f"| {METHOD_NAMES[method]} | {test} | {val} |")
    return lines


def per_seed_markdown(stats_out):
    lines = [
        "### Probe, per seed (unit: the probe's iterations)",
        "",
        "Each row is one trained network. Its tests treat that network's probe iterations (task pairs) as the "
        "sample: they say how sure we are about this network, not about the method. Changes in percentage points.",
        "",
        "| method | probe | seed | iterations | pre A | on A | off B | on-task change | off-task change | "
        "on- vs off-task change | on-task change vs 0 | off-task change vs 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in stats_out["methods"].items():
        for stem, p in s["probes"].items():
            for r in p["per_seed"]:
                g = r["regimes"]
                lines.append(
                    f"| {METHOD_NAMES[method]} | {stem} | {r['seed']} | {r['iterations']} | {pct(g['pre_A'])} | "
                    f"{pct(g['on_A'])} | {pct(g['off_B'])} | {pct(r['on_change'])} | {pct(r['off_change'])} | "
                    f"{p_text(r['paired_t_on_vs_off'])} | {p_text(r['on_change_vs_zero'])} | "
                    f"{p_text(r['off_change_vs_zero'])} |"
                )
    return lines


def across_seeds_markdown(stats_out):
    lines = [
        "### Probe, across seeds (unit: the seed)",
        "",
        "The claim about a method: each seed contributes its mean change; mean of the per-seed means, its "
        "95% t-interval over seeds and a one-sample t-test over seeds. Percentage points.",
        "",
        "| method | probe | seeds | on-task change | off-task change | on − off change |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in stats_out["methods"].items():
        for stem, p in s["probes"].items():
            a = p["across_seeds"]
            if "note" in a:
                lines.append(f"| {METHOD_NAMES[method]} | {stem} | {a['seeds']} | {a['note']} | | |")
                continue
            cells = [f"{pct(a[k])}; {p_text(a[k])}" for k in ("on_change", "off_change", "on_minus_off")]
            lines.append(f"| {METHOD_NAMES[method]} | {stem} | {a['seeds']} | " + " | ".join(cells) + " |")
    return lines


def by_construction(method):
    """For a method whose encoder never adapts (ANIL and its learned-rate variant), what its comparison with
    MAML is: not a result of its own, but MAML's change with the sign flipped."""
    if METHODS[method][1] != "head":
        return None
    return (f"follows from MAML's own change: {METHOD_NAMES[method]}'s encoder does not adapt, so this is minus "
            "MAML's change")  # fmt: skip


def between_methods_markdown(stats_out):
    lines = [
        "### Between methods: each method − MAML on the same task pairs",
        "",
        "Runs with the same seed and probe settings were probed on identical task pairs (checked from the "
        "records), so the difference is paired: per seed over its task pairs, then over seeds. The interaction "
        "is the paper's contrast: is (on-task change − off-task change) different between the methods?",
        "",
        "| method − MAML | probe | seed | off-task change difference (pp) | "
        "interaction: difference of (on − off) (pp) |",
        "|---|---|---|---|---|",
    ]
    for method, by_stem in stats_out["between_methods"].items():
        name = METHOD_NAMES[method]
        for stem, b in by_stem.items():
            for r in b["per_seed"]:
                cells = [f"{pct(r[k])}; {p_text(r[k])}" for k in ("off_difference", "interaction")]
                lines.append(f"| {name} | {stem} | {r['seed']} | " + " | ".join(cells) + " |")
            a = b["across_seeds"]
            if a["note"]:
                lines.append(f"| {name} | {stem} | across seeds | {a['note']} | |")
            else:
                cells = [f"{pct(a[k])}; {p_text(a[k])}" for k in ("off_difference", "interaction")]
                lines.append(f"| {name} | {stem} | across {a['seeds']} seeds | " + " | ".join(cells) + " |")
            lines += [f"| {name} | {stem} | not paired | {why} | |" for why in b["unpaired"]]
            lines += [f"| {name} | {stem} | by construction | {by_construction(method)} | |"] if by_construction(
                method) else []  # fmt: skip
    return lines


def cka_cell(cka):
    """A layer's CKA: mean ± 95% CI half-width, or why it cannot vary."""
    if "note" in cka:
        return f"{cka['mean']:.4g} ({cka['note']})"
    half = f" ± {cka['ci95']:.4f}" if np.isfinite(cka["ci95"]) else ""
    return f"{cka['mean']:.4f}{half}"


def similarity_markdown(stats_out):
    """Each layer's linear CKA before vs after adaptation, per seed (unit: the probe's iterations) and across
    seeds (unit: the seed), on- and off-task; only for probes run with --similarity."""
    header = " | ".join(CKA_LAYERS)
    lines = [
        "### Representation change per layer: linear CKA before vs after adaptation",
        "",
        "`probe.py --similarity`: for each conv block and the head's output, the linear CKA (Kornblith et al. 2019) "
        "between the layer's outputs on the same query images before and after adapting on task A; on-task on "
        "A's queries, off-task on B's. 1 means unchanged up to rotation and scale; lower means more change. Per "
        "seed the mean ± 95% t-interval over the probe's iterations; across seeds over the per-seed means.",
        "",
        f"| method | probe | seed | regime | {header} |",
        "|---|---|---|---|" + "---|" * len(CKA_LAYERS),
    ]
    for method, s in stats_out["methods"].items():
        for stem, p in s["probes"].items():
            rows = [(r["seed"], r["similarity"]) for r in p["per_seed"] if "similarity" in r]
            if "similarity" in p["across_seeds"]:
                rows.append((f"across {p['across_seeds']['similarity_seeds']} seeds", p["across_seeds"]["similarity"]))
            for seed, cka in rows:
                for regime in ("on", "off"):
                    cells = " | ".join(cka_cell(cka[f"cka_{regime}_{layer}"]) for layer in CKA_LAYERS)
                    lines.append(f"| {METHOD_NAMES[method]} | {stem} | {seed} | {regime}-task | {cells} |")
    return lines


def stats_markdown(stats_out):
    queries = sorted(
        {r["queries"] for s in stats_out["methods"].values() for p in s["probes"].values() for r in p["per_seed"]}
        - {None}
    )
    lines = ["## Statistics", "", *accuracy_markdown(stats_out), ""]
    lines += [
        f"Our probe scores {', '.join(map(str, queries)) or '?'} query image(s) per class in each task, where the "
        "paper scores 'an evaluation image'; each iteration's accuracy is then less noisy, so our per-iteration "
        "p-values are not on the paper's scale (`probe.py --queries 1` is). The paper's single p-value, "
        "0.00044, does not state its test.",
        "",
    ]
    lines += per_seed_markdown(stats_out) + [""] + across_seeds_markdown(stats_out) + [""]
    if stats_out["between_methods"]:
        lines += between_methods_markdown(stats_out) + [""]
    if any(
        "similarity" in r for s in stats_out["methods"].values() for p in s["probes"].values() for r in p["per_seed"]
    ):
        lines += similarity_markdown(stats_out) + [""]
    return "\n".join(lines) + "\n"
