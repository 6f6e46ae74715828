"""The comparison report: built from a real comparison on the tiny model, checked as files and in a browser."""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape
from matplotlib.container import ErrorbarContainer
from matplotlib.transforms import Bbox

from tunelab.cli import main
from tunelab.comparison import compare
from tunelab.errors import TunelabError
from tunelab.report import plots, write_report
from tunelab.report.plots import Point, pareto

CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"
METHODS = ["prompt", "lora", "full"]


def _config(data: Path, model: Path, task: str, epochs: int) -> dict:
    # As conftest's `tiny_config`, which is per test: a comparison is trained once per module here.
    return {"task": task, "model": str(model),
            "data": {"source": str(data), "max_length": 16, "split": {"validation": 0.2, "test": 0.2}},
            "method": {"name": "lora"},
            "methods": {"prompt": {"shots": [0, 4]}},
            "train": {"epochs": epochs, "batch_size": 8, "precision": "fp32", "log_every": 2,
                      "early_stopping": {"patience": 0}}}


@pytest.fixture(scope="module")
def classification(tiny_csv, tiny_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("comparisons")
    result = compare(_config(tiny_csv, tiny_bert, "classification", 2), methods=METHODS, output=out, name="sentiment",
                     log=lambda _: None)
    return Path(result["folder"])


def _images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def _results_table(page: str) -> str:
    match = re.search(r'<table id="results-table">.*?</table>', page, re.S)
    assert match, "the results table is missing"
    return match.group(0)


def test_report_files(classification):
    page = (classification / "report.html").read_text()
    md = (classification / "report.md").read_text()
    comparison = json.loads((classification / "comparison.json").read_text())

    table = _results_table(page)
    for method in METHODS:
        assert f"<td>{method}" in table, method
        assert re.search(rf"^\| (\*\*)?{method}\b", md, re.M), method
    assert str(escape(comparison["recommendation"]["text"])) in page
    assert comparison["recommendation"]["text"] in md

    # Self-contained: every image inline, each a real PNG; nothing fetched from elsewhere.
    sources = _images(page)
    assert len(sources) == 2 + 1 + len(METHODS)  # two quality/cost charts, the learning curves, a confusion each
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "<script" not in page

    # The Markdown links the same figures as files next to it.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(sources)
    for link in links:
        assert not Path(link).is_absolute()
        assert (classification / link).read_bytes().startswith(PNG), link

    for section in ("Quality vs. cost", "Learning curves", "Confusion matrices", "Overfitting checks",
                    "Prompt search: prompt"):
        assert section in page and section in md, section
    search = page.split("Prompt search: prompt", 1)[1]
    assert "✓" in search and search.count("<code>") >= 2  # the templates, and the kept prompt marked
    assert not list(classification.glob(".report-*")), "a temporary folder was left behind"


def test_cli_rebuilds_the_report_with_a_failed_method(classification, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(classification, folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    comparison["methods"].append("adapter")
    comparison["rows"].append({"method": "adapter", "family": "peft", "status": "failed",
                               "reason": "killed by the system (out of memory?)", "seconds": 3.0})
    (folder / "comparison.json").write_text(json.dumps(comparison))
    (folder / "report.html").unlink()
    (folder / "report.md").unlink()
    (folder / "figures" / "stale.png").write_bytes(PNG)

    assert main(["report", str(folder)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    assert "killed by the system (out of memory?)" in _results_table(page)
    assert re.search(r"^\| adapter \| peft \| \*\*failed:\*\* killed by the system", md, re.M)
    assert not (folder / "figures" / "stale.png").exists(), "figures of an earlier report were kept"
    assert not list(folder.glob(".report-*"))


TRIALS = [  # lora's search: completed, pruned (with and without a value), failed; trial 2 is the best
    {"number": 0, "state": "COMPLETE", "params": {"learning_rate": 5e-4, "r": 8}, "value": 0.61, "epochs": 2,
     "seconds": 4.0, "default": True, "error": None},
    {"number": 1, "state": "PRUNED", "params": {"learning_rate": 1e-5, "r": 4}, "value": 0.40, "epochs": 1,
     "seconds": 2.0, "default": False, "error": None},
    {"number": 2, "state": "COMPLETE", "params": {"learning_rate": 2e-3, "r": 16}, "value": 0.72, "epochs": 2,
     "seconds": 4.5, "default": False, "error": None},
    {"number": 3, "state": "FAIL", "params": {"learning_rate": 3e-3, "r": 16}, "value": None, "epochs": None,
     "seconds": 1.0, "default": False, "error": "CUDA out of memory"},
]
TUNING = {"metric": "f1", "direction": "maximize", "trials": TRIALS,
          "best": {"number": 2, "params": {"learning_rate": 2e-3, "r": 16}, "value": 0.72},
          "default": {"params": {"learning_rate": 5e-4, "r": 8}, "value": 0.61}, "seconds": 11.5}


def _rebuild(folder: Path, monkeypatch) -> list:
    """Rebuilds the report; returns the quality/cost figures it drew, to inspect what the PNGs show."""
    drawn, draw = [], plots.quality_vs_cost_figure
    monkeypatch.setattr(plots, "quality_vs_cost_figure", lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1])
    write_report(folder)
    return drawn


def _bars(fig) -> list[tuple[float, float]]:
    """(lowest, highest) y of each error bar drawn (the legend's empty stand-in has no segments)."""
    out = []
    for container in fig.axes[0].containers:
        if isinstance(container, ErrorbarContainer):
            for collection in container.lines[2]:
                out += [(min(s[:, 1]), max(s[:, 1])) for s in collection.get_segments()]
    return out


def _near(got: list[tuple[float, float]], want: list[tuple[float, float]]) -> bool:
    return len(got) == len(want) and all(g == pytest.approx(w) for g, w in zip(got, want))


def test_report_shows_intervals_seeds_and_the_search(classification, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(classification, folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    n = json.loads((folder / "runs" / "lora" / "metrics.json").read_text())["splits"]["test"]
    comparison.update(confidence=0.8, resamples=500, seeds=[0, 1, 2], sizes={"validation": n, "test": n})
    intervals = {"prompt": [0.2, 0.5], "lora": [0.3, 0.9], "full": [0.35, 0.55]}
    for row in comparison["rows"]:
        row["interval"] = {"validation": None, "test": intervals[row["method"]]}
        row["tuning"] = TUNING if row["method"] == "lora" else None
        if row["method"] != "prompt":  # prompt trains nothing: one run serves every seed
            row["runs"] = [{"seed": s, "run_folder": row["run_folder"], "validation": row["validation"],
                            "test": row["test"], "fit_seconds": row["fit_seconds"]} for s in (0, 1, 2)]
            row["spread"] = {"validation": {"f1": 0.01}, "test": {"f1": 0.02}}
    comparison["recommendation"]["tied"] = ["lora", "full"]
    (folder / "comparison.json").write_text(json.dumps(comparison))

    figures = _rebuild(folder, monkeypatch)
    assert len(figures) == 2  # against parameters and against time
    for fig in figures:
        assert _near(sorted(_bars(fig)), sorted(tuple(v) for v in intervals.values()))
    page = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    for text in (page, md):
        assert f"Bars: 80% bootstrap interval over the {n} test examples (500 resamples)." in text
        assert "Points are the mean of 3 training seeds (prompt: one run, as it trains nothing)." in text
        assert "Tied with the best on the validation split: lora, full." in text
        assert "Hyper-parameter search" in text and "Trials: lora" in text and "Trials: full" not in text
    trials = re.search(r'<h3 id="trials-lora">.*?</table>', page, re.S).group(0)
    rows = re.findall(r"<tr[^>]*>\s*<td class=\"num\">(\d+)</td>", trials)
    assert rows == ["2", "0", "1", "3"]  # completed best first, then pruned, then the failed one
    assert "CUDA out of memory" in trials and "untuned setting" in trials
    assert "2e-3" in trials and "0.7200" in trials
    assert 'id="tuning"' in page and (folder / "figures" / "tuning.png").read_bytes().startswith(PNG)
    assert "lora ranges from 0.61 to 0.72 over learning rates from 5e-4 to 2e-3" in page
    assert len(_images(page)) == 2 + 1 + len(METHODS) + 1  # and the search's figure


def test_a_comparison_from_before_intervals_and_tuning_still_builds(classification, tmp_path, monkeypatch):
    folder = tmp_path / "old"
    shutil.copytree(classification, folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    for key in ("confidence", "resamples", "seeds", "sizes", "per_seed"):
        comparison.pop(key, None)
    for row in comparison["rows"]:
        for key in ("runs", "spread", "interval", "difference", "tuning"):
            row.pop(key, None)
    comparison["recommendation"].pop("tied", None)
    (folder / "comparison.json").write_text(json.dumps(comparison))

    figures = _rebuild(folder, monkeypatch)
    assert len(figures) == 2 and all(_bars(fig) == [] for fig in figures)
    assert all(not fig.axes[0].containers for fig in figures)  # not even the legend's stand-in
    page = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    for text in (page, md):
        assert "Bars:" not in text and "Hyper-parameter search" not in text and "Tied with" not in text
        assert "training seeds" not in text and "bootstrap" not in text
    assert len(_images(page)) == 2 + 1 + len(METHODS)
    assert not (folder / "figures" / "tuning.png").exists()


def test_report_of_a_folder_without_comparison(tmp_path, capsys):
    with pytest.raises(TunelabError, match="comparison.json not found"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "tunelab compare" in capsys.readouterr().err


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(Array.from(document.images, i => [i.alt, i.complete && i.naturalWidth > 0]));
  document.body.appendChild(out);
});
</script>
"""


def test_report_opens_in_chromium(classification, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: run `make setup`, which installs Debian's chromium package")
    page = (classification / "report.html").read_text()
    # A copy with a script that lists, once the page has loaded, whether each image decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, "the page did not finish loading"
    images = json.loads(html.unescape(found.group(1)))
    assert len(images) == len(_images(page)) > 0
    assert [alt for alt, loaded in images if not loaded] == []
    assert 'id="results-table"' in dom and all(f"<td>{m}" in dom for m in METHODS)

    screenshot = tmp_path / "report.png"
    _chromium(f"--screenshot={screenshot}", "--window-size=1400,3000", (classification / "report.html").as_uri(),
              profile=tmp_path / "profile")
    data = screenshot.read_bytes()
    assert data.startswith(PNG)
    assert int.from_bytes(data[16:20], "big") == 1400  # IHDR width: the whole window was drawn


@pytest.mark.long(seconds=4)
def test_regression_report(tiny_regression_csv, tiny_bert, tmp_path):
    result = compare(_config(tiny_regression_csv, tiny_bert, "regression", 1), methods=["lora", "full"],
                     output=tmp_path, name="scores", log=lambda _: None)
    folder = Path(result["folder"])
    page = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    table = _results_table(page)
    assert "<th>test mse" in table and "<td>lora" in table and "<td>full" in table
    assert "test accuracy" not in table  # a column no regression fills is left out
    assert "mse (lower is better)" in page
    assert "Confusion" not in page and "Confusion" not in md
    assert len(_images(page)) == 3 and all(s.startswith("data:image/png;base64,") for s in _images(page))


def test_pareto_frontier():
    def points(*pairs):
        return [Point(f"m{i}", cost, quality, "k") for i, (cost, quality) in enumerate(pairs)]
    higher = points((0, 0.6), (10, 0.5), (100, 0.8), (1000, 0.8), (1000, 0.9))
    assert [p.method for p in pareto(higher, lower_is_better=False)] == ["m0", "m2", "m4"]
    lower = points((5, 1.0), (1, 2.0), (9, 0.5), (7, 1.5))
    assert [p.method for p in pareto(lower, lower_is_better=True)] == ["m1", "m0", "m2"]


def test_prompt_table_shows_fields_that_only_some_candidates_have(tmp_path):
    # An uncalibrated decoder candidate has no `calibration`; the calibrated ones say what they divided by.
    from tunelab.report import _prompt_search
    rows = [{"template": "{text}", "label_template": "Answer: {label}", "shots": 0, "verbalizer": "label",
             "calibrate": False, "validation_f1": 0.7},
            {"template": "{text}", "label_template": "Answer: {label}", "shots": 0, "verbalizer": "label",
             "calibrate": True, "calibration": "inputs", "validation_f1": 0.8}]
    (tmp_path / "model").mkdir()
    (tmp_path / "prompt_search.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "model" / "prompt.json").write_text(json.dumps({"chosen": {k: v for k, v in rows[1].items()
                                                                           if k != "validation_f1"}}))
    header, cells, n = _prompt_search(tmp_path, "f1")
    assert n == 2 and header[-3:] == ["calibrated on", "validation f1", "chosen"]
    assert cells[0][-3:] == ["–", "0.7000", ""] and cells[1][-3:] == ["training inputs", "0.8000", "✓"]


def test_a_log_time_axis_is_labelled_in_round_durations():
    """Across one decade matplotlib labelled 2×10², 3×10² … beside "16.7 min"; the ticks are durations people say."""
    points = [Point("prompt", 182, 0.818, "C0"), Point("lora", 1984, 0.869, "C1"), Point("adapter", 1143, 0.858, "C2"),
              Point("full", 1745, 0.871, "C3")]
    assert _time_ticks(points) == ["2 min", "5 min", "10 min", "20 min"]  # 30 min would touch 20 min


def test_time_tick_labels_never_run_into_each_other():
    """The translation comparison (98 s to 1572 s) drew "20 min30 min" as one word."""
    points = [Point("prompt", 98, 14.9, "C0"), Point("lora", 1572, 25.7, "C1"), Point("adapter", 956, 22.5, "C2"),
              Point("full", 1361, 22.9, "C3")]
    assert _time_ticks(points) == ["1 min", "2 min", "5 min", "10 min", "20 min"]
    for spread in (30, 100, 300, 1000, 3000):
        _time_ticks([Point("a", 60, 0.5, "C0"), Point("b", 60 * spread, 0.7, "C1")])  # asserts no overlap


def test_a_short_linear_time_axis_tells_its_ticks_apart():
    """Two methods of a tiny comparison (2.0 s and 2.4 s) had every tick labelled "2 s"."""
    labels = _time_ticks([Point("lora", 2.0, 0.33, "C0"), Point("full", 2.4, 0.33, "C1")])
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(re.fullmatch(r"\d\.\d s", t) for t in labels), labels
    labels = _time_ticks([Point("a", 100, 0.5, "C0"), Point("b", 300, 0.7, "C1")])  # round seconds stay round
    assert all(re.fullmatch(r"\d+ s", t) for t in labels), labels


def _time_ticks(points) -> list[str]:
    from tunelab.report.plots import quality_vs_cost_figure
    fig = quality_vs_cost_figure(points, "f1", False, "time")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and lo <= t.get_position()[0] <= hi]
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in labels]
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, [t.get_text() for t in labels]
    return [t.get_text() for t in labels]


@pytest.mark.parametrize("bars", [False, True])
@pytest.mark.parametrize("cost", ["parameters", "time"])
def test_a_point_label_keeps_clear_of_other_markers_and_inside_the_axes(cost, bars):
    """Today's demo drew "full (22.7M)" starting right at the adapter marker, where it read as the adapter's label.
    With ±0.03 bars, "full (22.7M)" fell back onto the adapter's marker and bar: no corner beside full was free."""
    from tunelab.report.plots import CAP, quality_vs_cost_figure
    costs = {"parameters": [0, 222_338, 374_690, 22_713_986], "time": [21, 156, 129, 246]}[cost]
    points = [Point(m, c, q, f"C{i}", (q - 0.035, q + 0.03) if bars else None) for i, (m, c, q) in enumerate(zip(
        ["prompt", "lora", "adapter", "full"], costs, [0.7310, 0.7860, 0.8303, 0.8171]))]
    fig = quality_vs_cost_figure(points, "f1", False, cost)
    ax = fig.axes[0]
    gap = 4 * fig.dpi / 72  # points → pixels
    frame = ax.get_window_extent()
    assert len(ax.texts) == len(points)
    for text in ax.texts:
        box = text.get_window_extent(fig.canvas.get_renderer())
        # With the padding, "full (22.7M)" moved right of its point and out of the axes frame.
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
        own = text.get_text().split()[0]
        for p in points:
            x, y = ax.transData.transform((max(p.cost, 1), p.quality))  # prompt's 0 is drawn at 1
            if p.method != own:
                r = 5 * fig.dpi / 72 + gap
                assert not box.overlaps(Bbox.from_extents(x - r, y - r, x + r, y + r)), (text.get_text(), p.method)
            if p.interval:  # no label across a bar, its own included (other bars with the same space as markers)
                half = CAP * fig.dpi / 72 + (gap if p.method != own else 0)
                lo, hi = (ax.transData.transform((1, v))[1] for v in p.interval)
                bar = Bbox.from_extents(x - half, lo - (gap if p.method != own else 0), x + half,
                                        hi + (gap if p.method != own else 0))
                assert not box.overlaps(bar), (text.get_text(), p.method)


def test_a_bar_spans_its_interval_even_where_the_point_lies_outside_it():
    """With seeds, the point is the mean over seeds and the interval a bootstrap of the seed-averaged
    predictions: the two need not agree, and a bar drawn as ± from the point would misstate the interval."""
    points = [Point("lora", 1000, 0.80, "C0", (0.81, 0.86)), Point("full", 10**6, 0.82, "C1", (0.78, 0.84)),
              Point("prompt", 0, 0.70, "C2")]
    fig = plots.quality_vs_cost_figure(points, "f1", False, "parameters", "90% interval")
    assert _near(sorted(_bars(fig)), [(0.78, 0.84), (0.81, 0.86)])
    assert "90% interval" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
