"""The probe's bookkeeping, its statistics and its interruption behaviour."""

import json

import pytest
import torch

import data
import logs
import maml
import probe
from cli import CheckpointError, ConfigError
from conftest import read_csv, tiny_flags
from stats import CKA_COLUMNS


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    maml.main(tiny_flags(root / "maml", "--iterations", "2", "--eval-every", "2"))
    maml.main(
        tiny_flags(
            root / "metasgd", "--iterations", "2", "--eval-every", "2", "--learn-lr", "--lr-init-range", "-0.05", "0.05"
        )
    )
    maml.main(tiny_flags(root / "anil", "--iterations", "2", "--eval-every", "2", "--inner-params", "head"))
    return {
        "maml": root / "maml" / "best.pt",
        "metasgd": root / "metasgd" / "best.pt",
        "anil": root / "anil" / "best.pt",
    }


def tiny_tasks(tasks=12, ways=3, seed=0):
    split = data.synthetic_split("test", 16, per_class=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    classes = data.sample_classes(split, tasks, 2 * ways, g)
    norm = data.channel_stats(split)
    shape = {"tasks": tasks, "ways": ways, "shots": 1, "queries": 4}
    a = data.sample_episodes(split, **shape, generator=g, norm=norm, classes=classes[:, :ways])
    b = data.sample_episodes(split, **shape, generator=g, norm=norm, classes=classes[:, ways:])
    return a, b


def test_zero_rates_leave_every_accuracy_exactly_unchanged():
    params = maml.init_params(3, 8, 16, generator=torch.Generator().manual_seed(0))
    a, b = tiny_tasks()
    result = probe.probe_tasks(params, maml.init_inner_lrs(params, 0.0), a, b, steps=3, ways=3)
    assert torch.equal(result["on_A"], result["pre_A"])
    assert torch.equal(result["off_B"], result["pre_B"])


def test_prototype_classifier_gets_the_hand_worked_accuracy():
    # 3 classes along the axes; labels permuted: support rows are labels 2, 0, 1.
    support = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    support_y = torch.tensor([[2, 0, 1]])
    # Query 0 points along x (label 2: right), query 1 mostly along y (label 0: right),
    # query 2 along z but labelled 2 (wrong: it is nearest to label 1), query 3 long vector along -x+y
    # scaled: cosine ignores length, nearest is y (label 0), labelled 0 (right).
    query = torch.tensor([[[3.0, 0.1, 0], [0.2, 1.0, 0.1], [0, 0.1, 5.0], [-1.0, 10.0, 0]]])
    query_y = torch.tensor([[2, 0, 2, 0]])
    acc = probe.prototype_accuracy(support, support_y, query, query_y, ways=3)
    assert acc.tolist() == [0.75]


def test_prototypes_average_the_shots():
    # Class 0's shots (1, 0) and (1, 2) average to (1, 1); class 1's (0, 1) and (2, -1) to (1, 0).
    support = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [2.0, -1.0]]])
    support_y = torch.tensor([[0, 1, 0, 1]])
    # (1, 0.9) is nearer (1, 1) by cosine; (1, 0.1) is nearer (1, 0). Against single shots instead of
    # the means, (1, 0.1) would go to class 0's (1, 0) and the accuracy would be 1/2.
    query = torch.tensor([[[1.0, 0.9], [1.0, 0.1]]])
    acc = probe.prototype_accuracy(support, support_y, query, torch.tensor([[0, 1]]), ways=2)
    assert acc.tolist() == [1.0]


def test_off_task_measures_task_b_with_weights_adapted_on_task_a():
    params = maml.init_params(3, 8, 16, generator=torch.Generator().manual_seed(1))
    a, b = tiny_tasks(tasks=16)
    rates = maml.init_inner_lrs(params, 0.5)
    result = probe.probe_tasks(params, rates, a, b, steps=3, ways=3)

    def adapted_on(task):
        return maml.adapt(
            maml.per_task(params, 16),
            rates,
            task["support_x"],
            task["support_y"],
            3,
            create_graph=False,
            net=maml.conv4_tasks,
        )

    on_a, on_b = adapted_on(a), adapted_on(b)
    assert torch.equal(result["off_B"], probe.encoder_accuracy(on_a, b, 3))
    assert torch.equal(result["on_A"], probe.encoder_accuracy(on_a, a, 3))
    # Swapping A and B would give these instead; they differ, so the check above can fail.
    assert not torch.equal(result["off_B"], probe.encoder_accuracy(on_b, b, 3))
    assert not torch.equal(result["on_A"], probe.encoder_accuracy(on_b, a, 3))


def test_rate_variants_build_the_rates_they_claim():
    learned = {"w": torch.tensor([-0.2, 0.0, 0.3]), "b": torch.tensor([0.5, -0.1])}
    expect = {
        "learned": ([-0.2, 0.0, 0.3], [0.5, -0.1]),
        "negative": ([-0.2, 0.0, 0.0], [0.0, -0.1]),
        "positive": ([0.0, 0.0, 0.3], [0.5, 0.0]),
        "abs": ([0.2, 0.0, 0.3], [0.5, 0.1]),
        "flipped": ([0.2, 0.0, -0.3], [-0.5, 0.1]),
    }
    for mode, (w, b) in expect.items():
        rates = probe.probe_rates(learned, mode)
        assert rates["w"].tolist() == pytest.approx(w) and rates["b"].tolist() == pytest.approx(b), mode
    fixed = probe.probe_rates(learned, "fixed", 0.01)
    assert list(fixed) == ["w", "b"]
    assert all(r.shape == () and torch.equal(r, torch.tensor(0.01)) for r in fixed.values())
    maml_rates = maml.as_inner_lrs(0.01, learned)
    for mode, alpha in (("flipped", -0.01), ("learned", 0.01), ("abs", 0.01)):
        rates = probe.probe_rates(maml_rates, mode, meta_sgd=False)
        assert list(rates) == ["w", "b"], mode
        assert all(r.shape == () and torch.equal(r, torch.tensor(alpha)) for r in rates.values()), mode


def test_negative_rates_of_a_maml_checkpoint_are_refused():
    maml_rates = maml.as_inner_lrs(0.01, {"w": torch.zeros(3), "b": torch.zeros(2)})
    for mode in ("negative", "positive"):
        with pytest.raises(ConfigError, match="Meta-SGD checkpoint"):
            probe.probe_rates(maml_rates, mode, meta_sgd=False)


@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_probe_runs_on_either_method_and_same_seed_gives_same_records(checkpoints, tmp_path, method):
    flags = [str(checkpoints[method]), "--iterations", "20", "--batch", "8", "--queries", "3", "--no-progress"]
    s1 = probe.main(flags + ["--out", str(tmp_path / "one")])
    probe.main(flags + ["--out", str(tmp_path / "two")])
    one, two = read_csv(tmp_path / "one" / "probe.csv"), read_csv(tmp_path / "two" / "probe.csv")
    assert len(one) == 20 and one == two
    assert s1["settings"]["method"] == method and s1["iterations"] == 20
    for row in one:  # disjoint tasks by default
        assert not set(row["classes_A"].split()) & set(row["classes_B"].split())
    saved = json.loads((tmp_path / "one" / "probe.json").read_text())
    assert saved["paired_t_on_vs_off"]["p"] == s1["paired_t_on_vs_off"]["p"]


def test_interrupt_and_resume_gives_records_identical_to_an_uninterrupted_run(checkpoints, tmp_path, monkeypatch):
    flags = [str(checkpoints["metasgd"]), "--iterations", "30", "--batch", "4", "--queries", "3", "--no-progress"]
    probe.main(flags + ["--out", str(tmp_path / "whole")])
    real = probe.probe_tasks
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "probe_tasks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe.main(flags + ["--out", str(tmp_path / "cut")])
    monkeypatch.setattr(probe, "probe_tasks", real)
    with open(tmp_path / "cut" / "probe.csv", "a") as f:
        f.write("12,3,3,0.5,0.")  # what a kill in the middle of a write leaves
    with pytest.raises(ConfigError, match="--resume"):
        probe.main(flags + ["--out", str(tmp_path / "cut")])
    probe.main(flags + ["--out", str(tmp_path / "cut"), "--resume"])
    assert read_csv(tmp_path / "cut" / "probe.csv") == read_csv(tmp_path / "whole" / "probe.csv")


def test_ablation_records_get_their_own_files(checkpoints, tmp_path):
    base = [str(checkpoints["metasgd"]), "--iterations", "8", "--queries", "3", "--no-progress", "--out", str(tmp_path)]
    probe.main(base + ["--rates", "negative"])
    probe.main(base + ["--steps", "2"])
    probe.main(base + ["--rates", "fixed", "--inner-lr", "0"])
    names = sorted(p.name for p in tmp_path.glob("*.csv"))
    assert names == ["probe-rates-fixed0.csv", "probe-rates-negative.csv", "probe-steps2.csv"]
    zero = read_csv(tmp_path / "probe-rates-fixed0.csv")
    assert all(r["on_A"] == r["pre_A"] and r["off_B"] == r["pre_B"] for r in zero)


def test_foreign_file_and_too_few_classes_are_explained(checkpoints, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        probe.main([str(foreign), "--iterations", "2"])
    # The synthetic val split has 16 classes: 2-way disjoint tasks need 4, 9-way ones 18.
    ckpt = torch.load(checkpoints["maml"], weights_only=True)
    ckpt["config"]["ways"] = 9
    ckpt["params"]["head.weight"] = torch.zeros(9, ckpt["params"]["head.weight"].shape[1])
    ckpt["params"]["head.bias"] = torch.zeros(9)
    torch.save(ckpt, tmp_path / "nine.pt")
    with pytest.raises(data.DataError, match="at least 18"):
        probe.main([str(tmp_path / "nine.pt"), "--split", "val", "--iterations", "2", "--no-progress"])


def test_a_resume_asking_for_fewer_iterations_is_refused_and_cuts_no_record(checkpoints, tmp_path):
    flags = [str(checkpoints["maml"]), "--batch", "4", "--queries", "3", "--no-progress", "--out", str(tmp_path)]
    probe.main([*flags, "--iterations", "8"])
    records, summary = (tmp_path / "probe.csv").read_bytes(), (tmp_path / "probe.json").read_bytes()
    with pytest.raises(ConfigError, match="--iterations 4 is below the 8 iterations .* never cut"):
        probe.main([*flags, "--iterations", "4", "--resume"])
    assert (tmp_path / "probe.csv").read_bytes() == records and (tmp_path / "probe.json").read_bytes() == summary
    probe.main([*flags, "--iterations", "12", "--resume"])  # more is a continuation
    assert len(read_csv(tmp_path / "probe.csv")) == 12


def test_a_resume_with_other_settings_says_which_differ(checkpoints, tmp_path):
    flags = [str(checkpoints["maml"]), "--batch", "4", "--iterations", "8", "--no-progress", "--out", str(tmp_path)]
    probe.main([*flags, "--queries", "3"])
    with pytest.raises(ConfigError, match=r"settings differ .*\(queries: 3 then, 2 now\)"):
        probe.main([*flags, "--queries", "2", "--resume"])


def probe_records(checkpoint, out, *extra):
    probe.main(
        [
            str(checkpoint),
            "--iterations",
            "8",
            "--batch",
            "4",
            "--queries",
            "3",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )
    (records,) = out.glob("probe*.csv")
    return read_csv(records)


def test_similarity_at_zero_steps_is_exactly_one_and_leaves_the_accuracies_as_they_were(checkpoints, tmp_path):
    plain = probe_records(checkpoints["metasgd"], tmp_path / "plain", "--steps", "0")
    similar = probe_records(checkpoints["metasgd"], tmp_path / "similar", "--steps", "0", "--similarity")
    assert [{k: r[k] for k in plain[0]} for r in similar] == plain
    assert all(float(r[k]) == 1.0 for r in similar for k in CKA_COLUMNS)
    adapted = probe_records(checkpoints["metasgd"], tmp_path / "adapted", "--similarity")
    assert all(float(r[k]) < 1.0 for r in adapted for k in CKA_COLUMNS if k.endswith("head"))
    assert json.loads((tmp_path / "adapted" / "probe.json").read_text())["settings"]["similarity"] is True
    assert list(adapted[0]) == logs.probe_columns(True)


@pytest.mark.parametrize("rates", [[], ["--rates", "fixed", "--inner-lr", "0.5"]], ids=["learned", "fixed"])
def test_an_anil_checkpoint_is_probed_adapting_only_its_head(checkpoints, tmp_path, rates):
    ckpt = torch.load(checkpoints["anil"], weights_only=False)
    assert ckpt["config"]["inner_params"] == "head" and list(ckpt["inner_lrs"]) == ["head.weight", "head.bias"]
    records = probe_records(checkpoints["anil"], tmp_path, "--similarity", *rates)
    conv = [k for k in CKA_COLUMNS if not k.endswith("head")]
    assert all(float(r[k]) == 1.0 for r in records for k in conv)  # the encoder never moved: by construction
    assert all(r["pre_A"] == r["on_A"] and r["pre_B"] == r["off_B"] for r in records)
    assert any(float(r["cka_on_head"]) < 1.0 for r in records)


def test_a_resume_with_similarity_over_a_probe_without_it_names_the_setting(checkpoints, tmp_path):
    probe_records(checkpoints["maml"], tmp_path)
    with pytest.raises(ConfigError, match="similarity: False then, True now"):
        probe_records(checkpoints["maml"], tmp_path, "--similarity", "--resume")


def test_similarity_with_fewer_than_three_query_images_is_refused(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="--similarity needs at least 3 query images per task"):
        probe.main([str(checkpoints["maml"]), "--queries", "1", "--similarity", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_probe_whose_adaptation_diverges_stops_instead_of_reporting_accuracies_of_nan_features(checkpoints, tmp_path):
    with pytest.raises(
        FloatingPointError, match="the adaptation diverged: the features or logits of [1-4] of 4 tasks became"
    ):
        probe_records(checkpoints["maml"], tmp_path / "p", "--rates", "fixed", "--inner-lr", "1e12", "--steps", "5")
    assert not (tmp_path / "p").exists()  # no header-only records to block the next try (nor a folder)


def test_records_holding_only_a_header_are_no_records_and_a_new_probe_writes_them(checkpoints, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "probe.csv").write_text(",".join(logs.PROBE_COLUMNS) + "\n")  # a kill right after the header
    assert len(probe_records(checkpoints["maml"], tmp_path / "p")) == 8
