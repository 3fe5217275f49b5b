"""The statistics of the study, as pure functions of numbers and records (no files): confidence
intervals, the probe's paired tests, linear CKA, Meta-SGD's rate statistics, and the report's tests per
seed (unit: probe iterations), across seeds (unit: seeds) and between methods (each against MAML, paired
over identical task pairs).
tests/test_stats.py checks them against scipy and hand-worked values.
"""

import math

import numpy as np
import torch

from cli import AnalysisError
from flags import METHOD_NAMES

REGIMES = ("pre_A", "on_A", "pre_B", "off_B", "head_A")  # the probe's five accuracies, per iteration
CKA_LAYERS = ("block1", "block2", "block3", "block4", "head")  # the outputs probe.py --similarity compares
CKA_COLUMNS = tuple(f"cka_{regime}_{layer}" for regime in ("on", "off") for layer in CKA_LAYERS)
PAIR_COLUMNS = ("chunk_seed", "classes_A", "classes_B")  # what identifies a probe iteration's task pair
LAYERS = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "logits"]  # the paper's names, in order
# The probe settings that fix the task pairs: two probes that agree on these drew the same pairs.
PAIRING_SETTINGS = ("split", "iterations", "queries", "off_task", "batch", "seed", "ways", "shots", "data")
ONE_SEED = "one seed: no across-seed claim can be made"
NO_CHANGE = "no change by construction"  # a layer the inner loop never moves (ANIL's encoder): its CKA is exactly 1


def scipy_stats():
    """scipy.stats, imported on first use: importing it takes seconds, and training needs none of it."""
    from scipy import stats

    return stats


# ----------------------------------------------------------------------------------------------
# Intervals, the probe's tests, the rates
# ----------------------------------------------------------------------------------------------


def mean_normal_ci95(values):
    """Mean and half-width of the normal-approximation 95% confidence interval (1.96 sd / sqrt(n)),
    as MAML reports test accuracy. mean_t_ci95 is the Student-t interval."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(unbiased=True) / math.sqrt(values.numel()))


def percent(mean, ci95, unit="task"):
    """'52.10 +- 1.20%', or without an interval where one cannot be had (a single task or iteration)."""
    interval = f" +- {100 * ci95:.2f}%" if ci95 is not None and math.isfinite(ci95) else f"% (one {unit}: no interval)"
    return f"{100 * mean:.2f}{interval}"


def layer_of(name):
    """'conv2.weight' -> 'conv2', 'bn2.bias' -> 'bn2', 'head.*' -> 'logits' (the paper's name)."""
    layer = name.split(".")[0]
    return "logits" if layer == "head" else layer


def rate_statistics(inner_lrs):
    """Rows of statistics of the inner rates, per layer and per parameter tensor: count, mean,
    std (n - 1), fraction negative, min, max. The one implementation behind lr_stats.csv and Table 1."""
    groups = {}
    for name, rate in inner_lrs.items():
        groups.setdefault(("layer", layer_of(name)), []).append(rate.detach().flatten())
        groups[("tensor", name)] = [rate.detach().flatten()]
    rows = []
    for (kind, name), parts in groups.items():
        r = torch.cat(parts).double()
        std = r.std().item() if r.numel() > 1 else 0.0
        negative = (r < 0).double().mean().item()
        rows.append(
            {
                "name": name,
                "kind": kind,
                "count": r.numel(),
                "mean": r.mean().item(),
                "std": std,
                "frac_negative": negative,
                "min": r.min().item(),
                "max": r.max().item(),
            }
        )
    return rows


def linear_cka(x, y):
    """Linear CKA (Kornblith et al. 2019) of representations x [T, n, ...] and y [T, n, ...] of the same n
    examples, for each of T pairs: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the linear kernels
    K = Xc Xc^T, L = Yc Yc^T of the column-centred, flattened features. Through the n x n kernels because a
    conv block has up to a hundred thousand features per example; in float64 whatever the inputs (a TF32
    product would move the third digit). Identical inputs give exactly 1; either one constant over the
    examples gives NaN. Invariant to orthogonal transforms and isotropic scaling."""
    x, y = x.flatten(2).double(), y.flatten(2).double()
    same = (x == y).flatten(1).all(1) if x.shape == y.shape else torch.zeros(len(x), dtype=torch.bool)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    k, l_ = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
    cka = (k * l_).sum((1, 2)) / torch.sqrt((k * k).sum((1, 2)) * (l_ * l_).sum((1, 2)))
    return torch.where(same, torch.ones_like(cka), cka)


def mean_t_ci95(values):
    """Mean and half-width of the Student-t 95% confidence interval (mean_normal_ci95 is the
    normal-approximation one that MAML reports for test accuracy)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return {"mean": float(values.mean()) if n else float("nan"), "ci95": float("nan"), "n": n}
    half = scipy_stats().t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return {"mean": float(values.mean()), "ci95": float(half), "n": n}


def changes(records):
    """Per-iteration on-task change (on_A - pre_A) and off-task change (off_B - pre_B)."""
    on = np.asarray(records["on_A"], dtype=np.float64) - np.asarray(records["pre_A"], dtype=np.float64)
    off = np.asarray(records["off_B"], dtype=np.float64) - np.asarray(records["pre_B"], dtype=np.float64)
    return on, off


def summarize(records):
    """The probe's summary: every regime's mean and 95% CI, both changes, the paired t-test of
    on-task change against off-task change (the paper's p = 0.00044 test) and one-sample t-tests
    of each change against zero; with probe.py --similarity each layer's mean CKA. `records` maps column
    name -> sequence of per-iteration values."""
    on_change, off_change = changes(records)
    sp = scipy_stats()
    return {
        "iterations": len(on_change),
        "regimes": {k: mean_t_ci95(records[k]) for k in REGIMES},
        **({"similarity": {k: mean_t_ci95(records[k]) for k in CKA_COLUMNS}} if CKA_COLUMNS[0] in records else {}),
        "on_change": mean_t_ci95(on_change),
        "off_change": mean_t_ci95(off_change),
        "paired_t_on_vs_off": scipy_test(lambda: sp.ttest_rel(on_change, off_change), on_change - off_change),
        "on_change_vs_zero": scipy_test(lambda: sp.ttest_1samp(on_change, 0.0), on_change),
        "off_change_vs_zero": scipy_test(lambda: sp.ttest_1samp(off_change, 0.0), off_change),
    }


def scipy_test(run, values):
    """`run()`, a scipy t-test of `values` (or of their pairs' differences), as plain numbers; NaN where
    there is nothing to test: fewer than two values, or values that do not vary (scipy would give t = ±inf
    and p = 0 for a constant non-zero sample, and warn)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return {"t": float("nan"), "p": float("nan"), "df": float(len(values) - 1)}
    result = run()
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": float(result.df)}


# ----------------------------------------------------------------------------------------------
# The report: per seed (unit: probe iterations), across seeds (unit: seeds), between methods (paired)
# ----------------------------------------------------------------------------------------------


def across_seeds(values):
    """Mean and std (ddof=1; 0 for one run) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def t_test_of_mean(values, test, unit):
    """Mean, 95% t-interval and one-sample t-test against 0 of `values` (for differences, that is the
    paired t-test), labelled with the test's name, its unit (iterations or seeds) and n."""
    values = np.asarray(values, dtype=np.float64)
    result = {**mean_t_ci95(values), "test": test, "unit": unit, "t": float("nan"), "df": len(values) - 1}
    tested = scipy_test(lambda: scipy_stats().ttest_1samp(values, 0.0), values)
    return {**result, "t": tested["t"], "p": tested["p"]}


def per_seed_probe(run, stem):
    """One seed's probe: summarize's numbers, each test labelled (unit: the probe's iterations)."""
    s = summarize(run["probes"][stem]["records"])
    n = s["iterations"]
    label = {
        "paired_t_on_vs_off": "paired t-test, on- vs off-task change",
        "on_change_vs_zero": "one-sample t-test, on-task change vs 0",
        "off_change_vs_zero": "one-sample t-test, off-task change vs 0",
    }
    on, off = changes(run["probes"][stem]["records"])
    frozen = run["config"].get("inner_params") == "head" and not on.any() and not off.any()
    for key, test in label.items():  # ANIL's encoder never moves: its changes are 0, no test can vary
        s[key].update(test=test, unit="iterations", n=n, **({"note": NO_CHANGE} if frozen else {}))
    for column, cka in s.get("similarity", {}).items():
        if cka["ci95"] == 0 and set(run["probes"][stem]["records"][column]) == {1.0}:
            frozen = run["config"].get("inner_params") == "head" and "_block" in column
            cka["note"] = NO_CHANGE if frozen else "no change: exactly 1 in every iteration"
    queries = run["probes"][stem]["settings"].get("queries")
    seed = run["config"]["seed"] if run["config"]["seed"] is not None else "unknown"  # an imported model's
    return {"seed": seed, "folder": str(run["folder"]), "queries": queries, **s}


def across_seed_tests(per_seed):
    """The claim about a method: each seed contributes its mean change; t-interval and one-sample t-test
    over seeds. With one seed there is no such claim, and the result says so."""
    if len(per_seed) < 2:
        return {"seeds": len(per_seed), "note": ONE_SEED}
    means = {
        "on_change": [s["on_change"]["mean"] for s in per_seed],
        "off_change": [s["off_change"]["mean"] for s in per_seed],
        "on_minus_off": [s["on_change"]["mean"] - s["off_change"]["mean"] for s in per_seed],
    }
    test = "one-sample t-test of the per-seed means vs 0"
    out = {"seeds": len(per_seed), **{k: t_test_of_mean(v, test, "seeds") for k, v in means.items()}}
    if all(s["on_change_vs_zero"].get("note") for s in per_seed):
        for key in means:
            out[key]["note"] = NO_CHANGE
    measured = [s for s in per_seed if "similarity" in s]  # the seeds probed with --similarity
    if len(measured) >= 2:  # each layer's CKA: the t-interval of the per-seed means
        out["similarity"], out["similarity_seeds"] = {}, len(measured)
        for column in CKA_COLUMNS:
            cka = mean_t_ci95([s["similarity"][column]["mean"] for s in measured])
            notes = {s["similarity"][column].get("note") for s in measured}
            out["similarity"][column] = {
                **cka,
                **({"note": notes.pop()} if len(notes) == 1 and None not in notes else {}),
            }
    return out


def method_stats(runs, stems):
    """Test and validation accuracy, and every probe's per-seed and across-seed statistics, of one method."""
    m = {"runs": len(runs), "probes": {}}
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
        per_seed = [per_seed_probe(r, stem) for r in runs if stem in r["probes"]]
        if per_seed:
            m["probes"][stem] = {"per_seed": per_seed, "across_seeds": across_seed_tests(per_seed)}
    return m


def same_task_pairs(maml_run, other_run, stem):
    """Whether the two runs' probes can be paired: None if so, else why not. Same settings must mean the
    same task pairs; records that say otherwise are refused (AnalysisError), never paired."""
    a, b = maml_run["probes"][stem], other_run["probes"][stem]
    differ = [k for k in PAIRING_SETTINGS if a["settings"].get(k) != b["settings"].get(k)]
    if differ:
        return f"probed with different settings ({', '.join(differ)}), so on different task pairs"
    for key in PAIR_COLUMNS:
        if a["records"][key] != b["records"][key]:
            i = next((i for i, (x, y) in enumerate(zip(a["records"][key], b["records"][key])) if x != y), None)
            where = f"at iteration {i}" if i is not None else "in length"
            raise AnalysisError(
                f"{stem}: the MAML and {METHOD_NAMES[other_run['method']]} probes of seed {maml_run['config']['seed']} "
                f"have the same settings "
                f"but different task pairs ({key} differs {where}); probe both again with the same flags"
            )
    return None


def between_methods(by_method, stem, method="metasgd"):
    """`method` − MAML on the same task pairs: the off-task change, and the interaction (on − off change),
    as paired t-tests over a seed's task pairs, then over seeds."""
    runs = {m: {r["config"]["seed"]: r for r in by_method[m] if stem in r["probes"]} for m in ("maml", method)}
    per_seed, unpaired = [], []
    for seed in sorted(set(runs["maml"]) & set(runs[method])):
        why_not = same_task_pairs(runs["maml"][seed], runs[method][seed], stem)
        if why_not:
            unpaired.append(f"seed {seed}: {why_not}")
            continue
        (on_m, off_m), (on_s, off_s) = (changes(runs[m][seed]["probes"][stem]["records"]) for m in ("maml", method))
        test = f"paired t-test over task pairs, {METHOD_NAMES[method]} − MAML"
        per_seed.append(
            {
                "seed": seed,
                "off_difference": {
                    **t_test_of_mean(off_s - off_m, test, "iterations"),
                    "scipy_ttest_rel_p": scipy_test(
                        lambda a=off_s, b=off_m: scipy_stats().ttest_rel(a, b), off_s - off_m
                    )["p"],
                },
                "interaction": t_test_of_mean((on_s - off_s) - (on_m - off_m), test, "iterations"),
            }
        )
    unpaired += [f"seed {s}: probed with one method only" for s in sorted(set(runs["maml"]) ^ set(runs[method]))]
    across = {"seeds": len(per_seed), "note": ONE_SEED if len(per_seed) < 2 else None}
    if len(per_seed) >= 2:
        test = "one-sample t-test of the per-seed mean differences vs 0"
        for key in ("off_difference", "interaction"):
            across[key] = t_test_of_mean([s[key]["mean"] for s in per_seed], test, "seeds")
    return {"per_seed": per_seed, "across_seeds": across, "unpaired": unpaired}


def compute_stats(by_method):
    """Every test the report shows, as plain numbers; between methods, each method against MAML."""
    for method, runs in by_method.items():
        seeds = [r["config"]["seed"] for r in runs]
        if len(set(seeds)) < len(seeds):
            raise AnalysisError(f"two {METHOD_NAMES[method]} runs have the same seed ({seeds}); give one run per seed")
    stems = sorted({s for runs in by_method.values() for r in runs for s in r["probes"]})
    out = {"methods": {m: method_stats(runs, stems) for m, runs in by_method.items()}, "between_methods": {}}
    for method in [m for m in by_method if m != "maml"] if "maml" in by_method else []:
        out["between_methods"][method] = {stem: between_methods(by_method, stem, method) for stem in stems}
    return out


def figure_numbers(probe_stats):
    """Each regime's and change's mean and 95% CI for a figure: over seeds (t-interval of the per-seed
    means) when there are several, else the one seed's per-iteration interval."""
    per_seed = probe_stats["per_seed"]
    if len(per_seed) == 1:
        return {
            **per_seed[0]["regimes"],
            "on_change": per_seed[0]["on_change"],
            "off_change": per_seed[0]["off_change"],
        }
    keys = ["pre_A", "on_A", "off_B"]
    out = {k: mean_t_ci95([s["regimes"][k]["mean"] for s in per_seed]) for k in keys}
    for k in ("on_change", "off_change"):
        out[k] = mean_t_ci95([s[k]["mean"] for s in per_seed])
    return out
