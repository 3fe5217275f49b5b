"""stats.py: the study's statistics against scipy and against hand-worked numbers."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import stats


def test_statistics_match_scipy_and_the_paired_test_is_paired():
    rng = np.random.default_rng(0)
    n = 200
    shared = rng.normal(0, 0.2, n)  # a per-iteration effect common to both changes
    pre_a, pre_b = rng.uniform(0.3, 0.6, n), rng.uniform(0.3, 0.6, n)
    on_change = shared + rng.normal(0, 0.002, n)
    off_change = shared + 0.003 + rng.normal(0, 0.002, n)
    records = {
        "pre_A": pre_a,
        "on_A": pre_a + on_change,
        "pre_B": pre_b,
        "off_B": pre_b + off_change,
        "head_A": rng.uniform(0, 1, n),
    }
    s = stats.summarize(records)
    on, off = stats.changes(records)
    np.testing.assert_allclose(on, on_change, rtol=0, atol=1e-12)
    np.testing.assert_allclose(off, off_change, rtol=0, atol=1e-12)
    paired = scipy_stats.ttest_rel(on_change, off_change)
    assert s["paired_t_on_vs_off"]["p"] == pytest.approx(paired.pvalue, rel=1e-6)
    assert s["paired_t_on_vs_off"]["t"] == pytest.approx(paired.statistic, rel=1e-6)
    assert s["paired_t_on_vs_off"]["p"] < 1e-10 < 0.1 < scipy_stats.ttest_ind(on_change, off_change).pvalue
    assert s["off_change_vs_zero"]["p"] == pytest.approx(scipy_stats.ttest_1samp(off_change, 0).pvalue, rel=1e-6)
    assert s["on_change_vs_zero"]["p"] == pytest.approx(scipy_stats.ttest_1samp(on_change, 0).pvalue, rel=1e-6)
    half = scipy_stats.t.ppf(0.975, n - 1) * np.std(pre_a, ddof=1) / np.sqrt(n)
    assert s["regimes"]["pre_A"]["mean"] == pytest.approx(pre_a.mean())
    assert s["regimes"]["pre_A"]["ci95"] == pytest.approx(half)
    assert s["off_change"]["mean"] == pytest.approx(off_change.mean())


def test_test_accuracy_interval_is_the_normal_approximation_maml_reports():
    values = [0.2, 0.4, 0.6, 0.8, 1.0]
    mean, half = stats.mean_normal_ci95(values)
    assert mean == pytest.approx(0.6) and half == pytest.approx(1.96 * np.std(values, ddof=1) / math.sqrt(5))
    assert math.isnan(stats.mean_normal_ci95([0.5])[1])


def test_t_test_of_mean_is_scipys_one_sample_test_labelled_with_its_unit():
    values = [0.01, -0.02, 0.03, 0.05, 0.02]
    result = stats.t_test_of_mean(values, "a test", "seeds")
    reference = scipy_stats.ttest_1samp(values, 0.0)
    assert result["p"] == pytest.approx(reference.pvalue) and result["t"] == pytest.approx(reference.statistic)
    assert (result["test"], result["unit"], result["n"], result["df"]) == ("a test", "seeds", 5, 4)
    assert math.isnan(stats.t_test_of_mean([0.3], "a test", "seeds")["p"])


def test_rate_statistics_per_layer_pool_the_layers_tensors():
    rates = {"conv1.weight": torch.tensor([-1.0, 1.0, 2.0]), "conv1.bias": torch.tensor([-4.0]),
             "head.weight": torch.tensor([0.5, 0.5])}  # fmt: skip
    rows = {(r["kind"], r["name"]): r for r in stats.rate_statistics(rates)}
    conv1 = rows["layer", "conv1"]
    assert conv1["count"] == 4 and conv1["mean"] == pytest.approx(-0.5) and conv1["frac_negative"] == 0.5
    assert conv1["std"] == pytest.approx(np.std([-1, 1, 2, -4], ddof=1)) and (conv1["min"], conv1["max"]) == (-4, 2)
    assert rows["layer", "logits"]["std"] == 0 and rows["tensor", "conv1.bias"]["count"] == 1


def direct_linear_cka(x, y):
    """Linear CKA as Kornblith et al. (2019) define it, in numpy: HSIC of the linear kernels K = X X^T and
    L = Y Y^T with the centring matrix H, HSIC(K, L) = tr(K H L H) / (n - 1)^2, normalised."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_matches_a_direct_implementation_on_random_matrices():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 12, 30))  # 4 pairs of representations of 12 examples
    y = x @ rng.normal(size=(30, 7)) + rng.normal(size=(4, 12, 7))  # related, other width
    ours = stats.linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    direct = [direct_linear_cka(x[i], y[i]) for i in range(4)]
    assert ours.shape == (4,) and ours.dtype == torch.float64
    assert ours.tolist() == pytest.approx(direct, rel=1e-12)
    assert 0.05 < min(direct) and max(direct) < 0.999  # neither trivial end


def test_linear_cka_is_one_for_identical_representations_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(3, 10, 16)))
    assert torch.equal(stats.linear_cka(x, x), torch.ones(3, dtype=torch.float64))  # exactly, not to rounding
    rotation = torch.from_numpy(np.linalg.qr(rng.normal(size=(16, 16)))[0])
    assert stats.linear_cka(x, x @ rotation).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    assert stats.linear_cka(x, 7.5 * x).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    assert stats.linear_cka(x, x + 3.0).tolist() == pytest.approx([1.0] * 3, abs=1e-12)  # centred first
    unrelated = torch.from_numpy(rng.normal(size=(3, 10, 16)))
    assert (stats.linear_cka(x, unrelated) < 0.9).all()


def test_linear_cka_flattens_feature_maps_and_keeps_float32_inputs_in_float64():
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.normal(size=(2, 6, 4, 3, 3))).float()
    other = torch.from_numpy(rng.normal(size=(2, 6, 5))).float()
    flat = stats.linear_cka(maps.flatten(2), other)
    assert torch.equal(stats.linear_cka(maps, other), flat)
    assert flat.tolist() == pytest.approx(
        [direct_linear_cka(maps[i].flatten(1).double().numpy(), other[i].double().numpy()) for i in range(2)],
        rel=1e-12,
    )


def test_a_test_of_values_that_do_not_vary_has_no_p_value_and_the_report_says_why():
    import stats_md

    for values in ([0.1] * 3, [0.25] * 8, [0.0] * 5):  # scipy: t = inf or a huge t, and p = 0, for the first two
        result = stats.t_test_of_mean(values, "one-sample t-test", "seeds")
        assert math.isnan(result["t"]) and math.isnan(result["p"]), values
        assert "every value is the same" in stats_md.p_text(result)
    assert "needs n ≥ 2" in stats_md.p_text(stats.t_test_of_mean([0.3], "one-sample t-test", "seeds"))
    constant = {"pre_A": [0.5] * 4, "on_A": [0.75] * 4, "pre_B": [0.5] * 4, "off_B": [0.25] * 4, "head_A": [0.5] * 4}
    summary = stats.summarize(constant)  # on-task change +0.25 and off-task change -0.25 in every iteration
    for key in ("paired_t_on_vs_off", "on_change_vs_zero", "off_change_vs_zero"):
        assert math.isnan(summary[key]["p"]), key
    varied = stats.t_test_of_mean([0.1, 0.2, 0.4], "one-sample t-test", "seeds")
    assert varied["p"] == pytest.approx(scipy_stats.ttest_1samp([0.1, 0.2, 0.4], 0.0).pvalue)
