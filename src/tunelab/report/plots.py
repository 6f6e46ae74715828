"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are never registered globally, so building a report in a long-lived
process (a notebook, the compare loop) neither leaks figures nor depends on a display.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # a report is written on servers without a display
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, Formatter, FuncFormatter, MaxNLocator, NullFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

DPI = 110
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


@dataclass
class Point:
    """One method in a quality/cost chart; `interval` (lo, hi) of its quality is drawn as a vertical bar."""
    method: str
    cost: float
    quality: float
    color: str
    interval: tuple[float, float] | None = None


def colors(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every figure of the report."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def pareto(points: list[Point], lower_is_better: bool) -> list[Point]:
    """The non-dominated points, cheapest first: no other point is at most as costly and at least as good.

    Walking from the cheapest, a point is on the frontier when it is strictly better than every
    cheaper one; among equal costs the best comes first, so ties in cost keep only the best.
    """
    sign = 1 if lower_is_better else -1
    frontier: list[Point] = []
    for p in sorted(points, key=lambda p: (p.cost, sign * p.quality)):
        if not frontier or sign * p.quality < sign * frontier[-1].quality:
            frontier.append(p)
    return frontier


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _count(v: float, _pos: Any = None) -> str:
    """Parameter counts as people say them: 0 (at x = 1, the stand-in position of zero), 3.17k, 1M."""
    if v < 0.999:
        return ""
    if v < 1.001:
        return "0"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


class _Seconds(Formatter):
    """A linear time axis: as many decimals as the ticks' spacing needs, so 2.0, 2.1 … 2.4 s do not all read "2 s"
    (a tiny comparison's methods train in seconds); from 10 min, minutes with one decimal (round numbers only: a
    linear axis puts ticks at 125 s, which as minutes would read "2.08333 min")."""

    ticks: list[float] = []

    def set_locs(self, locs) -> None:  # the axis tells the formatter its ticks before labelling them
        self.ticks = list(locs)

    def __call__(self, v: float, pos: Any = None) -> str:
        if v >= 600:
            return f"{v / 60:.1f} min"
        steps = [b - a for a, b in zip(self.ticks, self.ticks[1:]) if b > a]
        # 1e-9: a spacing of 0.1 arrives as 0.09999…, whose log10 floors to -2
        decimals = min(3, max(0, -math.floor(math.log10(min(steps)) + 1e-9))) if steps else 0
        return f"{v:.{decimals}f} s"


# Ticks of a logarithmic time axis at durations people say: 1 s ... 30 s, 1 min ... 30 min, 1 h ... 24 h.
# (matplotlib's own ticks there are powers of ten, and across one decade it labels 2×10², 3×10² ... beside them.)
TIME_TICKS = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 4 * 3600, 8 * 3600, 24 * 3600]


def _duration(v: float, _pos: Any = None) -> str:
    return f"{v:.0f} s" if v < 60 else f"{v / 60:.0f} min" if v < 3600 else f"{v / 3600:.0f} h"


def quality_vs_cost(points: list[Point], metric: str, lower_is_better: bool, cost: str,
                    bars: str = "interval") -> bytes:
    """Test metric against trainable parameters (`cost="parameters"`) or training time (`cost="time"`).

    Zero trainable parameters (prompting) cannot sit on a log axis: such points are drawn at
    x = 1, which the axis labels "0", and their label says so. A point's `interval` is drawn as a
    vertical bar; `bars` names the bars in the legend ("90% interval").
    """
    return _png(quality_vs_cost_figure(points, metric, lower_is_better, cost, bars))


CAP = 3  # points either side of a bar: a label starts 8 points beside its marker, so it clears its own caps


def quality_vs_cost_figure(points: list[Point], metric: str, lower_is_better: bool, cost: str,
                           bars: str = "interval") -> Figure:
    fig = Figure(figsize=(5.6, 4.2))
    FigureCanvasAgg(fig)  # a renderer, to measure the point labels
    ax = fig.add_subplot()
    shown = [Point(p.method, max(p.cost, 1.0) if cost == "parameters" else max(p.cost, 0.01), p.quality, p.color,
                   p.interval) for p in points]
    costs = [p.cost for p in shown]
    log_x = cost == "parameters" or (min(costs) > 0 and max(costs) / min(costs) >= 10)
    if log_x:
        ax.set_xscale("log")
    frontier = pareto(shown, lower_is_better)
    label = "Pareto frontier (best for its cost)" if len(frontier) > 1 else \
        f"Pareto frontier: {frontier[0].method} alone (best and cheapest)"
    ax.plot([p.cost for p in frontier], [p.quality for p in frontier], "--", color="#555555", lw=1.2, zorder=1,
            label=label)
    on_frontier = {id(p) for p in frontier}
    _error_bars(ax, shown, bars)
    for p in shown:
        ax.scatter([p.cost], [p.quality], s=90, color=p.color, zorder=3, edgecolors="black" if id(p) in on_frontier
                   else "none", linewidths=1.4)
    if cost == "parameters":
        ax.xaxis.set_major_formatter(FuncFormatter(_count))
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_title(f"test {metric} vs. trainable parameters")
    else:
        if log_x:
            ax.xaxis.set_major_locator(FixedLocator(TIME_TICKS))
            ax.xaxis.set_major_formatter(FuncFormatter(_duration))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_formatter(_Seconds())
        ax.set_xlabel("training time" + (" (log scale)" if log_x else ""))
        ax.set_title(f"test {metric} vs. training time")
    ax.set_ylabel(f"test {metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.ticklabel_format(axis="y", useOffset=False)  # "+1" offsets above the axis puzzle readers
    ax.margins(x=0.18, y=0.22)
    ax.grid(True, alpha=0.3, which="major")
    legend = ax.legend(loc="best", fontsize=8, frameon=False)
    fig.draw_without_rendering()  # fixes the limits and the legend, so labels can be measured against them
    if cost == "time" and log_x:
        _drop_crowded_ticks(ax)
    _label_points(ax, shown, log_x, cost, points, [legend])
    return fig


def _error_bars(ax, shown: list[Point], label: str) -> None:
    """Each interval as a bar from lo to hi, drawn about its middle: with several seeds the point is a mean
    over seeds and the interval a bootstrap over examples, so the point need not sit at the bar's centre (or
    even inside it), and a bar drawn as ± from the point could not show that."""
    with_bars = [p for p in shown if p.interval is not None]
    for p in with_bars:
        lo, hi = sorted(p.interval)
        ax.errorbar([p.cost], [(lo + hi) / 2], yerr=[[(hi - lo) / 2], [(hi - lo) / 2]], fmt="none",
                    ecolor=p.color, elinewidth=1.6, capsize=CAP, capthick=1.6, alpha=0.75, zorder=2)
    if with_bars:  # one grey legend entry for every bar, as they all mean the same
        ax.errorbar([], [], yerr=[], fmt="none", ecolor="#555555", elinewidth=1.6, capsize=CAP, capthick=1.6,
                    label=label)


def _bar_box(ax, p: Point) -> Bbox | None:
    """The display-space box a point's bar and caps cover."""
    if p.interval is None:
        return None
    x, lo = ax.transData.transform((p.cost, min(p.interval)))
    _, hi = ax.transData.transform((p.cost, max(p.interval)))
    half = CAP * ax.figure.dpi / 72
    return Bbox.from_extents(x - half, lo, x + half, hi)


def _drop_crowded_ticks(ax) -> None:
    """Keeps a round-duration tick only where its label clears the last kept one: across 1.5 decades "20 min" and
    "30 min" ran into each other ("20 min30 min")."""
    renderer = ax.figure.canvas.get_renderer()
    lo, hi = sorted(ax.get_xlim())
    kept, right = [], -math.inf
    for label in ax.get_xticklabels():
        x = label.get_position()[0]
        if not (lo <= x <= hi and label.get_text()):
            continue
        box = label.get_window_extent(renderer)
        if box.x0 > right + 6:  # pixels of space between two labels
            kept.append(x)
            right = box.x1
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.figure.draw_without_rendering()


def _label_points(ax, shown: list[Point], log_x: bool, cost: str, original: list[Point], placed: list) -> None:
    def position(x: float) -> float:
        return math.log10(x) if log_x else x
    xs = [position(p.cost) for p in shown]
    lo, hi = min(xs), max(xs)
    # Every marker is an obstacle too: a label beside a neighbour's marker reads as that neighbour's; and every
    # bar: a label across a bar hides where the interval ends.
    markers = [_marker_box(ax, (p.cost, p.quality)) for p in shown]
    bars = [_bar_box(ax, p) for p in shown]
    for p, raw, bar in zip(shown, original, bars):
        right_side = hi > lo and (position(p.cost) - lo) / (hi - lo) > 0.7  # keep labels inside the axes
        text = p.method
        if cost == "parameters" and raw.cost == 0:
            text += " (0 trainable)"
        elif cost == "parameters":
            text += f" ({_count(raw.cost)})"
        else:
            text += f" ({raw.cost:.0f} s)" if raw.cost >= 10 else f" ({raw.cost:.1f} s)"
        own = _marker_box(ax, (p.cost, p.quality))
        obstacles = [m for m in markers if m.bounds != own.bounds] + [n.get_window_extent() for n in placed]
        others = [b for b in bars if b is not None and b is not bar]
        placed.append(_place(ax, text, (p.cost, p.quality), right_side, obstacles, p.interval, bar, others))


def _marker_box(ax, xy: tuple[float, float]) -> Bbox:
    """The display-space square a scatter marker of size 90 (≈ 9.5 points across) covers."""
    x, y = ax.transData.transform(xy)
    r = 5 * ax.figure.dpi / 72
    return Bbox.from_extents(x - r, y - r, x + r, y + r)


def _place(ax, text: str, xy: tuple[float, float], right_side: bool, obstacles: list[Bbox],
           interval: tuple[float, float] | None = None, bar: Bbox | None = None,
           bars: list[Bbox] | None = None) -> Any:
    """Annotate beside the point, trying the four corners, then (with a bar) centred above and below the bar,
    then level with the point and farther off, until the label lies inside the axes and clear of every
    obstacle (the other markers, the labels placed before, the legend), of the other `bars` and of its own bar.

    Where no place is clear, the one that covers least, a bar counting a quarter of a marker or label: a label
    across a thin bar still reads, one beside a neighbour's marker reads as the neighbour's."""
    renderer = ax.figure.canvas.get_renderer()
    # A label merely not touching a neighbour's marker still reads as its label: keep 4 points of space.
    pad = 4 * ax.figure.dpi / 72
    weighted = ([(other.padded(pad), 4.0) for other in obstacles] + [(other.padded(pad), 1.0) for other in bars or []]
                + ([(bar, 1.0)] if bar else []))
    frame = ax.get_window_extent()  # a label across the axes' edge runs into the tick labels or off the figure
    sides = [(-8, "right"), (8, "left")] if right_side else [(8, "left"), (-8, "right")]
    tries = [(xy, dx, dy, ha, "baseline") for dy in (7, -16) for dx, ha in sides]
    if interval:  # beyond the caps, where a label reads as the bar's (two points clear of the cap's line)
        tries += [((xy[0], max(interval)), 0, 2, "center", "bottom"), ((xy[0], min(interval)), 0, -2, "center", "top")]
    # Then level with the point, and farther up or down: among bars the four corners are often taken.
    tries += [(xy, dx, dy, ha, "baseline") for dy in (-3, 18, -27) for dx, ha in sides]
    best: tuple[float, Any] | None = None
    for anchor, dx, dy, ha, va in tries:
        note = ax.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=9)
        box = note.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        covered = sum(weight * _overlap(box, other) for other, weight in weighted)
        if inside and covered == 0:
            if best:
                best[1].remove()
            return note
        if inside and (best is None or covered < best[0]):
            if best:
                best[1].remove()
            best = (covered, note)
        else:
            note.remove()
    if best:
        return best[1]
    anchor, dx, dy, ha, va = tries[0]
    return ax.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=9)


def _overlap(a: Bbox, b: Bbox) -> float:
    """The area two display boxes share (0 when apart)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def learning_curves(histories: dict[str, list[dict[str, Any]]], best_epochs: dict[str, int], metric: str,
                    lower_is_better: bool, palette: dict[str, str]) -> bytes | None:
    """Train loss, validation loss and the validation metric against epochs, one line per method."""
    histories = {m: h for m, h in histories.items() if h}
    if not histories:
        return None
    panels = [("train_loss", "training loss"), ("validation_loss", "validation loss")]
    if metric != "loss":
        panels.append((f"validation_{metric}", f"validation {metric} ({'lower' if lower_is_better else 'higher'} "
                                               f"is better)"))
    fig = Figure(figsize=(4.4 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    # Distinct markers too: methods that learned the same thing draw the same line.
    markers = {m: "osD^v<>ph*"[i % 10] for i, m in enumerate(histories)}
    for ax, (key, title) in zip(axes, panels):
        for method, history in histories.items():
            rows = [r for r in history if isinstance(r.get(key), (int, float))]
            if not rows:
                continue
            xs, ys = [r["epoch"] for r in rows], [r[key] for r in rows]
            evaluated = key.startswith("validation_")
            # A line of one or two points is invisible without markers (a short run records one training loss).
            ax.plot(xs, ys, marker=markers[method] if evaluated or len(rows) < 3 else None, ms=5, lw=1.5,
                    color=palette[method], label=method, alpha=0.9)
            best = [r for r in rows if r["epoch"] == best_epochs.get(method)]
            if evaluated and best and key == f"validation_{metric}":
                ax.scatter([best[0]["epoch"]], [best[0][key]], s=140, facecolors="none", edgecolors=palette[method],
                           linewidths=1.8, zorder=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlim(left=0)  # from the start of training: a one-epoch run is not a dot in a 0.96-1.04 window
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    # The legend goes on the first panel that has lines (a run may record no training loss at all).
    next((ax for ax in axes if ax.get_lines()), axes[0]).legend(fontsize=8, frameon=False)
    if len(panels) == 3:
        axes[2].scatter([], [], s=140, facecolors="none", edgecolors="#555555", label="epoch kept (best)")
        axes[2].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def confusion(method: str, labels: list[str], matrix: list[list[int]]) -> bytes:
    """Counts on the test split, gold labels as rows and predictions as columns."""
    n = len(labels)
    side = min(12.0, max(3.0, 0.5 * n + 1.8))
    fig = Figure(figsize=(side + 0.7, side))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="examples")
    peak = max((v for row in matrix for v in row), default=0)
    if n <= 25:  # beyond this the numbers would not be readable
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=10 if n <= 10 else 7,
                        color="white" if peak and v > 0.55 * peak else "black")
    short = [label if len(label) <= 18 else label[:17] + "…" for label in labels]
    ax.set_xticks(range(n), short, rotation=45 if n > 2 or max(map(len, short)) > 8 else 0,
                  ha="right" if n > 2 else "center", fontsize=9)
    ax.set_yticks(range(n), short, fontsize=9)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"{method}: test split", fontsize=11)
    return _png(fig)
