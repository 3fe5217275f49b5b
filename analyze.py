"""The paper's tables, figures and t-tests from finished runs, side by side with the paper's numbers.

    python analyze.py runs/maml runs/metasgd [more runs: seeds, ANIL, BOIL ...] --out report/

Reads only files on disk, from each run folder (or checkpoint path): the checkpoint (config), the
checkpoint the probe used (its learned rates make Table 1), metrics.csv, lr_stats.csv, test.json and
the probe records probe*.csv; it never imports the training script. The statistics (stats.py) fit the
design: per seed, over that seed's probe iterations;
across seeds, over the per-seed means (the unit of a claim about a method); between methods, paired
over the identical task pairs that runs of one seed were probed on, then over seeds. Writes into --out:
table1_learned_rates.{md,csv}, fig5_training.png, fig6_learned_rates.png, fig6_rates_over_training.png,
fig7_probe.png, fig_cka_per_layer.png (probes run with --similarity), stats.{md,json} and report.md, which
holds everything on one page. Every method (MAML, Meta-SGD, ANIL, BOIL) has its rows, each against MAML.
"""

import contextlib
import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

import cli
import figures
import flags
import run_folder
import stats
from cli import AnalysisError
from flags import ADAPTS, METHOD_NAMES
from stats import LAYERS, ONE_SEED
from stats_md import by_construction, fmt, p_text, stats_markdown

PAPER_TABLE1 = {
    "conv1": ("-0.006", "0.032"),
    "conv2": ("-0.004", "0.027"),
    "conv3": ("-0.013", "0.027"),
    "conv4": ("-0.018", "0.030"),
    "logits": ("0.043", "0.072"),
}


# ----------------------------------------------------------------------------------------------
# Which runs belong together
# ----------------------------------------------------------------------------------------------


def settings_groups(runs):
    """The runs, in groups whose every result-changing setting agrees (Meta-SGD's --lr-init-range aside
    for MAML runs): ({label: runs}, the flags of the settings that separate them), each label naming those
    settings' values ('' for one group)."""

    def settings(run):  # the data by what it holds when the checkpoint says so: a moved folder is the same data
        data = run.get("data_identity") or run["config"]["data"] or run["config"]["data_name"]
        imported = run.get("imported")  # an imported model is a study of its own: its source file names it
        source = {"imported": f"{imported['format']} {imported['sources'][0]['sha256'][:12]}"} if imported else {}
        return {**flags.study_settings(run["config"]), "data": data, **source}

    keys = [json.dumps(settings(r), sort_keys=True, default=str) for r in runs]
    if len(set(keys)) == 1:
        return {"": runs}, []
    varying = sorted({k for r in runs for k, v in settings(r).items() if any(settings(o).get(k) != v for o in runs)})
    groups = {}
    for run in runs:
        values = [run["config"].get(k, settings(run).get(k)) for k in varying]
        label = ", ".join(f"--{k.replace('_', '-')} {as_typed(v)}" for k, v in zip(varying, values))
        groups.setdefault(label, []).append(run)
    return groups, [f"--{k.replace('_', '-')}" for k in varying]


def as_typed(value):
    """A setting's value as the command line takes it: a list's items separated by spaces (--lr-init-range
    -0.02 0.05), not Python's '[-0.02, 0.05]', whose comma would read as the end of the setting."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else value


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
        key = json.dumps(flags.result_settings(run["config"]), sort_keys=True, default=str)
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
# Table 1: the learned rates
# ----------------------------------------------------------------------------------------------


def table1_row_names(layer):
    """Table 1's rows of a layer: its weights (for BatchNorm, the scale), then its bias (BatchNorm's shift)."""
    return [layer, f"{layer} bias"]


def rate_table(rates):
    """Table 1's numbers (count, mean, std, fraction negative, min, max) per row: each layer's weights,
    and its bias on a row of its own, as stats.rate_statistics computes them per parameter tensor. A conv
    bias sits before batch-statistics BatchNorm, so its rates only see rounding noise: kept apart, they
    cannot dilute the weights' row. `rates` maps parameter name -> array."""
    rows = stats.rate_statistics({n: torch.from_numpy(np.asarray(r)) for n, r in rates.items()})
    table = {}
    for row in rows:
        if row["kind"] == "tensor":
            layer, kind = stats.layer_of(row["name"]), row["name"].split(".", 1)[1]
            table[layer if kind == "weight" else f"{layer} bias"] = row
    order = [name for layer in LAYERS for name in table1_row_names(layer)]
    return {name: table[name] for name in order if name in table}


def table1_caption(runs):
    """Which checkpoint's rates Table 1 shows, per run: the one its probe used."""
    sources = sorted({(r["table1"]["checkpoint"], r["table1"]["why"]) for r in runs})
    where = "; ".join(f"{name} ({why})" for name, why in sources)
    iterations = ", ".join(
        f"seed {r['config']['seed']}: iteration {r['table1']['iteration']}" if not r["imported"] else "imported"
        for r in runs
    )
    seeds = f"{len(runs)} run{'s' if len(runs) > 1 else ''}" + (", mean ± sd across seeds" if len(runs) > 1 else "")
    return (
        f"Learned inner-loop rates of {METHOD_NAMES[runs[0]['method']]} ({seeds}), from {where} [{iterations}]; "
        "the paper's Table 1 (Meta-SGD) "
        "beside. Layer rows are the weights only (BatchNorm: its scale); each bias (BatchNorm: its shift) has "
        "the row beside it. A conv bias is followed by batch-statistics BatchNorm, so its rates receive only "
        "rounding noise and stay near their initial value."
    )


TABLE1_COLUMNS = ["layer", "count", "mean", "mean_seed_std", "std", "frac_negative", "min", "max", "paper_mean",
                  "paper_std", "runs", "checkpoints"]  # fmt: skip


def write_table1(runs, out, stem="table1_learned_rates"):
    """Table 1 for the runs of one learned-rate method (Meta-SGD's is the paper's), from the checkpoint each
    run's probe used: across seeds, mean ± sd of each statistic; only the rates that exist (ANIL with
    --learn-lr has the head's). Written as `stem`.csv and .md; returns its rows."""
    runs = [r for r in runs if r["table1"]]
    tables = [rate_table(r["table1"]["rates"]) for r in runs]
    if not tables:
        return None
    rows = []
    for name in [n for n in tables[0] if all(n in t for t in tables)]:  # runs with and without conv biases
        row = {"layer": name, "runs": len(tables)}
        for key in ("mean", "std", "frac_negative", "min", "max", "count"):
            row[key] = stats.across_seeds([t[name][key] for t in tables])
        rows.append(row)
    checkpoints = " ".join(f"{r['table1']['path']}@{r['table1']['iteration']}" for r in runs)
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(TABLE1_COLUMNS)
    for r in rows:
        numbers = [r["mean"][0], r["mean"][1], r["std"][0], r["frac_negative"][0], r["min"][0], r["max"][0]]
        w.writerow([r["layer"], int(r["count"][0]), *numbers, *PAPER_TABLE1.get(r["layer"], ("", "")), len(tables),
                    checkpoints])  # fmt: skip
    write_files(out, {f"{stem}.csv": table.getvalue(), f"{stem}.md": table1_markdown(rows, runs)})
    return rows


def other_rate_tables(by_method, out):
    """Table 1's statistics for the learned rates of every method but Meta-SGD that learns them (ANIL and BOIL
    run with --learn-lr): report parts, files."""
    parts, written = [], []
    for method in (m for m, (_, _, learned) in flags.METHODS.items() if learned and m != "metasgd"):
        name = f"table1_learned_rates_{method}"
        if write_table1(by_method.get(method, []), out, name):
            written += [f"{name}.csv", f"{name}.md"]
            parts += [f"## Learned inner rates of {METHOD_NAMES[method]}", "", (out / f"{name}.md").read_text(), ""]
    return parts, written


def table1_markdown(rows, runs):
    lines = [
        table1_caption(runs),
        "",
        "| row | entries | mean | std | fraction negative | min | max | paper mean | paper std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER_TABLE1.get(r["layer"], ("—", "—"))
        lines.append(
            f"| {r['layer']} | {int(r['count'][0])} | {fmt(r['mean'], digits=4)} | {fmt(r['std'], digits=4)} | "
            f"{fmt(r['frac_negative'], digits=3)} | {fmt(r['min'], digits=4)} | {fmt(r['max'], digits=4)} | "
            f"{paper[0]} | {paper[1]} |"
        )
    return "\n".join(lines) + "\n"


def ours_change(probe_stats, key):
    """A change for the comparison table: over seeds when there are several, else the one seed's."""
    if probe_stats is None:
        return "not measured"
    a, per_seed = probe_stats["across_seeds"], probe_stats["per_seed"]
    if "note" in a:
        return f"{100 * per_seed[0][key]['mean']:+.2f} pp (seed {per_seed[0]['seed']}; {a['note']})"
    return f"{100 * a[key]['mean']:+.2f} ± {100 * a[key]['ci95']:.2f} pp (mean over {a['seeds']} seeds, 95% t-CI)"


def ours_p(per_seed_tests, across_test, note):
    """Our p-values beside the paper's one: the across-seed test, or each seed's with the one-seed note."""
    if across_test is not None:
        return p_text(across_test)
    return "; ".join(f"seed {seed}: {p_text(t)}" for seed, t in per_seed_tests) + f"; {note}"


def comparison_table(by_method, stats_out, table1_rows):
    def ours_val(method):
        s = stats_out["methods"].get(method, {})
        return fmt(s["best_val_acc"]["mean_std"], 100, 1) + "%" if "best_val_acc" in s else "not measured"

    def ours_test(method):
        s = stats_out["methods"].get(method, {})
        return fmt(s["test_acc"]["mean_std"], 100, 1) + "% (test)" if "test_acc" in s else "not measured"

    probes = {m: stats_out["methods"].get(m, {}).get("probes", {}).get("probe") for m in ("maml", "metasgd")}
    lines = [
        "| quantity | paper | ours |",
        "|---|---|---|",
        f"| MAML validation accuracy | ~46% | {ours_val('maml')} (best) |",
        f"| Meta-SGD validation accuracy | ~47% | {ours_val('metasgd')} (best) |",
        f"| MAML, original paper (test) | 48.7% | {ours_test('maml')} |",
        f"| Meta-SGD, original paper (test) | 50.5% | {ours_test('metasgd')} |",
    ]
    by_layer = {r["layer"]: r for r in (table1_rows or [])}
    n_seeds = by_layer and next(iter(by_layer.values()))["runs"]
    for layer, (mean, std) in PAPER_TABLE1.items():
        r = by_layer.get(layer)
        ours = f"{fmt(r['mean'], digits=4)} / {fmt(r['std'], digits=4)}" if r else "not measured"
        seeds = f" (mean ± sd over {n_seeds} seed{'' if n_seeds == 1 else 's'})" if n_seeds else ""
        label = f"Table 1 {layer} weights: rate mean / std{seeds}"
        lines.append(f"| {label} | {mean} / {std} | {ours} |")
    lines += [
        f"| Meta-SGD off-task change | +0.2 pp | {ours_change(probes['metasgd'], 'off_change')} |",
        f"| MAML off-task change | −0.3 pp | {ours_change(probes['maml'], 'off_change')} |",
    ]
    paper_p = "0.00044 (one p-value for the study; its test is not stated)"
    for method, p in probes.items():
        ours = "not measured"
        if p:
            per_seed = [(s["seed"], s["paired_t_on_vs_off"]) for s in p["per_seed"]]
            ours = ours_p(per_seed, p["across_seeds"].get("on_minus_off"), ONE_SEED)
        lines.append(f"| {METHOD_NAMES[method]}: on- vs off-task change | {paper_p} | {ours} |")
    b = stats_out["between_methods"].get("metasgd", {}).get("probe")
    ours = "not measured"
    if b and b["per_seed"]:
        per_seed = [(s["seed"], s["interaction"]) for s in b["per_seed"]]
        ours = ours_p(per_seed, b["across_seeds"].get("interaction"), ONE_SEED)
    lines.append(f"| interaction: (on − off change), Meta-SGD − MAML | {paper_p} | {ours} |")
    return "\n".join(lines + beside_the_paper(stats_out)) + "\n"


def beside_the_paper(stats_out):
    """The paper's claim is Meta-SGD − MAML in off-task change; the other methods' rows on the same axis:
    each one's off-task change, and (with MAML runs) its paired difference from MAML's."""
    lines = []
    for method, numbers in stats_out["methods"].items():
        if method not in ("maml", "metasgd"):
            probe = numbers["probes"].get("probe")
            frozen = probe and probe["per_seed"][0]["off_change_vs_zero"].get("note")
            ours = ours_change(probe, "off_change") + (f" ({frozen})" if frozen else "")
            lines.append(f"| {METHOD_NAMES[method]} off-task change | not in the paper | {ours} |")
        b, ours = stats_out["between_methods"].get(method, {}).get("probe"), "not measured"
        if b and b["per_seed"]:
            per_seed = [(s["seed"], s["off_difference"]) for s in b["per_seed"]]
            ours = ours_p(per_seed, b["across_seeds"].get("off_difference"), ONE_SEED)
        ours += f" ({by_construction(method)})" if by_construction(method) else ""
        if method in stats_out["between_methods"]:
            lines.append(f"| off-task change, {METHOD_NAMES[method]} − MAML (paired) | not in the paper | {ours} |")
    return lines


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def data_label(config):
    """The data a run trained on, with the Omniglot split and rotations where they apply."""
    if not config["data"]:
        return config["data_name"] or "synthetic glyphs"  # a name: an imported model's dataset, not fetched yet
    if config["omniglot_split"]:
        rotations = "rotations as classes" if config["rotations"] else "no rotations"
        return f"{config['data']} (Omniglot, {config['omniglot_split']} split, {rotations})"
    return str(config["data"])


def provenance(runs):
    lines = [
        "| run | method | inner loop adapts | data | iterations | seed | image size | channels | filters | "
        "conv biases | meta-gradient clipping | Table 1 rates from | probe files |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["config"]
        clip = f"to ±{c['clip_grad']:g}" if c["clip_grad"] else "off"
        rates_from = f"{r['table1']['checkpoint']} (iteration {r['table1']['iteration']})" if r["table1"] else "—"
        trained = f"{r['iteration']} of {c['iterations']}" if not r["imported"] else "imported (see below)"
        lines.append(
            f"| {r['folder']} | {METHOD_NAMES[r['method']]} | {ADAPTS[c['inner_params']]} | {data_label(c)} | "
            f"{trained} | {'unknown' if c['seed'] is None else c['seed']} | {c['image_size']} | {c['channels']} | "
            f"{c['hidden']} | "
            f"{'yes' if c['conv_bias'] else 'no'} | {clip} | {rates_from} | "
            f"{', '.join(r['probes']) or 'none'} |"
        )
    return "\n".join(lines) + "\n" + imported_models(runs)


def imported_models(runs):
    """The runs table's second part: what import_model.py read and recorded of each model trained elsewhere."""
    imported = [r for r in runs if r["imported"]]
    if not imported:
        return ""
    lines = ["", "Models trained elsewhere (import_model.py):", "",
             "| run | format | source (SHA-256) | input | batch norm eps | inner rate | steps (training, test) | "
             "queries per class at test |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in imported:
        c, i = r["config"], r["imported"]
        sources = "; ".join(f"{Path(s['file']).name} ({s['sha256'][:16]}…)" for s in i["sources"])
        rate = "learned (Meta-SGD)" if c["learn_lr"] else f"{c['inner_lr']:g} on the mean loss"
        rate += (
            f" ({i['inner_lr']:g} on its code's loss)" if not c["learn_lr"] and i["inner_lr"] != c["inner_lr"] else ""
        )
        lines.append(f"| {r['folder']} | {i['format']} | {sources} | {i['scaling']} | {c['bn_eps']:g} | {rate} | "
                     f"{c['inner_steps']}, {c['eval_steps']} | {c['eval_queries']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def report_notes(runs, by_method):
    """What the report lacks (missing inputs) and what its reader must know first (warnings)."""
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
        if not run["metrics"] and not run["imported"]:
            missing.append(f"{run['folder']} has no metrics.csv (or no rows in it): its training curve is left out")
        if run["test"] is None and run["imported"]:
            missing.append(f"{run['folder']} has no test.json: `python evaluate.py {run['folder']}/best.pt` writes it")
        elif run["test"] is None:
            missing.append(f"{run['folder']} has no test.json (training did not finish)")
    return missing, data_warnings(runs) + length_warnings(runs)


def data_warnings(runs):
    """What the reader must know about the data before the paper's Mini-ImageNet numbers beside ours."""
    synthetic = [str(r["folder"]) for r in runs if not (r["config"]["data"] or r["config"]["data_name"])]
    omniglot = [str(r["folder"]) for r in runs if r["config"]["omniglot_split"]]
    warnings = []
    if synthetic and len(synthetic) == len(runs):
        warnings.append(
            "**These numbers come from the built-in synthetic dataset, not Mini-ImageNet**: they show the "
            "pipeline works, and cannot confirm or refute the paper."
        )
    elif synthetic:
        warnings.append(
            f"**Some runs come from the built-in synthetic dataset** ({', '.join(synthetic)}), the others from real "
            "data: numbers pooled over both say nothing about either."
        )
    if omniglot:
        warnings.append(
            f"**Omniglot, not Mini-ImageNet** ({', '.join(omniglot)}): the paper's numbers beside ours are "
            "Mini-ImageNet's, so the two columns are not comparable."
        )
    return warnings


def length_warnings(runs):
    """Runs and probes shorter than the paper's, and probes that did not finish."""
    warnings = []
    trained = [r for r in runs if not r["imported"]]  # an imported model's training is its authors'
    if any(r["iteration"] < 60000 for r in trained):
        warnings.append(
            f"**Short runs**: {', '.join(str(r['iteration']) for r in trained)} meta-iterations, against the "
            f"paper's 60,000."
        )
    for run in runs:
        for stem, p in run["probes"].items():
            n, planned = len(p["records"]["pre_A"]), p["settings"].get("iterations", 0)
            if n < planned:
                warnings.append(
                    f"**Unfinished probe** {run['folder']}/{stem}.csv: {n} of its {planned} iterations (continue it "
                    f"with the same `probe.py` command and --resume)."
                )
            if stem == "probe" and n < 40000:
                warnings.append(f"Probe of {run['folder']}: {n} iterations, against the paper's 40,000.")
    return warnings


def analyze(paths, out):
    """Read and check every run, then write the report into `out` (locked: one report at a time): one report,
    or where the runs are not seeds of one group (another architecture, dataset, ...), one report per group in
    a folder of its own and an index naming the settings that separate them. Files of an earlier report that
    this one does not write are removed, so the folder holds one report. Returns the path of report.md."""
    runs = [run_folder.load_run(p) for p in paths]
    if not runs:
        raise AnalysisError("give at least one run folder")
    check_compatible(runs)
    out = Path(out)
    with cli.lock_outputs(out, "report.lock", "a report"):
        earlier = report_files(out)
        for folder in [out, *(p for p in sorted(out.glob("group*")) if p.is_dir())]:
            cli.note_removed(cli.remove_stale_temporaries(folder), folder, "a killed report")
        (groups, settings) = settings_groups(runs)
        if len(groups) == 1:
            write_report(runs, out)
        else:
            write_groups(groups, settings, out)
        remove_earlier(out, earlier - report_files(out, by_name=False))
    return out / "report.md"


def write_groups(groups, settings, out):
    differ = f"These runs are not seeds of one study: they differ in {', '.join(settings)}."
    lines = ["# Report: runs in groups", "", differ, "Each group has its own report:", ""]
    for number, (label, group) in enumerate(groups.items(), 1):
        write_report(group, out / f"group{number}", label)
        lines.append(f"- [{label}](group{number}/report.md): {', '.join(str(r['folder']) for r in group)}")
    write_files(out, {"report.md": "\n".join(lines) + "\n"})
    finish_report(out, ["report.md", *(f"group{n}/manifest.json" for n in range(1, len(groups) + 1))])


REPORT_NAMES = ("report.md", "stats.md", "stats.json", "fig*.png", "table1_learned_rates*.*")  # what analyze writes


def report_files(out, by_name=True):
    """The files of the report in `out` (paths relative to it): those its manifest names, and those the group
    manifests it names name; `by_name` also any file named as analyze.py names its files and every group
    folder's manifest (what an earlier report may have left)."""
    names = {str(p.relative_to(out)) for pattern in REPORT_NAMES * by_name for p in out.glob(pattern) if p.is_file()}
    groups = [str(p.relative_to(out)) for p in sorted(out.glob("group*/manifest.json"))] if by_name else []
    manifests = ["manifest.json", *groups]
    for manifest in manifests:  # grows by the group manifests each names
        try:
            listed = json.loads((out / manifest).read_text()) if (out / manifest).is_file() else {}
        except (OSError, ValueError):
            listed = {}
        where = Path(manifest).parent
        names |= {manifest} | {str(where / name) for name in listed if isinstance(name, str)}
        manifests += [
            str(where / n) for n in listed if Path(n).name == "manifest.json" and str(where / n) not in manifests
        ]
    return {name for name in names if (out / name).is_file()}


def remove_earlier(out, names):
    """Remove an earlier report's files that the new one did not write (and group folders left empty)."""
    for name in sorted(names):
        (out / name).unlink(missing_ok=True)
    for folder in {(out / name).parent for name in names} - {out}:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    if names:
        shown = ", ".join(sorted(names))
        print(f"removed {len(names)} file(s) of an earlier report in {cli.printable(str(out))}: {shown}")


def write_files(out, texts):
    """Write report files through the one atomic writer (a full disk or a kill leaves each file whole,
    old or new), then manifest.json, last, with every file's SHA-256: a report without a manifest that
    matches is an unfinished one. A name that is not UTF-8 (a run's folder) is written escaped. Returns
    {name: path}."""
    (out / "manifest.json").unlink(missing_ok=True)
    for name, text in texts.items():
        cli.atomic_write(out / name, lambda tmp, text=text: tmp.write_text(cli.printable(text), encoding="utf-8"))
    return {name: out / name for name in texts}


def finish_report(out, names):
    """The manifest of a report whose files are all written (see `write_files`)."""
    digest = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in sorted(names)}
    cli.atomic_write(out / "manifest.json", lambda tmp: tmp.write_text(cli.json_text(digest)))


def unfinished_report(out):
    """Whether `out` holds a report that was not finished (no manifest, or files that differ from it)."""
    manifest = out / "manifest.json"
    if not manifest.exists() and not any(p.suffix in (".md", ".json", ".csv", ".png") for p in out.glob("*.*")):
        return False
    try:
        digest = json.loads(manifest.read_text())
        return any(hashlib.sha256((out / n).read_bytes()).hexdigest() != h for n, h in digest.items())
    except (OSError, ValueError):
        return True


def write_report(runs, out, group=""):
    """The report of `runs` (seeds of one group; `group` names its settings when there are several) in
    `out`: statistics, Table 1, the figures and report.md, then the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    if unfinished_report(out):
        print(f"note: {out} held an unfinished report (a kill or a full disk while it was written); it is written anew")
    by_method = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    by_method = {m: by_method[m] for m in METHOD_NAMES if m in by_method}
    stats_out = stats.compute_stats(by_method)
    write_files(out, {"stats.json": cli.json_text(stats_out), "stats.md": stats_markdown(stats_out)})
    table1 = write_table1(by_method.get("metasgd", []), out)
    trained_here = not all(run["imported"] for run in runs)  # an imported model has no training curve
    figures.fig5(runs, out) if trained_here else None
    written = ["stats.json", "stats.md", "report.md"] + (["fig5_training.png"] if trained_here else [])
    written += ["table1_learned_rates.csv", "table1_learned_rates.md"] if table1 else []
    fig6 = figures.fig6(by_method.get("metasgd", []), out)
    written += ["fig6_learned_rates.png", "fig6_rates_over_training.png"] if fig6 else []
    other_tables, other_files = other_rate_tables(by_method, out)
    written += other_files
    written += ["fig7_probe.png"] if figures.fig7(stats_out, out) else []
    written += ["fig_cka_per_layer.png"] if figures.fig_cka(stats_out, out) else []
    parts = report_head(runs, by_method, group) + [
        "## The paper's numbers beside ours", "", comparison_table(by_method, stats_out, table1),
        "## Runs", "", provenance(runs), "## Figure 5: training", "",
        "![Figure 5](fig5_training.png)" if trained_here else "No training curves: every model here was imported.", "",
    ]  # fmt: skip
    if table1:
        parts += ["## Table 1: learned inner rates", "", (out / "table1_learned_rates.md").read_text(), ""]
    parts += other_tables
    if "fig6_learned_rates.png" in written:
        figure6 = ["![Figure 6](fig6_learned_rates.png)", "", "![Figure 6b](fig6_rates_over_training.png)", ""]
        parts += ["## Figure 6: learned rates", "", *figure6]
    if "fig7_probe.png" in written:
        parts += ["## Figure 7: embedding probe", "", "![Figure 7](fig7_probe.png)", ""]
    if "fig_cka_per_layer.png" in written:
        parts += ["## Representation change per layer (linear CKA)", "", "![CKA](fig_cka_per_layer.png)", ""]
    write_files(out, {"report.md": "\n".join([*parts, stats_markdown(stats_out)])})
    finish_report(out, written)
    return out / "report.md"


def report_head(runs, by_method, group):
    """The report's title, its group, the warnings a reader needs first and what is missing."""
    missing, warnings = report_notes(runs, by_method)
    c = runs[0]["config"]
    parts = [f"# Report: negative inner-loop learning rates ({c['ways']}-way {c['shots']}-shot)", ""]
    parts += [f"The runs of one group of several: {group}.", ""] if group else []
    parts += [f"> {w}" for w in warnings] + ([""] if warnings else [])
    return parts + (["Missing:", ""] + [f"- {m}" for m in missing] + [""] if missing else [])


def main(argv=None):
    p = cli.argument_parser(
        "Write the paper's tables, figures and t-tests for finished runs, beside the paper's numbers, into one report."
    )
    p.add_argument("runs", nargs="+", help="run folders (or checkpoints) written by maml.py, probed by probe.py")
    p.add_argument("--out", type=cli.folder_name, default="report", help="folder for the report, tables and figures")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = p.parse_args(argv)
    report = analyze(args.runs, args.out)
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    cli.run_cli(main)
