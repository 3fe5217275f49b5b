"""analyze.py against numbers worked out independently from the same hand-made run folders."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import analyze
import figures
import maml
import probe
from conftest import ROOT, read_csv, tiny_flags
from logs import PROBE_COLUMNS
from run_folder import PROGRAM
from stats import CKA_COLUMNS, NO_CHANGE, REGIMES

PARAM_SHAPES = {
    "conv1.weight": (4, 3, 3, 3),
    "conv1.bias": (4,),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "conv2.weight": (4, 4, 3, 3),
    "conv2.bias": (4,),
    "bn2.weight": (4,),
    "bn2.bias": (4,),
    "conv3.weight": (4, 4, 3, 3),
    "conv3.bias": (4,),
    "bn3.weight": (4,),
    "bn3.bias": (4,),
    "conv4.weight": (4, 4, 3, 3),
    "conv4.bias": (4,),
    "bn4.weight": (4,),
    "bn4.bias": (4,),
    "head.weight": (5, 4),
    "head.bias": (5,),
}


def random_rates(rng):
    return {n: torch.tensor(rng.normal(-0.01, 0.03, s)) for n, s in PARAM_SHAPES.items()}


def write_checkpoint(path, config, rates, iteration):
    params = {n: torch.zeros(s) for n, s in PARAM_SHAPES.items()}
    ckpt = {"program": PROGRAM, "config": config, "params": params, "inner_lrs": rates, "iteration": iteration}
    torch.save(ckpt, path)


def task_pair_columns(seed, i):
    """The records' task-pair columns of iteration i of a probe of seed `seed` (the same for both methods)."""
    classes_a = " ".join(str((seed + i + k) % 20) for k in range(5))
    return [i // 8, classes_a, " ".join(str((seed + i + k) % 20) for k in range(5, 10))]


def write_probe(folder, method, seed, n=50, probe_seed=0, queries=15):
    """probe.csv and probe.json as probe.py writes them, with made-up accuracies: a method-specific shift
    of the off-task change, and noise that differs between methods on the same task pairs."""
    prng = np.random.default_rng(100 + 7 * seed + probe_seed + (50 if method == "metasgd" else 0))
    pre_a, pre_b = prng.uniform(0.3, 0.7, n), prng.uniform(0.3, 0.7, n)
    shift = 0.01 if method == "metasgd" else -0.01
    records = {
        "pre_A": pre_a,
        "on_A": pre_a + prng.normal(-0.01, 0.02, n),
        "pre_B": pre_b,
        "off_B": pre_b + prng.normal(shift, 0.02, n),
        "head_A": prng.uniform(0, 1, n),
    }
    with open(folder / "probe.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROBE_COLUMNS)
        for i in range(n):
            pair = task_pair_columns(seed, i)
            w.writerow([i, i // 8, pair[0], *(repr(float(records[k][i])) for k in REGIMES), *pair[1:]])
    settings = {"checkpoint": str(folder / "best.pt"), "checkpoint_file": "best.pt", "method": method,
                "split": "test", "iterations": n, "queries": queries, "off_task": "disjoint", "rates": "learned",
                "inner_lr": None, "steps": 5, "batch": 8, "seed": probe_seed, "ways": 5, "shots": 1,
                "checkpoint_iteration": 50, "data": "synthetic"}  # fmt: skip
    (folder / "probe.json").write_text(json.dumps({"settings": settings}))
    return records


def make_run(folder, method, seed, ways=5, shots=1, probe_seed=0, with_probe=True, iterations=100, **config_extra):
    """A finished run as maml.py and probe.py leave it: ckpt.pt at `iterations`, best.pt at 50 with other
    rates (the probe used best.pt), metrics, lr_stats, test.json and a probe."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    config = {"learn_lr": method == "metasgd", "ways": ways, "shots": shots, "seed": seed, "data": None,
              "iterations": iterations, "image_size": 16, "hidden": 4, **config_extra}  # fmt: skip
    rates = random_rates(rng) if method == "metasgd" else 0.01
    best_rates = random_rates(rng) if method == "metasgd" else 0.01
    write_checkpoint(folder / "ckpt.pt", config, rates, iterations)
    write_checkpoint(folder / "best.pt", config, best_rates, 50)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s"])
        w.writerow([0, "", "", 0.2, 0.01, 0])
        w.writerow([50, 1.2, 0.4, 0.45 + 0.01 * seed, 0.01, 5])
        w.writerow([100, 1.0, 0.5, 0.40 + 0.01 * seed, 0.01, 10])
    if method == "metasgd":
        with open(folder / "lr_stats.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", "name", "kind", "count", "mean", "std", "frac_negative", "min", "max"])
            for it in (0, 50, 100):
                for layer in analyze.LAYERS:
                    w.writerow([it, layer, "layer", 10, 0.01 - 0.0002 * it, 0.01, it / 200, -0.1, 0.1])
    (folder / "test.json").write_text(json.dumps({"test_acc": 0.4 + 0.01 * seed, "test_ci95": 0.02, "tasks": 600}))
    records = write_probe(folder, method, seed, probe_seed=probe_seed) if with_probe else None
    return {"rates": rates, "best_rates": best_rates, "records": records}


SEEDS = (0, 1, 2)


@pytest.fixture
def runs(tmp_path):
    made = {}
    for method in ("maml", "metasgd"):
        for seed in SEEDS:
            made[(method, seed)] = make_run(tmp_path / f"{method}{seed}", method, seed)
    return tmp_path, made


def all_runs(root, seeds=SEEDS):
    return [root / f"{m}{s}" for m in ("maml", "metasgd") for s in seeds]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The runs of `runs` and, made once for the tests that only read them, their report (`report/`) and the
    report of seed 0 alone (`report-seed0/`)."""
    root = tmp_path_factory.mktemp("reported")
    made = {(m, s): make_run(root / f"{m}{s}", m, s) for m in ("maml", "metasgd") for s in SEEDS}
    analyze.analyze(all_runs(root), root / "report")
    analyze.analyze([root / "maml0", root / "metasgd0"], root / "report-seed0")
    return root, made


def test_table1_comes_from_the_probed_checkpoint_with_weight_and_bias_rows(runs, tmp_path):
    root, made = runs
    analyze.analyze([root / "maml0", root / "metasgd0", root / "metasgd1"], tmp_path / "report")
    rows = {r["layer"]: r for r in read_csv(tmp_path / "report" / "table1_learned_rates.csv")}
    assert list(rows) == [name for layer in analyze.LAYERS for name in (layer, f"{layer} bias")]
    for layer in analyze.LAYERS:
        for row, tensor in ((layer, "weight"), (f"{layer} bias", "bias")):
            name = {"logits": "head"}.get(layer, layer) + "." + tensor
            # best.pt's rates: the checkpoint the probe used, not ckpt.pt's
            per_seed = [made[("metasgd", s)]["best_rates"][name].float().double().numpy().ravel() for s in (0, 1)]
            assert float(rows[row]["mean"]) == pytest.approx(np.mean([r.mean() for r in per_seed]))
            assert float(rows[row]["mean_seed_std"]) == pytest.approx(np.std([r.mean() for r in per_seed], ddof=1))
            assert float(rows[row]["std"]) == pytest.approx(np.mean([r.std(ddof=1) for r in per_seed]))
            assert float(rows[row]["frac_negative"]) == pytest.approx(np.mean([(r < 0).mean() for r in per_seed]))
            assert float(rows[row]["min"]) == pytest.approx(np.mean([r.min() for r in per_seed]))
    assert rows["conv1"]["paper_mean"] == "-0.006" and rows["logits"]["paper_std"] == "0.072"
    assert "best.pt@50" in rows["conv1"]["checkpoints"]
    caption = (tmp_path / "report" / "table1_learned_rates.md").read_text().splitlines()[0]
    assert "from best.pt (the checkpoint probe.csv probed)" in caption and "weights only" in caption


def test_per_seed_and_across_seed_statistics_match_scipy(reported):
    root, made = reported
    result = json.loads((root / "report" / "stats.json").read_text())
    for method in ("maml", "metasgd"):
        p = result["methods"][method]["probes"]["probe"]
        on_means, off_means = [], []
        for seed, per_seed in zip(SEEDS, p["per_seed"]):
            r = made[(method, seed)]["records"]
            on, off = r["on_A"] - r["pre_A"], r["off_B"] - r["pre_B"]
            assert per_seed["seed"] == seed
            assert per_seed["paired_t_on_vs_off"]["p"] == pytest.approx(stats.ttest_rel(on, off).pvalue)
            assert per_seed["paired_t_on_vs_off"]["unit"] == "iterations" and per_seed["paired_t_on_vs_off"]["n"] == 50
            assert per_seed["off_change_vs_zero"]["p"] == pytest.approx(stats.ttest_1samp(off, 0).pvalue)
            on_means.append(on.mean())
            off_means.append(off.mean())
        across = p["across_seeds"]
        for key, means in (("on_change", on_means), ("off_change", off_means),
                           ("on_minus_off", np.subtract(on_means, off_means))):  # fmt: skip
            expected = stats.ttest_1samp(means, 0.0)
            assert across[key]["unit"] == "seeds" and across[key]["n"] == 3 and across[key]["df"] == 2
            assert across[key]["mean"] == pytest.approx(np.mean(means))
            assert across[key]["t"] == pytest.approx(expected.statistic)
            assert across[key]["p"] == pytest.approx(expected.pvalue)
            half = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)
            assert across[key]["ci95"] == pytest.approx(half)
        tests = result["methods"][method]["test_acc"]
        assert tests["mean_std"][0] == pytest.approx(0.41)
        assert result["methods"][method]["best_val_acc"]["per_run"] == pytest.approx([0.45, 0.46, 0.47])


def test_between_methods_is_a_paired_test_over_task_pairs_then_over_seeds(reported):
    root, made = reported
    between = json.loads((root / "report" / "stats.json").read_text())["between_methods"]["metasgd"]["probe"]
    off_means, interaction_means = [], []
    for seed, per_seed in zip(SEEDS, between["per_seed"]):
        m, s = made[("maml", seed)]["records"], made[("metasgd", seed)]["records"]
        off_m, off_s = m["off_B"] - m["pre_B"], s["off_B"] - s["pre_B"]
        contrast_m, contrast_s = (m["on_A"] - m["pre_A"]) - off_m, (s["on_A"] - s["pre_A"]) - off_s
        expected = stats.ttest_rel(off_s, off_m)
        assert per_seed["off_difference"]["p"] == pytest.approx(expected.pvalue)
        assert per_seed["off_difference"]["t"] == pytest.approx(expected.statistic)
        assert per_seed["off_difference"]["n"] == 50 and per_seed["off_difference"]["unit"] == "iterations"
        assert per_seed["interaction"]["p"] == pytest.approx(stats.ttest_rel(contrast_s, contrast_m).pvalue)
        off_means.append((off_s - off_m).mean())
        interaction_means.append((contrast_s - contrast_m).mean())
    across = between["across_seeds"]
    assert across["off_difference"]["p"] == pytest.approx(stats.ttest_1samp(off_means, 0).pvalue)
    assert across["interaction"]["p"] == pytest.approx(stats.ttest_1samp(interaction_means, 0).pvalue)
    assert across["off_difference"]["n"] == 3 and across["off_difference"]["unit"] == "seeds"


def test_probes_with_the_same_settings_but_other_task_pairs_are_refused_in_one_line(runs, tmp_path):
    root, _ = runs
    path = root / "metasgd1" / "probe.csv"
    rows = read_csv(path)
    rows[7]["classes_B"] = "19 18 17 16 15"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(analyze.AnalysisError) as refused:
        analyze.analyze(all_runs(root), tmp_path / "report")
    message = str(refused.value)
    assert "\n" not in message and "seed 1" in message and "different task pairs" in message
    assert "classes_B differs at iteration 7" in message


def test_probes_with_other_settings_are_not_paired_and_say_why(runs, tmp_path):
    root, _ = runs
    summary = json.loads((root / "maml2" / "probe.json").read_text())
    summary["settings"]["queries"] = 1
    (root / "maml2" / "probe.json").write_text(json.dumps(summary))
    analyze.analyze(all_runs(root), tmp_path / "report")
    between = json.loads((tmp_path / "report" / "stats.json").read_text())["between_methods"]["metasgd"]["probe"]
    assert [r["seed"] for r in between["per_seed"]] == [0, 1]
    assert between["unpaired"] == ["seed 2: probed with different settings (queries), so on different task pairs"]


def test_one_seed_says_no_across_seed_claim_can_be_made(reported):
    root, _ = reported
    report = (root / "report-seed0" / "report.md").read_text()
    result = json.loads((root / "report-seed0" / "stats.json").read_text())
    assert result["methods"]["maml"]["probes"]["probe"]["across_seeds"]["note"] == analyze.ONE_SEED
    assert result["between_methods"]["metasgd"]["probe"]["across_seeds"]["note"] == analyze.ONE_SEED
    assert "no across-seed claim can be made" in (root / "report-seed0" / "stats.md").read_text()
    assert "no across-seed claim can be made" in report


def test_every_p_value_names_its_test_unit_and_n(reported):
    root, _ = reported
    report = (root / "report" / "report.md").read_text()
    for text in (report, (root / "report" / "stats.md").read_text()):
        mentions = re.findall(r"p = [^ ;|]+(?: \([^)]*\))?", text)
        assert len(mentions) > 20
        for mention in mentions:
            assert re.fullmatch(r"p = \S+ \(.*t-test.*, n = \d+ (iterations|seeds)\)", mention), mention
    assert "0.00044 (one p-value for the study; its test is not stated)" in report
    assert "`probe.py --queries 1`" in report and "15 query image(s) per class" in report


def test_figures_are_non_empty_pngs_of_sensible_size(reported):
    root, _ = reported
    report = root / "report-seed0" / "report.md"
    for name in ("fig5_training.png", "fig6_learned_rates.png", "fig6_rates_over_training.png", "fig7_probe.png"):
        path = root / "report-seed0" / name
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as im:
            assert im.width >= 800 and im.height >= 400, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # something is drawn
        assert f"({name})" in report.read_text()


def test_report_puts_paper_numbers_beside_ours_and_flags_synthetic_short_runs(reported):
    root, _ = reported
    text = (root / "report-seed0" / "report.md").read_text()
    for paper_number in ("~46%", "~47%", "48.7%", "50.5%", "-0.006", "0.072", "+0.2 pp", "0.00044"):
        assert paper_number in text, paper_number
    assert "synthetic dataset" in text and "Short runs" in text
    assert "45.0%" in text  # MAML seed 0's best validation accuracy


def test_maml_only_probe_less_runs_still_give_a_report_that_says_what_is_missing(tmp_path):
    make_run(tmp_path / "maml0", "maml", 0, with_probe=False)
    text = analyze.analyze([tmp_path / "maml0"], tmp_path / "report").read_text()
    assert "no Meta-SGD run" in text and "no probe records" in text
    assert (tmp_path / "report" / "fig5_training.png").exists()
    assert not (tmp_path / "report" / "fig7_probe.png").exists()
    assert "not measured" in text


def test_runs_table_shows_channels_conv_biases_and_meta_gradient_clipping(tmp_path):
    make_run(tmp_path / "a", "maml", 0)
    make_run(tmp_path / "b", "metasgd", 0, clip_grad=10.0, conv_bias=False, channels=1)
    index = analyze.analyze([tmp_path / "a", tmp_path / "b"], tmp_path / "report").read_text()
    assert "they differ in --channels, --clip-grad, --conv-bias" in index  # not seeds of one study: two reports
    text = [(tmp_path / "report" / g / "report.md").read_text() for g in ("group1", "group2")]
    rows = [line for t in text for line in t.splitlines() if line.startswith(f"| {tmp_path}")]
    assert "| 3 | 4 | yes | off | — |" in rows[0]
    assert "| 1 | 4 | no | to ±10 | best.pt (iteration 50) |" in rows[1]


def test_bad_inputs_end_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(analyze.AnalysisError, match="no checkpoint"):
        analyze.analyze([tmp_path / "empty"], tmp_path / "r")
    make_run(tmp_path / "a", "maml", 0)
    make_run(tmp_path / "b", "metasgd", 0, ways=10)
    with pytest.raises(analyze.AnalysisError, match="mix task shapes"):
        analyze.analyze([tmp_path / "a", tmp_path / "b"], tmp_path / "r")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(analyze.AnalysisError, match="not a checkpoint of this project"):
        analyze.analyze([tmp_path / "foreign.pt"], tmp_path / "r")


def test_hint_for_a_run_without_best_pt_says_to_resume_it_not_to_probe_a_missing_file(tmp_path):
    make_run(tmp_path / "killed", "maml", 0, with_probe=False)
    (tmp_path / "killed" / "best.pt").unlink()  # a run killed before its first evaluation: ckpt.pt, no best.pt
    text = analyze.analyze([tmp_path / "killed"], tmp_path / "report").read_text()
    assert "best.pt`" not in text
    assert f"python maml.py --resume --out {tmp_path / 'killed'}" in text
    torch.save(torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True), tmp_path / "killed" / "best.pt")
    text = analyze.analyze([tmp_path / "killed"], tmp_path / "report").read_text()
    assert f"python probe.py {tmp_path / 'killed'}/best.pt" in text


# --------------------------------------------------------------------------- round 3: groups, manifests, notes


def test_runs_of_two_architectures_are_reported_in_groups_never_pooled_as_seeds(tmp_path):
    for seed in (0, 1):
        for hidden in (4, 8):
            make_run(tmp_path / f"maml{seed}-h{hidden}", "maml", seed, hidden=hidden)
    paths = [tmp_path / f"maml{s}-h{h}" for s in (0, 1) for h in (4, 8)]
    index = analyze.analyze(paths, tmp_path / "report").read_text()
    assert "they differ in --hidden" in index and "[--hidden 4](group1/report.md)" in index
    for group, hidden in (("group1", 4), ("group2", 8)):
        result = json.loads((tmp_path / "report" / group / "stats.json").read_text())
        per_seed = result["methods"]["maml"]["probes"]["probe"]["per_seed"]
        assert [s["folder"].endswith(f"h{hidden}") for s in per_seed] == [True, True]  # two seeds, one architecture
        assert f"--hidden {hidden}" in (tmp_path / "report" / group / "report.md").read_text()


def test_every_report_file_is_in_a_manifest_written_last_and_an_unfinished_report_is_named(tmp_path, capsys):
    make_run(tmp_path / "maml0", "maml", 0)
    make_run(tmp_path / "metasgd0", "metasgd", 0)
    out = tmp_path / "report"
    analyze.analyze([tmp_path / "maml0", tmp_path / "metasgd0"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest) == sorted(p.name for p in out.iterdir() if p.name not in ("manifest.json", "report.lock"))
    assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == h for n, h in manifest.items())
    (out / "stats.md").write_text("a file of another report")  # as a kill between two files would leave it
    assert analyze.unfinished_report(out)
    capsys.readouterr()
    analyze.analyze([tmp_path / "maml0", tmp_path / "metasgd0"], out)
    assert "held an unfinished report" in capsys.readouterr().out and not analyze.unfinished_report(out)


def test_the_report_says_which_runs_are_synthetic_which_are_omniglot_and_which_probes_are_unfinished(tmp_path):
    make_run(tmp_path / "maml0", "maml", 0, data="/data/omniglot", omniglot_split="lake", rotations=False)
    make_run(tmp_path / "maml1", "maml", 1)
    make_run(tmp_path / "metasgd0", "metasgd", 0)
    summary = json.loads((tmp_path / "metasgd0" / "probe.json").read_text())
    summary["settings"]["iterations"] = 80  # the records hold 50: the probe was stopped
    (tmp_path / "metasgd0" / "probe.json").write_text(json.dumps(summary))
    notes = analyze.data_warnings([analyze.run_folder.load_run(tmp_path / n) for n in ("maml0", "maml1")])
    assert "Some runs come from the built-in synthetic dataset" in notes[0] and "maml1" in notes[0]
    assert "Omniglot, not Mini-ImageNet" in notes[1] and "maml0" in notes[1]
    warnings = analyze.length_warnings([analyze.run_folder.load_run(tmp_path / "metasgd0")])
    assert any("Unfinished probe" in w and "50 of its 80 iterations" in w for w in warnings)


# Runs analyze.py with every file limited to LIMIT bytes (a full disk), or with figures that take their
# time to save (so that a test can kill the report half-written).
LIMITED = """
import resource, signal, sys, time
limit, marker = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
import cli, figures
if marker != "-":
    real_save = figures.save
    def slow_save(fig, path):
        real_save(fig, path)
        open(marker, "w").close()
        time.sleep(600)
    figures.save = slow_save
import analyze
cli.run_cli(analyze.main, sys.argv[3:])
"""


@pytest.mark.parametrize("cut", ["full disk", "kill"])
def test_a_report_cut_by_a_full_disk_or_a_kill_leaves_whole_files_no_manifest_and_is_named_next_time(
    cut, tmp_path, capsys
):
    make_run(tmp_path / "maml0", "maml", 0)
    make_run(tmp_path / "metasgd0", "metasgd", 0)
    out, marker = tmp_path / "report", tmp_path / "saved-a-figure"
    argv = [str(tmp_path / "maml0"), str(tmp_path / "metasgd0"), "--out", str(out)]
    limit = "20000" if cut == "full disk" else "0"  # the statistics fit, the first figure does not
    command = [sys.executable, "-c", LIMITED, limit, str(marker) if cut == "kill" else "-", *argv]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if cut == "kill":
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.kill()
    _, err = proc.communicate(timeout=300)
    if cut == "full disk":
        assert proc.returncode == 2 and err.startswith("error: cannot write") and len(err.splitlines()) == 1, err
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp*"))
    for written in out.glob("*.json"):
        json.loads(written.read_text())  # whole, never torn
    capsys.readouterr()
    analyze.main(argv)  # the next report, in this process
    assert "held an unfinished report" in capsys.readouterr().out
    assert not analyze.unfinished_report(out)


def test_runs_on_the_same_data_in_two_folders_are_seeds_of_one_group_and_other_data_is_not(tmp_path):
    identity = {"layout": "ravi", "train": {"classes": 64, "images": 38400}}
    for seed, folder, images in ((0, "/data/mini", 38400), (1, "/moved/mini", 38400), (2, "/other/mini", 100)):
        make_run(tmp_path / f"maml{seed}", "maml", seed, data=folder, synthetic_per_class=600 + seed)
        for name in ("ckpt.pt", "best.pt"):  # as maml.py records the data it trained on
            ckpt = torch.load(tmp_path / f"maml{seed}" / name, weights_only=False)
            ckpt["data_identity"] = {**identity, "train": {**identity["train"], "images": images}}
            torch.save(ckpt, tmp_path / f"maml{seed}" / name)
    one = analyze.analyze([tmp_path / "maml0", tmp_path / "maml1"], tmp_path / "one").read_text()
    assert "runs in groups" not in one  # a moved folder holds the same data; --synthetic-per-class means nothing
    apart = analyze.analyze([tmp_path / "maml0", tmp_path / "maml2"], tmp_path / "apart").read_text()
    assert "they differ in --data." in apart and "[--data /other/mini](group2/report.md)" in apart


def test_four_methods_probed_with_similarity_are_each_reported_against_maml(tmp_path):
    """MAML, Meta-SGD, ANIL and BOIL, two seeds each, trained, probed with --similarity and analysed: every
    method has its rows and its paired tests against MAML, and ANIL's encoder reads 'no change by
    construction', never a NaN from a zero-variance test."""
    methods = {
        "maml": [],
        "metasgd": ["--learn-lr"],
        "anil": ["--inner-params", "head"],
        "boil": ["--inner-params", "body"],
    }
    folders = []
    for method, extra in methods.items():
        maml.main(tiny_flags(tmp_path / method, "--seeds", "0", "1", "--iterations", "2", "--eval-every", "2", *extra))
        for seed in (0, 1):
            folders.append(tmp_path / method / f"seed{seed}")
            probe.main([str(folders[-1] / "best.pt"), "--iterations", "8", "--batch", "4", "--queries", "3",
                        "--similarity", "--no-progress"])  # fmt: skip
    report = analyze.analyze(folders, tmp_path / "report").read_text()
    result = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert list(result["methods"]) == ["maml", "metasgd", "anil", "boil"]
    assert list(result["between_methods"]) == ["metasgd", "anil", "boil"]
    for method, by_stem in result["between_methods"].items():
        assert [s["seed"] for s in by_stem["probe"]["per_seed"]] == [0, 1], method
        assert by_stem["probe"]["across_seeds"]["off_difference"]["n"] == 2, method
    anil = result["methods"]["anil"]["probes"]["probe"]["across_seeds"]["similarity"]
    assert all(anil[f"cka_{r}_block{i}"] == {**anil[f"cka_{r}_block{i}"], "mean": 1.0, "note": NO_CHANGE}
               for r in ("on", "off") for i in range(1, 5))  # fmt: skip
    assert "note" not in anil["cka_on_head"] and anil["cka_on_head"]["mean"] < 1
    assert "no change by construction" in report and "| ANIL | head only |" in report
    anil = result["methods"]["anil"]["probes"]["probe"]
    assert {anil["per_seed"][0]["off_change_vs_zero"]["note"], anil["across_seeds"]["off_change"]["note"]} == {
        NO_CHANGE
    }
    assert not re.search(r"nan|needs n", (tmp_path / "report" / "stats.md").read_text().lower())
    assert "off-task change, BOIL − MAML (paired)" in report
    assert (tmp_path / "report" / "fig_cka_per_layer.png").stat().st_size > 10_000


def test_anil_with_learned_rates_gets_its_own_table_of_the_head_rates_beside_meta_sgds(tmp_path):
    head = {n: s for n, s in PARAM_SHAPES.items() if n.startswith("head.")}
    make_run(tmp_path / "maml0", "maml", 0)
    make_run(tmp_path / "metasgd0", "metasgd", 0)
    made = make_run(tmp_path / "anil0", "metasgd", 0, inner_params="head")
    for name in ("ckpt.pt", "best.pt"):  # as maml.py --learn-lr --inner-params head saves them: head rates only
        ckpt = torch.load(tmp_path / "anil0" / name, weights_only=False)
        ckpt["inner_lrs"] = {n: r for n, r in ckpt["inner_lrs"].items() if n in head}
        torch.save(ckpt, tmp_path / "anil0" / name)
    assert made["best_rates"] and set(head) == {"head.weight", "head.bias"}
    report = analyze.analyze(
        [tmp_path / "maml0", tmp_path / "metasgd0", tmp_path / "anil0"], tmp_path / "r"
    ).read_text()
    table = (tmp_path / "r" / "table1_learned_rates_anil-metasgd.md").read_text()
    assert "Learned inner-loop rates of ANIL with Meta-SGD rates" in table
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and line[2].isalpha()]
    assert rows[1:] == ["| logits", "| logits bias"]  # after the header: only the rates that exist
    assert "| conv1 |" not in table and "| conv1 |" in (tmp_path / "r" / "table1_learned_rates.md").read_text()
    assert "## Learned inner rates of ANIL with Meta-SGD rates" in report


def test_without_maml_each_method_keeps_its_off_task_row_and_no_difference_from_maml_is_claimed(tmp_path):
    make_run(tmp_path / "anil0", "maml", 0, inner_params="head")
    make_run(tmp_path / "boil0", "maml", 0, inner_params="body")
    report = analyze.analyze([tmp_path / "anil0", tmp_path / "boil0"], tmp_path / "r").read_text()
    assert "| ANIL off-task change | not in the paper |" in report and "| BOIL off-task change |" in report
    assert "− MAML (paired)" not in report and "over 0 seeds" not in report


def test_the_cka_figure_names_a_method_whose_seeds_were_not_all_probed_with_similarity():
    cka = {column: {"mean": 0.9, "ci95": 0.01} for column in CKA_COLUMNS}
    with_cka, without = {"seed": 0, "similarity": cka}, {"seed": 1}
    probes = lambda *seeds: {"probes": {"probe": {"per_seed": list(seeds), "across_seeds": {}}}}  # noqa: E731
    stats_out = {"methods": {"maml": probes(with_cka, without), "boil": probes(with_cka), "anil": probes(without)}}
    assert list(figures.cka_lines(stats_out)) == ["MAML (1 of 2 seeds)", "BOIL"]


def test_anils_rows_against_maml_say_they_follow_from_mamls_change_and_the_paper_column_never_says_not_stated(
    tmp_path,
):
    folders = []
    for name, method, extra in (("maml", "maml", {}), ("anil", "maml", {"inner_params": "head"}),
                                ("anilsgd", "metasgd", {"inner_params": "head"})):  # fmt: skip
        make_run(tmp_path / name, method, 0, **extra)
        folders.append(tmp_path / name)
    report = analyze.analyze(folders, tmp_path / "r").read_text()
    for display in ("ANIL", "ANIL with Meta-SGD rates"):
        row = next(line for line in report.splitlines() if line.startswith(f"| off-task change, {display} − MAML"))
        assert row.split(" | ")[1] == "not in the paper" and f"follows from MAML's own change: {display}'s" in row
        assert f"| {display} | probe | by construction | follows from MAML's own change" in report
    paper_cells = [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| ") and " | " in line]
    assert "not stated" not in paper_cells


def test_a_setting_whose_value_holds_a_comma_leaves_the_index_sentence_whole(tmp_path):
    make_run(tmp_path / "a", "metasgd", 0, lr_init_range=[-0.02, 0.05])
    make_run(tmp_path / "b", "metasgd", 1, lr_init_range=[0.0, 0.1])
    index = analyze.analyze([tmp_path / "a", tmp_path / "b"], tmp_path / "r").read_text()
    assert "they differ in --lr-init-range." in index
    assert "[--lr-init-range -0.02 0.05](group1/report.md)" in index and "[" not in index.split("differ in")[1][:20]


def test_a_report_folder_keeps_one_report_an_earlier_ones_files_and_killed_temporaries_removed(tmp_path):
    make_run(tmp_path / "maml0", "maml", 0)
    make_run(tmp_path / "metasgd0", "metasgd", 0)
    out = tmp_path / "report"
    analyze.analyze([tmp_path / "maml0", tmp_path / "metasgd0"], out)  # with Table 1 and Figure 6
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f"stats.md.tmp{gone.stdout.strip()}").write_text("half a file")  # a report killed mid-write
    analyze.analyze([tmp_path / "maml0"], out)
    left = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.json", "report.lock"))
    assert left == sorted(json.loads((out / "manifest.json").read_text())) and "table1_learned_rates.md" not in left


def test_a_grouped_reports_group_folders_are_removed_by_a_single_report_into_its_folder(tmp_path):
    make_run(tmp_path / "h4", "maml", 0)
    make_run(tmp_path / "h8", "maml", 1, hidden=8)
    analyze.analyze([tmp_path / "h4", tmp_path / "h8"], tmp_path / "report")
    assert (tmp_path / "report" / "group2" / "report.md").exists()
    analyze.analyze([tmp_path / "h4"], tmp_path / "report")
    assert not list((tmp_path / "report").glob("group*"))


def test_a_run_folder_name_that_is_not_utf8_is_written_escaped_and_a_run_without_metrics_is_named(tmp_path):
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    make_run(folder, "maml", 0)
    (folder / "metrics.csv").unlink()
    report = analyze.analyze([folder], tmp_path / "report").read_text(encoding="utf-8")
    assert "caf\\xe9" in report and "caf\\xe9 has no metrics.csv (or no rows in it)" in report
