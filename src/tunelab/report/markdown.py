"""`report.md`: the same content as the HTML page, with the figures as PNG files linked relatively."""
from __future__ import annotations

from .content import TOP_PROMPTS, Image, Report


def render(report: Report, figures: str) -> str:
    """The Markdown text; `figures` is the folder of the PNG files, relative to report.md."""
    out = [f"# {report.title}", ""]
    out += [f"- **{k}**: {_inline(v)}" for k, v in report.facts] + [""]

    out += ["## Recommendation", ""]
    pick = f"Recommended: {report.recommended}" if report.recommended else "No method to recommend"
    out += [f"> **{pick}**", ">", f"> {_inline(report.recommendation)}"]
    if len(report.tied) > 1:
        out += [">", f"> Tied with the best on the validation split: {', '.join(report.tied)}."]
    out.append("")

    out += ["## Results", ""]
    rows = []
    for row in report.table[1:]:
        method = row[0]
        if method in report.failed:
            row = [method, row[1], f"**failed:** {report.failed[method]}"] + [""] * (len(row) - 3)
        elif method == report.recommended:
            row = [f"**{method} ★**"] + row[1:]
        rows.append(row)
    out += _table(report.table[0], rows, numeric_from=2)
    out += ["", "★ the recommended method. Test columns are for information: the recommendation and early stopping "
            "use the validation split only.", ""]

    if report.charts:
        out += ["## Quality vs. cost", ""]
        for image in report.charts:
            out += _figure(image, figures)
    out += [note for n in report.notes for note in (n, "")]

    if report.curves:
        out += ["## Learning curves", ""] + _figure(report.curves, figures, heading=False)

    if report.confusions:
        out += ["## Confusion matrices (test split)", "",
                "Rows: the true label; columns: the predicted label; the diagonal holds the correct predictions.", ""]
        for image in report.confusions:
            out += _figure(image, figures)

    out += ["## Overfitting checks", ""]
    for method, found in report.warnings.items():
        if found:
            out.append(f"- **{method}**:")
            out += [f"  - ⚠ {_inline(w)}" for w in found]
        elif method in report.failed:
            out.append(f"- **{method}**: not checked: the run failed.")
        elif method in report.prompt_search:
            out.append(f"- **{method}**: nothing trained, so nothing to overfit; the prompt was chosen on the "
                       "validation split.")
        else:
            out.append(f"- **{method}**: no warning")
    out.append("")

    if report.tuning:
        out += ["## Hyper-parameter search", "",
                "Each method's settings were searched on the validation split; the best trial's setting is the one "
                "the comparison trained and reports above.", ""]
        if report.tuning_figure:
            out += _figure(report.tuning_figure, figures, heading=False)
        for t in report.tuning:
            out += [f"### Trials: {t.method}", "", _inline(t.summary), ""]
            cells = [[f"**{c}**" if c and row[-1].startswith("best") else c for c in row] for row in t.rows]
            out += _table(t.header, cells, numeric_from=None,
                          numeric=set(range(len(t.header) - 1)) - {1}) + [""]
        out += ["Completed trials first, best first; then trials stopped early (pruned), at the last value they "
                "reported after fewer epochs.", ""]

    for method, (header, rows, total) in report.prompt_search.items():
        out += [f"## Prompt search: {method}", "",
                f"The {min(total, TOP_PROMPTS)} best of {total} candidate prompts by validation score; ✓ marks the "
                "one kept (the simplest among the best).", ""]
        code = {i for i, h in enumerate(header) if "template" in h}
        cells = [[_code(c) if i in code else c for i, c in enumerate(row)] for row in rows]
        out += _table(header, cells, numeric_from=None, numeric=set(range(len(header))) - code) + [""]
    return "\n".join(out).rstrip() + "\n"


def _figure(image: Image, figures: str, heading: bool = True) -> list[str]:
    lines = ([f"### {image.title}", ""] if heading else []) + [f"![{image.title}]({figures}/{image.name}.png)", ""]
    return lines + ([_inline(image.caption), ""] if image.caption else [])


def _table(header: list[str], rows: list[list[str]], numeric_from: int | None,
           numeric: set[int] | None = None) -> list[str]:
    numeric = numeric if numeric is not None else set(range(numeric_from or 0, len(header)))
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(_inline(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(_inline(c) for c in row) + " |" for row in rows]


def _inline(text: str) -> str:
    """One table cell or paragraph: no line breaks, no stray table separators."""
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", " ")


def _code(text: str) -> str:
    """A template as inline code; its newlines shown as ⏎ so a table row stays one line."""
    text = text.replace("\n", "⏎")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"
