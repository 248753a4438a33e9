"""``report.html``: one self-contained page (inline CSS, inline base64 PNG plots and images,
no scripts, no external URL) rendered with Jinja2 (autoescaping every catalog-provided string).
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from advrec.report.answers import TONE_LEGEND, caveat, overview, segment_text, tone
from advrec.report.plots import caption, title
from advrec.report.tables import Row, categories_line, fmt

# Colour means one thing on the whole page: whether an answer is good news for the shop (answers.TONES), never
# yes/no; significance is bold, warnings are a neutral caution box.
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:24px}h2{font-size:20px;border-bottom:1px solid #ccc;margin-top:36px}h3{font-size:16px;margin:22px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:right;white-space:nowrap}th{background:#f3f3f3}.scroll th{position:sticky;top:0}td.l,th.l{text-align:left}
.scroll{overflow-x:auto;max-height:520px}.sig{font-weight:bold}
.warn{border-left:4px solid #555;background:#f4f4f4;padding:6px 10px;margin:8px 0}
.ans{display:inline-block;min-width:3.2em;text-align:center;border-radius:3px;padding:0 5px;margin-right:6px;
font-weight:bold;color:#fff;line-height:1.5}
.ans.good{background:#2e7d32}.ans.bad{background:#c62828}.ans.mixed{background:#9a5700}.ans.info{background:#2f5f9e}
.ans.untested{background:#767676}
td.t-good{background:#e6f4ea;color:#1b5e20}td.t-bad{background:#fdecea;color:#b71c1c}
td.t-mixed{background:#fff3e0;color:#7a4500}td.t-info{background:#e8f0fb;color:#1f4e8c}
td.t-untested{background:#f0f0f0;color:#555}
ul.legend{list-style:none;padding:0;margin:6px 0 14px}ul.legend li{margin:3px 0}
p.lead{font-size:16px;margin:4px 0}p.lead .seg{margin-right:14px}p.note,p.why{font-size:13px;color:#555;margin:2px 0}
table.grid td,table.grid th{text-align:center}table.grid td.l{text-align:left}
details{margin:6px 0 4px}summary{cursor:pointer;color:#2f5f9e}details ul li{margin:6px 0}
.tiles{display:flex;gap:6px;align-items:flex-end;margin:4px 0}.tile{text-align:center;font-size:12px;width:100px;
overflow-wrap:anywhere}.tile img{width:96px;height:96px;image-rendering:pixelated;border:3px solid transparent}
.tile.origin img{border-color:#000}.plot img{max-width:100%}.plot p{font-size:13px;color:#444;margin:2px 0 4px}
dl.kv dt{font-weight:bold;float:left;width:150px}dl.kv dd{margin-left:160px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>advrec report: {{ spec.name }}</title>
<style>{{ css }}</style></head><body>
<h1>advrec report: {{ spec.name }}</h1>
<p>Do adversarially robust image feature extractors protect visual recommenders?
Origin category <b>{{ scenario.origin }}</b> pushed toward target <b>{{ scenario.target }}</b>
(chosen by: {{ scenario.chosen_by }}).{% for w in scenario.warnings or [] %}
<b>Warning (scenario): {{ w }}.</b>{% endfor %} Headline K = {{ k }}.{% if spec.replicates > 1 %} Every model was trained {{ spec.replicates }} times
(seeds {{ spec.seed }}..{{ spec.seed + spec.replicates - 1 }}); an effect is the mean over those replicates of
(after - before) with its 95% interval across them, tested with a paired t-test across replicates (the exact
sign-flip test when every replicate changed by the same amount); every verdict
decides on Benjamini-Hochberg adjusted p-values at a false discovery rate of {{ alpha }} over the
{{ tests.n_tests }} tests of this run ({{ tests.n_significant }} significant).{% else %} Every model was trained
once (seed {{ spec.seed }}): an effect is after - before of that one model, with no interval and no test (set
replicates to 3 or more for verdicts).{% endif %} Each attack is shown beside its
<b>placebo</b> (the same perturbations in random directions) and the <b>oracle</b> (each origin item given the features
of a real target item: a perfect visual disguise, the most moving features can do); a change counts in a finding only
when it is significant and beyond its placebo's. advrec {{ version }}, results schema {{ schema }}.</p>
{% for name, e in extractors.items() %}{% if e.weak %}<p class="warn">Weak extractor: the {{ name }} extractor classifies
only {{ (100 * e.origin_recognition) | num }}% of the origin items as the origin class; its comparisons attack images
it already misreads.</p>{% endif %}{% endfor %}

<h2>Setup</h2>
<dl class="kv">
{% if dataset %}<dt>dataset</dt><dd>{{ dataset.name }}: {{ dataset.n_items }} items, {{ dataset.n_users }} users,
{{ dataset.n_train }} train / {{ dataset.n_test }} test interactions{% for note in dataset.notes or [] %};
<b>{{ note }}</b>{% endfor %}</dd>{% endif %}
<dt>extractors</dt><dd>{% for name, e in extractors.items() %}<b>{{ name }}</b> ({{ e.backbone }},
{{ e.defense or e.source }}{% if e.report %}, clean acc {{ e.report.clean_accuracy | num }},
robust acc {{ e.report.robust_accuracy | num }} at eps {{ e.report.eval_eps | num }}{% endif %};
{{ e.n_origin_items }} origin items; categories from {{ e.category_source or 'n/a' }}){% if not loop.last %}; {% endif %}{% endfor %}</dd>
{% if categories %}<dt>categories</dt><dd>{{ categories }}</dd>{% endif %}
<dt>attacks</dt><dd>{% for a in spec.attacks %}{{ a.method }} eps {{ a.eps | map('num') | join(', ') }} ({{ a.norm }},
{{ a.budget_space }} budget, {{ a.delivery }} delivery{% if a.steps %}, {{ a.steps }} steps{% endif %}){% if not loop.last %};
{% endif %}{% endfor %}</dd>
<dt>recommenders</dt><dd>{{ spec.recommenders | map(attribute='name') | join(', ') }}</dd>
<dt>modes, K</dt><dd>{{ spec.modes | join(', ') }}; K = {{ spec.ks | join(', ') }}</dd>
<dt>seed, replicates</dt><dd>{{ spec.seed }}, {{ spec.replicates }}</dd>
<dt>controls</dt><dd>{{ spec.controls | join(', ') or 'none' }}</dd>
{% if environment.cpu_isa or environment.torch %}<dt>computed with</dt><dd>torch {{ environment.torch | join(', ') }},
CPU kernels {{ environment.cpu_isa | join(', ') }}{% if environment.threads %}; CPU threads per step kind:
{% for kind, counts in environment.threads.items() %}{{ kind }} {{ counts | join('/') }}{% if not loop.last %}, {% endif %}{% endfor %}{% endif %}
(trained models are the same only for the same torch build, CPU kernels and thread counts)</dd>{% endif %}
</dl>

<h2>Findings</h2>
<p>Each question is answered first, in one line and one small table; the statements with every number (effects,
intervals, adjusted p-values) are folded under "the numbers". A badge's colour says whether the answer is good
news for the shop, not whether it is yes or no:</p>
<ul class="legend">{% for t, text in tone_legend.items() %}<li><span class="ans {{ t }}">{{ t }}</span>{{ text }}</li>
{% endfor %}</ul>
{% if caveat %}<p class="warn"><b>Caveat (scenario):</b> {{ caveat }}</p>{% endif %}
{% for q in overview %}<section id="finding-{{ q.id }}"><h3>{{ q.question }}</h3>
<p class="lead">{% for seg in q.lead %}<span class="seg"><span class="ans {{ seg.tone }}" title="{{ tone_legend[seg.tone] }}">{{ seg.answer }}</span>{{ segment_text(q.id, seg, loop.first) }}</span>{% endfor %}</p>
<p class="why">Colour: {{ q.reason }}.</p>
{% if q.grid %}<table class="grid">{% for hrow in q.grid.header %}<tr>{% for h in hrow %}<th{% if h.colspan > 1 %} colspan="{{ h.colspan }}"{% endif %}{% if h.rowspan > 1 %} rowspan="{{ h.rowspan }}"{% endif %}>{{ h.text }}</th>{% endfor %}</tr>
{% endfor %}{% for row in q.grid.rows %}<tr>{% for c in row %}<td{% if c.label %} class="l"{% elif c.tone and not c.badge %} class="t-{{ c.tone }}"{% endif %}{% if c.title %} title="{{ c.title }}"{% endif %}>{% if c.badge %}<span class="ans {{ c.tone }}">{{ c.text }}</span>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="note">{{ q.grid.note }}.</p>{% endif %}
<details><summary>the numbers ({{ q.findings | length }} {{ 'statement' if q.findings | length == 1 else 'statements' }})</summary><ul>
{% for f in q.findings %}<li><span class="ans {{ tone(f.id, f.answer) }}">{{ f.answer }}</span>{{ f.statement }}</li>
{% endfor %}</ul></details></section>
{% endfor %}

<h2>Plots</h2>
{% for name, png in plots.items() %}<div class="plot"><h3>{{ title(name) }}</h3><p>{{ caption(name) }}</p>
<img alt="{{ name }}" src="data:image/png;base64,{{ png }}"></div>
{% endfor %}

<h2>Tables</h2>
<p>Every number of the report, as in <code>tables/*.csv</code>.</p>
{% for name, rows in tables.items() %}<details><summary>{{ name }}.csv ({{ rows | length }} rows)</summary>
{% if rows %}<div class="scroll"><table><tr>{% for c in rows[0] %}<th{% if loop.index <= 4 %} class="l"{% endif %}>{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c, v in r.items() %}<td{% if loop.index <= 4 %} class="l"{% endif %}{% if c.endswith('significant') and v == 'yes' %} class="sig"{% endif %}>{{ v | cell }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% else %}<p>(empty)</p>{% endif %}</details>{% endfor %}

<h2>Gallery</h2>
{% if gallery %}<p>{{ gallery.method | upper }} eps {{ gallery.eps }} under the <b>{{ gallery.extractor }}</b> extractor,
{{ gallery.recommender }} ({{ gallery.mode }}, replicate 0){% if gallery.significant %}: the first cell whose CHR@{{ gallery.k }}
rose significantly{% else %}: no cell rose significantly; this is the cell with the largest CHR@{{ gallery.k }} rise{% endif %}.
Black frame = origin-category item ({{ scenario.origin }}); "adv" = the attacked image the recommender saw.</p>
{% for u in gallery.users %}<h3>user {{ u.user }}: top-{{ gallery.top_n }} gained {{ u.gain }} origin item(s)</h3>
{% for label, tiles in (('before', u.before), ('after', u.after)) %}<div class="tiles"><b style="width:50px">{{ label }}</b>
{% for t in tiles %}<div class="tile{% if t.origin %} origin{% endif %}"><img alt="{{ t.item }}" src="data:image/png;base64,{{ t.png }}"><br>
{{ t.item }}{% if t.adversarial_image %} (adv){% endif %}</div>{% endfor %}</div>
{% endfor %}{% endfor %}
{% if gallery.perturbations %}<h3>Attacked items: clean, adversarial and the perturbation magnified</h3>
<div class="plot"><img alt="perturbations" src="data:image/png;base64,{{ gallery.perturbations }}"></div>{% endif %}
{% else %}<p>No gallery (no evaluation, no users requested, or no dataset artifact).</p>{% endif %}

<h2>Spec</h2>
<details><summary>the evaluation spec as run</summary><pre>{{ spec_json }}</pre></details>
</body></html>
"""


# The spec block shows the spec as its author would recognise it: without the fields only another
# dataset kind reads (a generic catalog's spec carried the demo's n_items, n_users, image_size, seed)
# and without unset (null) knobs; results.json keeps the whole spec.
_KIND_ONLY = {"n_items": "demo", "n_users": "demo", "image_size": "demo", "seed": "demo", "root": "study",
              "images_dir": "generic", "interactions": "generic", "categories": "generic", "columns": "generic",
              "category_columns": "generic", "kcore": "generic"}


def spec_as_written(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without the dataset fields its kind does not read and without null fields of extractors."""
    dataset = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
    kind = dataset.get("kind", "demo")
    shown = {**spec, "dataset": {k: v for k, v in dataset.items() if _KIND_ONLY.get(k, kind) == kind and v is not None}}
    if isinstance(spec.get("extractors"), list):
        shown["extractors"] = [{k: v for k, v in e.items() if v is not None and v != {}} if isinstance(e, dict) else e
                               for e in spec["extractors"]]
    return shown


def render_html(results: dict[str, Any], tables: dict[str, list[Row]], plots: dict[str, str],
                gallery: dict[str, Any] | None, k: int) -> str:
    """The whole page as one string."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True)
    env.filters["num"] = lambda v: fmt(v, 3) or "n/a"
    env.filters["cell"] = lambda v: "" if v is None else (fmt(v) if isinstance(v, float) else v)
    template = env.from_string(_TEMPLATE)
    return template.render(
        css=_CSS, spec=results["spec"], scenario=results["scenario"], dataset=results.get("dataset"),
        extractors=results["extractors"], overview=overview(results), caveat=caveat(results), tone=tone,
        tone_legend=TONE_LEGEND, segment_text=segment_text, plots=plots, caption=caption, title=title,
        tables=tables, gallery=gallery, k=k, alpha=results["alpha"],
        version=results["advrec_version"], schema=results["schema_version"], tests=results.get("tests") or {},
        spec_json=json.dumps(spec_as_written(results["spec"]), indent=1), environment=results.get("environment") or {},
        categories=categories_line(results).removeprefix("categories: "),
    )
