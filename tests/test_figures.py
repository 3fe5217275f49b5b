"""The report's figures draw only what is true: a CKA value or interval outside [0, 1] is never drawn (the
caption names the clipping), and no two lines of Figure 6b look alike. Each figure is caught as it is
saved and its drawn lines are read back."""

import matplotlib.colors
import numpy as np
import pytest

import figures
from stats import CKA_COLUMNS


@pytest.fixture
def drawn(monkeypatch):
    """The figures the test draws, as matplotlib figures, instead of PNG files."""
    saved = []
    monkeypatch.setattr(figures, "save", lambda fig, path: saved.append(fig))
    monkeypatch.setattr(figures._plt(), "close", lambda fig: None)
    return saved


def test_the_cka_figure_keeps_every_value_and_interval_within_0_and_1_and_says_it_clips(drawn, tmp_path):
    """Two seeds that disagree give a t-interval far wider than CKA's range (issue 30: -1.3 to 2.9)."""
    seed = lambda value: {column: {"mean": value, "ci95": 0.01} for column in CKA_COLUMNS}  # noqa: E731
    across = {column: {"mean": 0.8, "ci95": 2.1} for column in CKA_COLUMNS}
    probe = {"per_seed": [{"seed": 0, "similarity": seed(0.6)}, {"seed": 1, "similarity": seed(1.0)}],
             "across_seeds": {"similarity": across}}  # fmt: skip
    assert figures.fig_cka({"methods": {"maml": {"probes": {"probe": probe}}}}, tmp_path)
    (fig,) = drawn
    for ax in fig.axes:
        ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines])
        bars = np.concatenate([np.asarray(c.get_segments())[..., 1].ravel() for c in ax.collections])
        assert ys.size and bars.size and ys.min() >= 0 and ys.max() <= 1 and bars.min() >= 0 and bars.max() <= 1
        assert {0.6, 1.0} <= set(np.round(ys, 6))  # each seed's mean is drawn beside the mean over seeds
    assert any("clipped" in text.get_text() for text in fig.texts)


def test_figure_6b_gives_every_line_its_own_colour_and_style_and_each_panel_a_legend(drawn, tmp_path):
    layers = ["conv1", "conv2", "conv3", "conv4", "bn1", "bn2", "bn3", "bn4", "logits"]
    rows = lambda: [{"kind": "layer", "name": layer, "iteration": it, "mean": -0.01 * i, "frac_negative": 0.1}  # noqa: E731
                    for i, layer in enumerate(layers) for it in (0, 100)]  # fmt: skip
    runs = [{"lr_stats": rows(), "config": {"seed": seed}} for seed in (0, 1)]
    figures.fig6_over_training(runs, layers, tmp_path)
    (fig,) = drawn
    for ax in fig.axes:
        lines = [line for line in ax.lines if not line.get_label().startswith("_")]  # the zero line aside
        looks = {(matplotlib.colors.to_hex(line.get_color()), str(line.get_linestyle())) for line in lines}
        assert len(lines) == 18 and len(looks) == 18
        assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == 18
