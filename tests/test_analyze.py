"""analyze.py against numbers worked out independently from the same hand-made run folders."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import analyze
import maml
import probe
from conftest import read_csv

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


def make_run(folder, method, seed, ways=5, shots=1, probe_seed=0, with_probe=True, iterations=100):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    params = {n: torch.zeros(s) for n, s in PARAM_SHAPES.items()}
    rates = 0.01
    if method == "metasgd":
        rates = {n: torch.tensor(rng.normal(-0.01, 0.03, s)) for n, s in PARAM_SHAPES.items()}
    config = {
        "learn_lr": method == "metasgd",
        "ways": ways,
        "shots": shots,
        "seed": seed,
        "data": None,
        "iterations": iterations,
        "image_size": 16,
        "hidden": 4,
    }
    torch.save(
        {"program": maml.PROGRAM, "config": config, "params": params, "inner_lrs": rates, "iteration": iterations},
        folder / "ckpt.pt",
    )
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "train_loss", "train_acc", "val_acc", "val_ci95", "elapsed_s"])
        w.writerow([0, "", "", 0.2, 0.01, 0])
        w.writerow([50, 1.2, 0.4, 0.35 + 0.01 * seed, 0.01, 5])
        w.writerow([100, 1.0, 0.5, 0.45 + 0.01 * seed, 0.01, 10])
    if method == "metasgd":
        with open(folder / "lr_stats.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", "name", "kind", "count", "mean", "std", "frac_negative", "min", "max"])
            for it in (0, 50, 100):
                for layer in analyze.LAYERS:
                    w.writerow([it, layer, "layer", 10, 0.01 - 0.0002 * it, 0.01, it / 200, -0.1, 0.1])
    (folder / "test.json").write_text(json.dumps({"test_acc": 0.4 + 0.01 * seed, "test_ci95": 0.02, "tasks": 600}))
    records = None
    if with_probe:
        prng = np.random.default_rng(100 + seed + probe_seed)
        n = 50
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
            w.writerow(probe.COLUMNS)
            for i in range(n):
                w.writerow(
                    [
                        i,
                        0,
                        0,
                        *(repr(float(records[k][i])) for k in ("pre_A", "on_A", "pre_B", "off_B", "head_A")),
                        "0 1 2 3 4",
                        "5 6 7 8 9",
                    ]
                )
    return {"rates": rates, "records": records}


@pytest.fixture
def runs(tmp_path):
    made = {}
    for method in ("maml", "metasgd"):
        for seed in (0, 1):
            made[(method, seed)] = make_run(tmp_path / f"{method}{seed}", method, seed)
    return tmp_path, made


def test_table1_numbers_match_numpy(runs, tmp_path):
    root, made = runs
    analyze.analyze([root / "maml0", root / "metasgd0", root / "metasgd1"], tmp_path / "report")
    rows = {r["layer"]: r for r in read_csv(tmp_path / "report" / "table1_learned_rates.csv")}
    assert list(rows) == analyze.LAYERS
    for layer in analyze.LAYERS:
        per_seed = []
        for seed in (0, 1):
            rates = made[("metasgd", seed)]["rates"]
            names = [n for n in rates if maml.layer_of(n) == layer]
            per_seed.append(np.concatenate([rates[n].numpy().ravel() for n in names]))
        assert float(rows[layer]["mean"]) == pytest.approx(np.mean([r.mean() for r in per_seed]))
        assert float(rows[layer]["mean_seed_std"]) == pytest.approx(np.std([r.mean() for r in per_seed], ddof=1))
        assert float(rows[layer]["std"]) == pytest.approx(np.mean([r.std(ddof=1) for r in per_seed]))
        assert float(rows[layer]["frac_negative"]) == pytest.approx(np.mean([(r < 0).mean() for r in per_seed]))
        assert float(rows[layer]["min"]) == pytest.approx(np.mean([r.min() for r in per_seed]))
    assert rows["conv1"]["paper_mean"] == "-0.006" and rows["logits"]["paper_std"] == "0.072"
    assert "bias=" in rows["conv2"]["tensor_means"] and "weight=" in rows["conv2"]["tensor_means"]


def test_statistics_match_scipy(runs, tmp_path):
    root, made = runs
    analyze.analyze([root / f"{m}{s}" for m in ("maml", "metasgd") for s in (0, 1)], tmp_path / "report")
    result = json.loads((tmp_path / "report" / "stats.json").read_text())

    def pooled(method):
        recs = [made[(method, s)]["records"] for s in (0, 1)]
        return {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}

    for method in ("maml", "metasgd"):
        r = pooled(method)
        on, off = r["on_A"] - r["pre_A"], r["off_B"] - r["pre_B"]
        p = result["methods"][method]["probes"]["probe"]
        assert p["paired_t_on_vs_off"]["p"] == pytest.approx(stats.ttest_rel(on, off).pvalue)
        assert p["off_change_vs_zero"]["p"] == pytest.approx(stats.ttest_1samp(off, 0).pvalue)
        assert p["on_change_vs_zero"]["t"] == pytest.approx(stats.ttest_1samp(on, 0).statistic)
        assert p["off_change"]["mean"] == pytest.approx(off.mean())
        tests = result["methods"][method]["test_acc"]
        assert tests["mean_std"][0] == pytest.approx(0.405) and tests["mean_std"][1] == pytest.approx(
            np.std([0.40, 0.41], ddof=1)
        )
        assert result["methods"][method]["best_val_acc"]["per_run"] == pytest.approx([0.45, 0.46])
    welch = stats.ttest_ind(*(pooled(m)["off_B"] - pooled(m)["pre_B"] for m in ("metasgd", "maml")), equal_var=False)
    between = result["between_methods"]["probe"]
    assert between["p"] == pytest.approx(welch.pvalue) and between["t"] == pytest.approx(welch.statistic)
    md = (tmp_path / "report" / "stats.md").read_text()
    assert "Welch" in md and f"{welch.pvalue:.3g}" in md


def test_figures_are_non_empty_pngs_of_sensible_size(runs, tmp_path):
    root, _ = runs
    report = analyze.analyze([root / "maml0", root / "metasgd0"], tmp_path / "report")
    for name in ("fig5_training.png", "fig6_learned_rates.png", "fig6_rates_over_training.png", "fig7_probe.png"):
        path = tmp_path / "report" / name
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as im:
            assert im.width >= 800 and im.height >= 400, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # something is drawn
        assert f"({name})" in report.read_text()


def test_report_puts_paper_numbers_beside_ours_and_flags_synthetic_short_runs(runs, tmp_path):
    root, _ = runs
    text = analyze.analyze([root / "maml0", root / "metasgd0"], tmp_path / "report").read_text()
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
    make_run(tmp_path / "killed", "maml", 0, with_probe=False)  # a killed run: ckpt.pt, no best.pt
    text = analyze.analyze([tmp_path / "killed"], tmp_path / "report").read_text()
    assert "best.pt`" not in text
    assert f"python maml.py --resume --out {tmp_path / 'killed'}" in text
    torch.save(torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True), tmp_path / "killed" / "best.pt")
    text = analyze.analyze([tmp_path / "killed"], tmp_path / "report").read_text()
    assert f"python probe.py {tmp_path / 'killed'}/best.pt" in text
