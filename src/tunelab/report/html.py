"""`report.html`: one self-contained page (inline CSS, images as base64 data URIs) that opens from disk."""
from __future__ import annotations

import base64

import jinja2
from markupsafe import Markup, escape

from .content import TOP_PROMPTS, Image, Report

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ r.title }}</title>
<style>
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2125; margin: 0;
       background: #f6f7f9; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.facts { display: flex; flex-wrap: wrap; gap: 4px 24px; margin: 0; padding: 0; color: #4a525a; }
.facts div { display: flex; gap: 6px; } .facts dt { font-weight: 600; } .facts dd { margin: 0; word-break: break-all; }
.advice { margin: 20px 0; padding: 16px 20px; border-left: 6px solid #2f7d32; background: #eef7ee; border-radius: 4px; }
.advice .pick { font-size: 22px; font-weight: 700; margin-bottom: 6px; }
.advice.none { border-color: #b3261e; background: #fcefee; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e3e6ea; text-align: left; vertical-align: top; }
th { background: #f0f2f5; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.chosen td { background: #eef7ee; font-weight: 600; }
td:first-child { white-space: nowrap; }
tr.failed td { color: #b3261e; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap;
       background: #f3f4f6; padding: 1px 4px; border-radius: 3px; }
figure { margin: 12px 0; } figcaption { color: #4a525a; font-size: 13px; max-width: 640px; }
img { max-width: 100%; height: auto; display: block; }
.grid { display: flex; flex-wrap: wrap; gap: 16px 28px; align-items: flex-start; }
.grid figure { flex: 1 1 0; min-width: 400px; max-width: 660px; }
.note { color: #4a525a; font-size: 13px; }
ul.warnings li { color: #8a4b00; } .ok { color: #2f7d32; }
</style>
</head>
<body>
<main>
<h1>{{ r.title }}</h1>
<dl class="facts">{% for k, v in r.facts %}<div><dt>{{ k }}</dt><dd>{{ v }}</dd></div>{% endfor %}</dl>

<section class="advice{% if not r.recommended %} none{% endif %}" id="recommendation">
<div class="pick">
{% if r.recommended %}Recommended: {{ r.recommended }}{% else %}No method to recommend{% endif %}
</div>
<div>{{ r.recommendation }}</div>
{% if r.tied | length > 1 %}<div class="note">Tied with the best on the validation split: {{ r.tied | join(", ") }}.
</div>{% endif %}
</section>

<h2 id="results">Results</h2>
<div class="scroll"><table id="results-table">
<thead><tr>{% for h in r.table[0] %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in r.table[1:] %}{% set method = row[0] %}
{% if method in r.failed %}<tr class="failed"><td>{{ row[0] }}</td><td>{{ row[1] }}</td>
<td colspan="{{ row | length - 2 }}">failed: {{ r.failed[method] }}</td></tr>
{% else %}<tr{% if method == r.recommended %} class="chosen"{% endif %}>{% for cell in row %}
<td{% if loop.index > 2 %} class="num"{% endif %}>{{ cell }}
{%- if loop.first and method == r.recommended %} ★{% endif %}</td>{% endfor %}</tr>
{% endif %}{% endfor %}
</tbody></table></div>
<p class="note">★ the recommended method. Test columns are for information: the recommendation and early stopping
use the validation split only.</p>

{% if r.charts %}<h2 id="quality-vs-cost">Quality vs. cost</h2>
<div class="grid">{% for im in r.charts %}{{ figure(im) }}{% endfor %}</div>{% endif %}
{% for note in r.notes %}<p class="note">{{ note }}</p>{% endfor %}

{% if r.curves %}<h2 id="learning-curves">Learning curves</h2>{{ figure(r.curves) }}{% endif %}

{% if r.confusions %}<h2 id="confusion-matrices">Confusion matrices (test split)</h2>
<p class="note">Rows: the true label; columns: the predicted label; the diagonal holds the correct predictions.</p>
<div class="grid">{% for im in r.confusions %}{{ figure(im) }}{% endfor %}</div>{% endif %}

<h2 id="overfitting">Overfitting checks</h2>
<ul>{% for method, found in r.warnings.items() %}
<li><b>{{ method }}</b>: {% if found %}<ul class="warnings">{% for w in found %}<li>{{ w }}</li>{% endfor %}</ul>
{% elif method in r.failed %}not checked: the run failed.
{% elif method in r.prompt_search %}nothing trained, so nothing to overfit; the prompt was chosen on the validation
split.
{% else %}<span class="ok">no warning</span>{% endif %}</li>{% endfor %}</ul>

{% if r.tuning %}<h2 id="hyper-parameter-search">Hyper-parameter search</h2>
<p class="note">Each method's settings were searched on the validation split; the best trial's setting is the one
the comparison trained and reports above.</p>
{% if r.tuning_figure %}{{ figure(r.tuning_figure) }}{% endif %}
{% for t in r.tuning %}
<h3 id="trials-{{ t.method }}">Trials: {{ t.method }}</h3>
<p>{{ t.summary }}</p>
<div class="scroll"><table class="trials">
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr{% if row[-1].startswith("best") %} class="chosen"{% endif %}>
{% for cell in row %}<td{% if not loop.last and loop.index != 2 %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}
</tr>{% endfor %}</tbody>
</table></div>
{% endfor %}
<p class="note">Completed trials first, best first; then trials stopped early (pruned), at the last value they
reported after fewer epochs.</p>
{% endif %}

{% for method, (header, rows, total) in r.prompt_search.items() %}
<h2 id="prompt-search-{{ method }}">Prompt search: {{ method }}</h2>
<p class="note">The {{ [total, top] | min }} best of {{ total }} candidate prompts by validation score; ✓ marks
the one kept (the simplest among the best).</p>
<div class="scroll"><table>
<thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr>{% for cell in row %}{% set h = header[loop.index0] %}
{% if "template" in h %}<td><code>{{ cell }}</code></td>{% else %}<td class="num">{{ cell }}</td>{% endif %}
{% endfor %}</tr>{% endfor %}</tbody>
</table></div>
{% endfor %}
</main>
</body>
</html>
"""

_env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(image: Image) -> Markup:
    out = (f'<figure id="{image.name}"><img src="{data_uri(image.png)}" alt="{escape(image.title)}">')
    if image.caption:
        out += f"<figcaption>{escape(image.caption)}</figcaption>"
    return Markup(out + "</figure>")


def render(report: Report) -> str:
    return _env.from_string(TEMPLATE).render(r=report, figure=_figure, top=TOP_PROMPTS)
