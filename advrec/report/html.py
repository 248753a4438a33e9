"""``report.html``: one self-contained page (inline CSS, inline base64 PNG plots and images,
no scripts, no external URL) rendered with Jinja2 (autoescaping every catalog-provided string).
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from advrec.report.findings import QUESTIONS
from advrec.report.plots import caption
from advrec.report.tables import Row, categories_line, fmt

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
.scroll{overflow-x:auto;max-height:520px}.sig{font-weight:bold;color:#a00}
.ans{display:inline-block;min-width:3.5em;text-align:center;border-radius:3px;padding:0 4px;margin-right:6px;
font-weight:bold;color:#fff}.yes{background:#b33}.no{background:#2a7}.partly{background:#c80}.na{background:#888}
.tiles{display:flex;gap:6px;align-items:flex-end;margin:4px 0}.tile{text-align:center;font-size:11px;width:100px}
.tile img{width:96px;height:96px;image-rendering:pixelated;border:3px solid transparent}
.tile.origin img{border-color:#c00}.plot img{max-width:100%}dl.kv dt{font-weight:bold;float:left;width:150px}
dl.kv dd{margin-left:160px}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>advrec report: {{ spec.name }}</title>
<style>{{ css }}</style></head><body>
<h1>advrec report: {{ spec.name }}</h1>
<p>Do adversarially robust image feature extractors protect visual recommenders?
Origin category <b>{{ scenario.origin }}</b> pushed toward target <b>{{ scenario.target }}</b>
(chosen by: {{ scenario.chosen_by }}).{% for w in scenario.warnings or [] %}
<b class="sig">Warning (scenario): {{ w }}.</b>{% endfor %} Headline K = {{ k }}.{% if spec.replicates > 1 %} Every model was trained {{ spec.replicates }} times
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
{% for name, e in extractors.items() %}{% if e.weak %}<p class="sig">Weak extractor: the {{ name }} extractor classifies
only {{ (100 * e.origin_recognition) | num }}% of the origin items as the origin class; its comparisons attack images
it already misreads.</p>{% endif %}{% endfor %}

<h2>Setup</h2>
<dl class="kv">
{% if dataset %}<dt>dataset</dt><dd>{{ dataset.name }}: {{ dataset.n_items }} items, {{ dataset.n_users }} users,
{{ dataset.n_train }} train / {{ dataset.n_test }} test interactions{% for note in dataset.notes or [] %};
<b class="sig">{{ note }}</b>{% endfor %}</dd>{% endif %}
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
{% for fid, question in questions.items() %}{% set group = findings | selectattr('id', 'equalto', fid) | list %}
{% if group %}<h3>{{ question }}</h3><ul>
{% for f in group %}<li><span class="ans {{ f.answer | replace('/', '') }}">{{ f.answer }}</span>{{ f.statement }}</li>
{% endfor %}</ul>{% endif %}{% endfor %}

<h2>Plots</h2>
{% for name, png in plots.items() %}<div class="plot"><h3>{{ caption(name) }}</h3>
<img alt="{{ name }}" src="data:image/png;base64,{{ png }}"></div>
{% endfor %}

<h2>Tables</h2>
{% for name, rows in tables.items() %}<h3>{{ name }}.csv</h3>
{% if rows %}<div class="scroll"><table><tr>{% for c in rows[0] %}<th{% if loop.index <= 4 %} class="l"{% endif %}>{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c, v in r.items() %}<td{% if loop.index <= 4 %} class="l"{% endif %}{% if c.endswith('significant') and v == 'yes' %} class="sig"{% endif %}>{{ v | cell }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% else %}<p>(empty)</p>{% endif %}{% endfor %}

<h2>Gallery</h2>
{% if gallery %}<p>{{ gallery.method | upper }} eps {{ gallery.eps }} under the <b>{{ gallery.extractor }}</b> extractor,
{{ gallery.recommender }} ({{ gallery.mode }}, replicate 0){% if gallery.significant %}: the first cell whose CHR@{{ gallery.k }}
rose significantly{% else %}: no cell rose significantly; this is the cell with the largest CHR@{{ gallery.k }} rise{% endif %}.
Red frame = origin-category item ({{ scenario.origin }}); "adv" = the attacked image the recommender saw.</p>
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
        extractors=results["extractors"], findings=results["findings"], questions=QUESTIONS, plots=plots,
        caption=caption, tables=tables, gallery=gallery, k=k, alpha=results["alpha"],
        version=results["advrec_version"], schema=results["schema_version"], tests=results.get("tests") or {},
        spec_json=json.dumps(spec_as_written(results["spec"]), indent=1), environment=results.get("environment") or {},
        categories=categories_line(results).removeprefix("categories: "),
    )
