"""The report's hyper-parameter search section (src/tunelab/report/tuning.py): the figure and the trials tables."""
from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba

from tunelab.report import tuning

LORA = {"metric": "f1", "direction": "maximize", "seconds": 200.0,
        "trials": [
            {"number": 0, "state": "COMPLETE", "params": {"learning_rate": 5e-4, "r": 8}, "value": 0.80, "epochs": 3,
             "seconds": 40.0, "default": True, "error": None},
            {"number": 1, "state": "COMPLETE", "params": {"learning_rate": 2e-3, "r": 16}, "value": 0.83, "epochs": 3,
             "seconds": 41.0, "default": False, "error": None},
            {"number": 2, "state": "PRUNED", "params": {"learning_rate": 1e-5, "r": 4}, "value": 0.55, "epochs": 1,
             "seconds": 12.0, "default": False, "error": None},
            {"number": 3, "state": "PRUNED", "params": {"learning_rate": 3e-5, "r": 4}, "value": None, "epochs": 0,
             "seconds": 3.0, "default": False, "error": None},
            {"number": 4, "state": "COMPLETE", "params": {"learning_rate": 1e-4, "r": 4}, "value": 0.62, "epochs": 3,
             "seconds": 40.0, "default": False, "error": None},
            {"number": 5, "state": "RUNNING", "params": {"learning_rate": 1e-3, "r": 8}, "value": None,
             "epochs": None, "seconds": None, "default": False, "error": None}],
        "best": {"number": 1, "params": {"learning_rate": 2e-3, "r": 16}, "value": 0.83},
        "default": {"params": {"learning_rate": 5e-4, "r": 8}, "value": 0.80}}
# The brief's format without tune.summary's `default`/`error` flags, a minimised metric and no untuned figure.
FULL = {"metric": "loss", "direction": "minimize", "seconds": 90.0,
        "trials": [{"number": 0, "state": "COMPLETE", "params": {"learning_rate": 5e-5}, "value": 0.40, "epochs": 2,
                    "seconds": 45.0},
                   {"number": 1, "state": "COMPLETE", "params": {"learning_rate": 2e-5}, "value": 0.35, "epochs": 2,
                    "seconds": 45.0}],
        "best": {"number": 1, "params": {"learning_rate": 2e-5}, "value": 0.35}, "default": None}
PALETTE = {"lora": "#1f77b4", "full": "#ff7f0e"}


def _near(got: list[tuple[float, float]], want: list[tuple[float, float]]) -> bool:
    return len(got) == len(want) and all(g == pytest.approx(w) for g, w in zip(got, want))


def _scatters(ax) -> list[tuple[list[tuple[float, float]], str]]:
    """Each scatter's points and fill: "filled", "hollow" (white) or "ring" (no fill)."""
    out = []
    for collection in ax.collections:
        face = collection.get_facecolors()
        fill = "ring" if len(face) == 0 or face[0][3] == 0 else "hollow" if tuple(face[0]) == to_rgba("white") \
            else "filled"
        out.append(([tuple(p) for p in collection.get_offsets()], fill))
    return out


def test_each_trial_is_drawn_by_its_state_against_its_learning_rate():
    fig, caption = tuning.figure({"lora": LORA}, PALETTE, lower_is_better=False)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "lora"
    drawn = _scatters(ax)
    assert _near(sorted(p for points, fill in drawn if fill == "filled" for p in points),
                 [(1e-4, 0.62), (5e-4, 0.80), (2e-3, 0.83)])
    # A pruned trial sits at its last reported value; one that reported none (and the running one) is left out.
    assert _near([p for points, fill in drawn if fill == "hollow" for p in points], [(1e-5, 0.55)])
    assert _near([p for points, fill in drawn if fill == "ring" for p in points], [(2e-3, 0.83)])
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {0.80}  # the untuned setting
    # The completed trials' spread, not the pruned one's partial value.
    assert "lora ranges from 0.62 to 0.83 over learning rates from 1e-4 to 2e-3 (3 completed trials)" in caption


def test_one_panel_per_tuned_method_on_a_shared_metric_axis():
    fig, caption = tuning.figure({"lora": LORA, "full": FULL}, PALETTE, lower_is_better=False)
    lora, full = (ax for ax in fig.axes if ax.get_visible())
    assert full.get_title() == "full" and full.get_shared_y_axes().joined(lora, full)
    assert not [line for line in full.get_lines() if line.get_linestyle() == "--"]  # no untuned figure known
    assert "full ranges from 0.35 to 0.40 over learning rates from 2e-5 to 5e-5" in caption


def test_trials_table_best_first_then_pruned_then_the_rest():
    (lora, full) = tuning.tables({"lora": LORA, "full": FULL})
    assert lora.header == ["trial", "state", "learning rate", "r", "validation f1", "epochs", "seconds", "note"]
    assert [row[0] for row in lora.rows] == ["1", "0", "4", "2", "3", "5"]
    assert lora.rows[0] == ["1", "completed", "2e-3", "16", "0.8300", "3", "41", "best: trained for the comparison"]
    assert lora.rows[1][-1] == "untuned setting" and lora.rows[3][1] == "pruned" and lora.rows[-1][4] == ""
    assert lora.summary.startswith("6 trials (3 completed, 2 pruned, 1 running) in 3.3 min.")
    assert "Best: trial 1 (learning rate 2e-3, r 16), validation f1 0.8300, against 0.8000 at the untuned " \
           "setting (+0.0300)." in lora.summary
    # Lower is better: the smaller loss first; no flags, so the untuned trial is the one with the default params.
    assert [row[0] for row in full.rows] == ["1", "0"] and full.rows[1][-1] == ""
    assert "untuned" not in full.summary


def test_no_figure_when_no_trial_has_a_learning_rate():
    searched = {**FULL, "trials": [{**t, "params": {"frozen_layers": 2}} for t in FULL["trials"]]}
    assert tuning.figure({"full": searched}, PALETTE, lower_is_better=True) is None
    assert [row[2] for row in tuning.tables({"full": searched})[0].rows] == ["2", "2"]
