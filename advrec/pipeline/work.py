"""How much work each step is, before it runs: the progress bar and the ETA count work, not steps.

Steps differ a thousandfold (a scenario choice takes milliseconds, an attack shard of 256 images
at 224 px minutes), so "steps done / steps" predicts nothing. Each step gets an estimate in **work
units** (about one millisecond of a 2-core CPU; the constants below were fitted to the step times
of ``advrec demo`` on such a machine) from what is known before it runs: images x attack
iterations x the backbone's multiply-accumulates per image for attack shards, the catalog size for
features, epochs x training interactions for recommender fits. Estimates are refined as facts
arrive (the extractor's input size, the number of origin items per shard once the scenario is
chosen).

:class:`EtaModel` turns estimates into a remaining time. Per step kind it learns the ratio of
measured seconds to estimated units from the steps that ran (falling back to the ratio over all
kinds, then to the prior), so an estimate that is off by a constant factor for one kind stops
mattering after that kind's first step. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from advrec.pipeline.spec import AttackGridSpec, PromotionAttackSpec
from advrec_common.conventions import NONADAPTIVE
from advrec_common.vision.backbone_names import BACKBONE_INPUT_SIZES
from services.attacker.spec import PROMOTION_ATTACKS

# one image's forward pass at the backbone's own input size, in ms on 2 CPU cores (torch 2.14, batches
# of 8-64, process CPU time / 2 so that other jobs on the machine do not count; small and depthwise
# nets are far slower per multiply-accumulate than ResNets, so MAC counts would mislead). vgg16 and
# alexnet are scaled from ResNet-50 by their FLOPs. Cost grows with the pixel count.
FWD_MS: dict[str, float] = {
    "tiny_cnn": 1.2, "small_cnn": 2.3, "efficientnet_lite0": 33.0, "resnet18": 24.0, "resnet50": 69.0,
    "vgg16": 260.0, "alexnet": 12.0,
}
DEFAULT_FWD_MS = 69.0  # unknown (timm) backbones: as ResNet-50
BACKWARD_FACTOR = 3.0  # a forward + backward pass (or a training step) costs about three forwards (measured 2-3.7)
MEASURE_FORWARDS = 10.0  # delivery, re-extraction and the per-image measurements of an attacked image
MS_PER_TRIPLE = {"bprmf": 0.004, "vbpr": 0.006, "amr": 0.012, "deepstyle": 0.008, "acf": 0.25, "dvbpr": 0.6}
MS_PER_SCORE = 2e-5  # one (user, item) score in a full ranking
FIXED_MS = {"dataset": 300.0, "extractor": 300.0, "scenario": 100.0, "adversarial": 100.0, "oracle": 300.0,
            "report": 3000.0, "promo_items": 100.0}


@dataclass(frozen=True)
class Work:
    """An estimate: ``units`` of work (~ms) for ``count`` of the step's own ``unit`` (images, epochs)."""

    units: float
    count: int = 1
    unit: str = "step"


def image_ms(backbone: str | None, size: int | None) -> float:
    """Forward ms of one image through ``backbone`` at ``size`` px (square; None: its own size)."""
    name = backbone or "resnet50"
    native = BACKBONE_INPUT_SIZES.get(name, 224)
    side = size or native
    return FWD_MS.get(name, DEFAULT_FWD_MS) * (side / native) ** 2


def attack_iterations(params: dict[str, Any]) -> int:
    """Model passes per image of an attack cell's (or a promotion attack's) parameters (the attacker's own count)."""
    grid = PromotionAttackSpec if params.get("method") in PROMOTION_ATTACKS else AttackGridSpec
    return grid.from_params(params).attack_spec(params["eps"], seed=0).passes_per_image()


@dataclass
class Facts:
    """What the estimates read: the catalog, the extractors and (once known) origin items per shard."""

    n_items: int
    n_users: int
    n_train: int
    n_categories: int = 10
    extractors: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)  # name -> (backbone, size)
    demo_images: dict[str, int] = field(default_factory=dict)  # name -> training images of a demo extractor
    rec_epochs: dict[str, int] = field(default_factory=dict)  # recommender -> epochs (max)
    origin_items: dict[tuple[int, int], int] | None = None  # (lo, hi) -> origin items in that slice
    decode_ms: float = 10.0  # reading one catalog image (decode, alpha, resize); ~0 for in-memory catalogs
    promoted_items: int = 0  # items a promotion attack perturbs
    replicates: int = 1
    passes_per_forward: dict[str, float] = field(default_factory=dict)  # a rung's view -> forwards per image (EOT)


def estimate(step: Any, facts: Facts) -> Work:
    """The work of one plan step (``step`` has ``name``, ``kind``, ``params``)."""
    kind, p, name = step.kind, step.params, step.name
    if kind == "features":
        ext = name.split("/", 1)[1]
        fwd = image_ms(*facts.extractors.get(ext, (None, None)))
        return Work(facts.n_items * (fwd + facts.decode_ms) + 1000.0, facts.n_items, "images")  # + a category head
    if kind == "attack_shard":
        ext = name.split("/")[1]
        lo, hi = p["items"]
        if facts.origin_items is not None and (lo, hi) in facts.origin_items:
            n = facts.origin_items[(lo, hi)]
        else:
            n = max(1, round((hi - lo) / max(facts.n_categories, 1)))
        fwd = image_ms(*facts.extractors.get(ext, (None, None)))
        eot = facts.passes_per_forward.get(ext, 1.0)  # an adaptive attacker's EOT draws
        per_image = (BACKWARD_FACTOR * attack_iterations(p) * eot + MEASURE_FORWARDS) * fwd + facts.decode_ms
        return Work(n * per_image + 500.0, n, "images")
    if kind in ("train", "evaluate"):
        rec = p["recommender"]
        epochs = int((p.get("config") or {}).get("epochs") or facts.rec_epochs.get(rec, 50))
        fit = epochs * facts.n_train * MS_PER_TRIPLE.get(rec, 0.05)
        if rec == "dvbpr":  # its CNN also encodes every item image when scoring
            fit += facts.n_items * 2.0
        scoring = facts.n_users * facts.n_items * MS_PER_SCORE * 4
        replicates = max(1, int(p.get("replicates") or 1))  # R seeds: R fits and R rankings
        # an evaluation also loads the attacked features, scores accuracy and runs the paired tests
        if kind == "evaluate" and p.get("mode") == "deployment":
            return Work(replicates * scoring + 100.0, 1, "step")
        fixed = 1500.0 if kind == "evaluate" else 300.0
        return Work(replicates * (fit + scoring) + fixed, epochs, "epochs")
    if kind == "placebo":  # every draw delivers and re-extracts each origin image once
        ext = name.split("/")[1]
        if facts.origin_items:
            n = sum(facts.origin_items.values())
        else:
            n = max(1, facts.n_items // max(facts.n_categories, 1))
        fwd = image_ms(*facts.extractors.get(ext, (None, None)))
        draws = max(1, int(p.get("draws") or 1))
        return Work(draws * n * (2.0 * fwd + facts.decode_ms) + 300.0, draws * n, "images")
    if kind == "extractor":
        ext = name.split("/", 1)[1]
        n = facts.demo_images.get(ext)
        if p.get("source") in ("demo", "train") and n:
            fwd = image_ms(*facts.extractors.get(ext, ("tiny_cnn", 64)))
            epochs = int(p.get("epochs") or 8)
            inner = int(p.get("pgd_steps") or 3) if p.get("defense") == "pgd_at" else 0
            train = 0.8 * n * epochs * BACKWARD_FACTOR * (1 + inner) * fwd
            robust_eval = 0.2 * n * 10 * BACKWARD_FACTOR * fwd  # PGD-10 on the held-out fifth
            return Work(train + robust_eval + FIXED_MS["extractor"], epochs, "epochs")
        return Work(FIXED_MS["extractor"])
    if kind == "promo_attack":  # per draw (one per replicate's model for insa), every promoted image attacked
        ext = name.split("/")[1]
        n = max(1, facts.promoted_items)
        iterations = attack_iterations(p)
        draws = facts.replicates if p.get("method") in ("insa", "insa_topk") else 1
        fwd = image_ms(*facts.extractors.get(ext, (None, None)))
        # the white-box objective scores every user against the replaced item state at every iteration
        objective = iterations * facts.n_users * n * MS_PER_SCORE * 4 if draws > 1 else 0.0
        eot = facts.passes_per_forward.get(ext, 1.0)
        per_image = (BACKWARD_FACTOR * iterations * eot + MEASURE_FORWARDS) * fwd + facts.decode_ms
        return Work(draws * (n * per_image + objective) + 300.0, draws * n, "images")
    if kind == "promo_transfer":
        ext = name.split("/")[1]
        n = max(1, facts.promoted_items) * facts.replicates
        return Work(n * (2.0 * image_ms(*facts.extractors.get(ext, (None, None))) + facts.decode_ms) + 300.0, n,
                    "images")
    if kind == "promo_evaluate":  # two standings (before, after) per replicate, and a fit in retrain
        scoring = facts.n_users * facts.n_items * MS_PER_SCORE * 4 * (1 + max(1, facts.promoted_items) / 10)
        replicates = max(1, int(p.get("replicates") or 1))
        if p.get("mode") == "deployment":
            return Work(2 * replicates * scoring + 100.0, 1, "step")
        rec = p["recommender"]
        epochs = int((p.get("config") or {}).get("epochs") or facts.rec_epochs.get(rec, 50))
        fit = epochs * facts.n_train * MS_PER_TRIPLE.get(rec, 0.05)
        return Work(replicates * (fit + 2 * scoring) + 1500.0, epochs, "epochs")
    if kind == "defense":  # the fitted kinds: PGD examples of the catalog, then training (denoiser) or scoring
        fwd = image_ms(*facts.extractors.get(name.split("/")[1], (None, None)))
        d = p.get("defense") or {}
        if d.get("kind") == "denoiser":
            examples = facts.n_items * int(d.get("pgd_steps") or 5) * BACKWARD_FACTOR * len(d.get("train_eps") or [1])
            return Work(fwd * (examples + facts.n_items * int(d.get("epochs") or 6) * 2 * BACKWARD_FACTOR) + 500.0,
                        int(d.get("epochs") or 6), "epochs")
        if d.get("kind") == "detector":
            return Work(fwd * facts.n_items * (3 + int(d.get("pgd_steps") or 10) * BACKWARD_FACTOR) + 500.0)
        return Work(FIXED_MS["extractor"])
    if kind == "transfer":  # the bare attack's images through the defense, measured and re-extracted
        ext = name.split("/")[1]
        n = max(1, facts.n_items // max(facts.n_categories, 1))
        fwd = image_ms(*facts.extractors.get(ext, (None, None)))
        return Work(n * (MEASURE_FORWARDS * fwd + facts.decode_ms) + 300.0, n, "images")
    if kind == "dataset":
        return Work(FIXED_MS["dataset"] + 3.0 * facts.n_items, 1, "step")
    return Work(FIXED_MS.get(kind, 100.0))


def work_facts(spec: Any, p: Any, store: Any) -> Facts:
    """What the work estimates read, from the spec (an ``EvaluationSpec``) and the stored dataset step of
    plan ``p`` (torch-free: the gateway process may plan a job whose dataset is already stored)."""
    from services.extractor.named_weights import NAMED_WEIGHTS
    from services.recommender.defaults import default_epochs

    meta = store.meta(p["dataset"].key).get("result", {})
    facts = Facts(n_items=int(meta.get("n_items", 0)), n_users=int(meta.get("n_users", 0)),
                  n_train=int(meta.get("n_train", 0)), decode_ms=0.5 if spec.dataset.kind == "demo" else 10.0)
    for ext in spec.extractors:
        if ext.source == "demo":
            facts.extractors[ext.name] = ("tiny_cnn", ext.image_size or spec.dataset.image_size)
            facts.demo_images[ext.name] = 10 * (ext.demo_images_per_class or 40)
        elif ext.source == "named" and ext.weight_name in NAMED_WEIGHTS:
            facts.extractors[ext.name] = (NAMED_WEIGHTS[ext.weight_name].backbone, ext.image_size)
        else:
            facts.extractors[ext.name] = (ext.backbone, ext.image_size)
            if ext.source == "train":
                facts.demo_images[ext.name] = facts.n_items
    for rec in spec.recommenders:
        facts.rec_epochs[rec.name] = int(rec.config.epochs or default_epochs(rec.name, rec.config.preset) or 50)
    facts.replicates = int(spec.replicates)
    _rung_facts(spec, facts)
    if spec.promotion is not None:
        items = spec.promotion.items
        facts.promoted_items = len(items.ids) if items.ids else int(items.least_exposed)
    return facts


class EtaModel:
    """Remaining time from work estimates, calibrated per step kind by the steps that ran.

    ``add(name, kind, units)`` registers a step to run; ``start``/``advance``/``finish`` follow it;
    :meth:`remaining_seconds` is the ETA. Pure bookkeeping (no clock): the caller passes seconds.
    """

    def __init__(self, prior_seconds_per_unit: float = 1e-3):
        self.prior = prior_seconds_per_unit
        self.units: dict[str, float] = {}
        self.kinds: dict[str, str] = {}
        self.done_units: dict[str, float] = {}  # finished steps, and the finished fraction of the current
        self._measured: dict[str, list[float]] = {}  # kind -> [seconds, units] of finished steps

    def add(self, name: str, kind: str, units: float) -> None:
        self.units[name] = max(float(units), 1e-3)
        self.kinds[name] = kind
        self.done_units.setdefault(name, 0.0)

    def set_units(self, name: str, units: float) -> None:
        """Refine the estimate of a step that has not finished yet."""
        if name in self.units:
            self.units[name] = max(float(units), 1e-3)

    def advance(self, name: str, fraction: float) -> None:
        """The step ``name`` is ``fraction`` (0..1) done."""
        self.done_units[name] = self.units[name] * min(max(fraction, 0.0), 1.0)

    def finish(self, name: str, seconds: float | None) -> None:
        """The step finished after ``seconds`` of compute (None: it was reused, nothing learnt)."""
        self.done_units[name] = self.units[name]
        if seconds is not None:
            m = self._measured.setdefault(self.kinds[name], [0.0, 0.0])
            m[0] += seconds
            m[1] += self.units[name]

    def rate(self, kind: str) -> float:
        """Seconds per unit for ``kind``: measured for the kind, else over all kinds, else the prior."""
        if kind in self._measured and self._measured[kind][1] > 0:
            return self._measured[kind][0] / self._measured[kind][1]
        total_s = sum(m[0] for m in self._measured.values())
        total_u = sum(m[1] for m in self._measured.values())
        return total_s / total_u if total_u > 0 and total_s > 0 else self.prior

    @property
    def total(self) -> float:
        return sum(self.units.values())

    @property
    def done(self) -> float:
        return sum(self.done_units.values())

    def remaining_seconds(self) -> float:
        return sum((self.units[n] - self.done_units[n]) * self.rate(self.kinds[n]) for n in self.units)


def wall_eta(remaining_step_seconds: float, busy_seconds: float, wall_seconds: float) -> float:
    """Wall time left when steps run concurrently: the remaining step-seconds divided by the
    concurrency measured so far (step-seconds of finished steps per second of wall time, at least 1:
    a sequential run's overheads never make its ETA longer)."""
    concurrency = busy_seconds / wall_seconds if wall_seconds > 0 else 1.0
    return remaining_step_seconds / max(1.0, concurrency)


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '1h12m'."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def origin_items_per_shard(categories: Iterable[int], origin: int, shards: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(lo, hi) -> how many items of category ``origin`` the slice holds."""
    cats = list(categories)
    return {(lo, hi): sum(1 for c in cats[lo:hi] if c == origin) for lo, hi in shards}


# -- admission: a job's work before it is queued -------------------------------------------------------

UNITS_PER_CPU_HOUR = 3_600_000.0  # a unit is about a millisecond of a 2-core CPU
DEMO_INTERACTIONS_PER_USER = 14.0  # the demo's shoppers make 8..20 choices; one per user is held out


def admission_facts(spec: Any, facts: dict[str, Any]) -> Facts:
    """What the estimates read, before anything ran: the spec and the preflight's counts (``facts``:
    ``n_items``, ``n_users``, ``n_interactions``, ``categories``, ``max_image_pixels``). Training pairs are
    the interactions less one held out per user (the demo's: its shoppers' mean choices)."""
    from services.extractor.named_weights import NAMED_WEIGHTS
    from services.recommender.defaults import default_epochs

    n_items = int(facts.get("n_items") or 0)
    n_users = int(facts.get("n_users") or 0)
    if spec.dataset.kind == "demo":
        n_train = int(n_users * (DEMO_INTERACTIONS_PER_USER - 1))
    elif facts.get("n_interactions"):
        n_train = max(0, int(facts["n_interactions"]) - n_users)
    else:  # the study layout: its size is known once loaded; assume 10 interactions per item
        n_train = 10 * n_items
    categories = facts.get("categories")
    out = Facts(n_items=n_items, n_users=n_users or max(1, n_train // 10), n_train=n_train,
                n_categories=len(categories) if isinstance(categories, list) and categories else 10,
                decode_ms=0.5 if spec.dataset.kind == "demo" else 10.0)
    native = int(facts["max_image_pixels"] ** 0.5) if facts.get("max_image_pixels") else None
    for ext in spec.extractors:
        if ext.source == "demo":
            out.extractors[ext.name] = ("tiny_cnn", ext.image_size or spec.dataset.image_size)
            out.demo_images[ext.name] = 10 * (ext.demo_images_per_class or 40)
        elif ext.source == "named" and ext.weight_name in NAMED_WEIGHTS:
            out.extractors[ext.name] = (NAMED_WEIGHTS[ext.weight_name].backbone, ext.image_size)
        else:
            out.extractors[ext.name] = (ext.backbone, ext.image_size or (None if ext.backbone else native))
            if ext.source == "train":
                out.demo_images[ext.name] = n_items
    for rec in spec.recommenders:
        out.rec_epochs[rec.name] = int(rec.config.epochs or default_epochs(rec.name, rec.config.preset) or 50)
    out.replicates = int(spec.replicates)
    _rung_facts(spec, out)
    if spec.promotion is not None:
        items = spec.promotion.items
        out.promoted_items = len(items.ids) if items.ids else int(items.least_exposed)
    return out


def _rung_facts(spec: Any, facts: Facts) -> None:
    """A defense rung's views run their extractor's model (a random rung, EOT's draws per forward when attacked
    adaptively; a detector, its two squeezed views too)."""
    for d in spec.defenses:
        base = facts.extractors.get(d.extractor, (None, None))
        facts.extractors[d.name] = facts.extractors[d.name + NONADAPTIVE] = base
        if d.kind == "resize_pad":
            facts.passes_per_forward[d.name] = float(d.resolved("eot_draws"))
        elif d.kind == "detector":
            facts.passes_per_forward[d.name] = 3.0


@dataclass(frozen=True)
class JobWork:
    """A job's estimated work: ``units`` in all, and what each part of the spec contributes."""

    units: float
    steps: int
    parts: dict[str, float]  # a spec path with what it names -> units

    @property
    def cpu_hours(self) -> float:
        return self.units / UNITS_PER_CPU_HOUR

    def largest(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` parts that cost the most, largest first."""
        return sorted(self.parts.items(), key=lambda kv: -kv[1])[:n]

    def to_json(self) -> dict[str, Any]:
        total = max(self.units, 1e-9)
        return {"units": round(self.units), "cpu_hours": round(self.cpu_hours, 3), "steps": self.steps,
                "largest": [{"part": part, "units": round(u), "share": round(u / total, 3)}
                            for part, u in self.largest(5)]}


def spec_part(step: Any, spec: Any) -> str:
    """Which part of ``spec`` a plan step's work comes from, as the spec path a user would shrink
    (``attacks[1] (pgd): steps x eps x origin items``)."""
    kind, p, parts = step.kind, step.params, step.name.split("/")
    if parts[0] in ("promote", "promote_eval") and spec.promotion is not None:  # promote/<view>/<method>/...
        method = parts[2] if len(parts) > 2 else ""
        for i, a in enumerate(spec.promotion.attacks):
            if a.method == method:
                what = ("users x catalog items x replicates x modes" if kind == "promo_evaluate"
                        else "steps x promoted items x replicates")
                return f"promotion.attacks[{i}] ({method}): {what}"
        return "promotion"
    rungs = {d.name: i for i, d in enumerate(spec.defenses)}
    view = parts[1] if len(parts) > 1 else ""
    rung = view.removesuffix(NONADAPTIVE)
    if kind in ("defense", "features") and rung in rungs:
        return f"defenses[{rungs[rung]}] ({rung}): fitting and the catalog's features behind it"
    if kind in ("attack_shard", "adversarial", "placebo", "transfer"):  # attack/<extractor>/<method>/eps<e>/...
        method = parts[2] if len(parts) > 2 else p.get("method")
        for i, a in enumerate(spec.attacks):
            if a.method == method:
                return f"attacks[{i}] ({a.method}): steps x eps budgets x origin items"
        return "attacks: steps x eps budgets x origin items"
    if kind in ("train", "evaluate", "scenario", "oracle"):
        name = p.get("recommender")
        for i, r in enumerate(spec.recommenders):
            if r.name == name:
                return f"recommenders[{i}] ({name}): config.epochs x replicates x training pairs"
        return "recommenders: config.epochs x replicates"
    if kind in ("extractor", "features"):
        ext = parts[1] if len(parts) > 1 else ""
        for i, e in enumerate(spec.extractors):
            if e.name == ext:
                what = "epochs x demo_images_per_class" if kind == "extractor" else "catalog items x image_size"
                return f"extractors[{i}] ({ext}): {what}"
    return "dataset" if kind == "dataset" else kind


def job_work(spec: Any, plan_: Any, facts: Facts) -> JobWork:
    """The estimated work of every step of ``plan_`` (:func:`estimate`, the progress bar's model), summed,
    and by the part of the spec it comes from."""
    parts: dict[str, float] = {}
    total = 0.0
    n = 0
    for step in plan_:
        units = float(estimate(step, facts).units)
        total += units
        n += 1
        part = spec_part(step, spec)
        parts[part] = parts.get(part, 0.0) + units
    return JobWork(units=total, steps=n, parts=parts)
