"""The evaluation spec: one versioned, pydantic-validated document describes a whole study.

The same model validates a YAML/JSON file (``advrec run SPEC``), the ``demo``/``study`` presets
and the body of ``POST /v1/jobs``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from advrec_common.conventions import NONADAPTIVE
from advrec_common.datasets.generic_layout import CategoryColumns, InteractionColumns
from advrec_common.errors import InvalidInput, invalid
from advrec_common.validation import validation_problems
from advrec_common.vision.defenses.spec import DefenseSpec
from services.attacker.spec import (
    METHODS,
    PROMOTION_ATTACKS,
    PROMOTION_METHODS,
    AttackParams,
    AttackSpec,
    delivery_problem,
    eps_unit_problem,
)
from services.extractor.named_weights import NAMED_WEIGHTS
from services.extractor.train_config import TrainOverrides
from services.recommender.config import RecConfig, config_problems
from services.recommender.kinds import RECOMMENDER_NEEDS, reads_items, uses_extractor

SPEC_VERSION = 1
DEMO_DEFENSES = ("standard", "pgd_at", "free_at")
# Admission bounds: what one spec may ask for at most (per-key quotas in the settings come on top)
MAX_SEED = 2**32 - 1
Eps = Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
K = Annotated[int, Field(gt=0, le=10_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """Where the catalog and interactions come from."""

    kind: Literal["demo", "study", "generic"] = "demo"
    # demo
    n_items: int = Field(600, ge=20, le=200_000)
    n_users: int = Field(800, ge=10, le=2_000_000)
    image_size: int = Field(64, ge=16, le=512)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # study layout: <root>/original/images/<id>.jpg, trainingset.tsv, testset.tsv
    root: Path | None = None
    # generic layout
    images_dir: Path | None = None
    interactions: Path | None = None
    categories: Path | None = None
    columns: InteractionColumns = Field(default_factory=InteractionColumns,
                                        description="which interactions columns hold user, item, time, rating")
    category_columns: CategoryColumns = Field(default_factory=CategoryColumns,
                                              description="which categories columns hold the item and its label")
    kcore: int = Field(0, ge=0, le=1000)

    @model_validator(mode="after")
    def _paths_for_kind(self) -> DatasetSpec:
        if self.kind == "study" and self.root is None:
            raise ValueError("dataset.kind 'study' needs dataset.root")
        if self.kind == "generic" and (self.images_dir is None or self.interactions is None):
            raise ValueError("dataset.kind 'generic' needs dataset.images_dir and dataset.interactions")
        return self

    @field_serializer("columns", "category_columns")
    def _columns_as_given(self, columns: InteractionColumns | CategoryColumns) -> dict[str, Any]:
        return columns.model_dump(mode="json", exclude_unset=True)

    def step_params(self) -> dict[str, Any]:
        """The dataset step's parameters: the column settings only for file catalogs (stable keys)."""
        params = self.model_dump(mode="json")
        if self.kind != "generic":
            params.pop("columns")
            params.pop("category_columns")
        return params


class ExtractorSpec(_Strict):
    """One defense variant: a demo-trained extractor, a checkpoint file, a named weight, or a model
    trained here on the catalog's own images and labels (``train``, optionally from ``init_weights``)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    source: Literal["demo", "checkpoint", "named", "train"] = "demo"
    defense: Literal["standard", "pgd_at", "free_at"] | None = None
    backbone: str | None = Field(None, description="backbone of a checkpoint (the demo chooses its own)")
    checkpoint: Path | None = None
    layout: str = "auto"
    weight_name: str | None = None
    image_size: int | None = Field(None, ge=16, le=1024,
                                   description="bring catalog images to this square size for features, attacks and "
                                               "the gallery (None: the extractor's own input size)")
    image_fit: Literal["crop", "pad", "stretch"] = Field(
        "crop", description="how images of another shape become square: crop (shorter side + center crop), "
                            "pad (white borders) or stretch")
    demo_images_per_class: int | None = Field(None, ge=10, le=5000, description="None: the demo's default")
    epochs: int | None = Field(None, ge=1, le=500, description="training epochs of a demo or train extractor "
                                                                "(None: the defense's default)")
    init_weights: str | None = Field(None, description="train: a named weight to fine-tune from (None: from scratch)")
    training: TrainOverrides = Field(default_factory=TrainOverrides,
                                     description="train: batch_size, optimizer, lr, eps, pgd_steps ... (None: defaults)")

    @field_serializer("training")
    def _training_as_given(self, training: TrainOverrides) -> dict[str, Any]:
        return training.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _source_fields(self) -> ExtractorSpec:
        if self.source == "demo" and self.defense is None:
            if self.name not in DEMO_DEFENSES:
                raise ValueError(f"extractor {self.name!r}: source 'demo' needs defense in {DEMO_DEFENSES}")
            self.defense = self.name  # type: ignore[assignment]
        if self.source == "checkpoint" and (self.checkpoint is None or self.backbone is None):
            raise ValueError(f"extractor {self.name!r}: source 'checkpoint' needs checkpoint and backbone")
        if self.source == "named" and not self.weight_name:
            raise ValueError(f"extractor {self.name!r}: source 'named' needs weight_name")
        if self.source == "named" and self.weight_name not in NAMED_WEIGHTS:
            raise ValueError(f"extractor {self.name!r}: unknown weight_name {self.weight_name!r}; known: "
                             f"{sorted(NAMED_WEIGHTS)}")
        if self.source == "train":
            if self.defense is None or self.backbone is None:
                raise ValueError(f"extractor {self.name!r}: source 'train' needs defense (standard, pgd_at or free_at) "
                                 f"and backbone")
            if self.init_weights is not None:
                if self.init_weights not in NAMED_WEIGHTS:
                    raise ValueError(f"extractor {self.name!r}: unknown init_weights {self.init_weights!r}; known: "
                                     f"{sorted(NAMED_WEIGHTS)}")
                if NAMED_WEIGHTS[self.init_weights].backbone != self.backbone:
                    raise ValueError(f"extractor {self.name!r}: init_weights {self.init_weights!r} are a "
                                     f"{NAMED_WEIGHTS[self.init_weights].backbone!r}, not backbone {self.backbone!r}")
        return self


class AttackGridSpec(_Strict):
    """One attack method over a list of budgets; ``params`` holds the method's own knobs."""

    method: str
    eps: list[Eps] = Field(default_factory=lambda: [4.0, 8.0], min_length=1, max_length=32)
    norm: Literal["linf", "l2"] = "linf"
    steps: int | None = Field(None, ge=1, le=100_000)
    step_size: float | None = Field(None, gt=0, le=100_000, allow_inf_nan=False)
    budget_space: Literal["pixel", "normalized"] = "pixel"
    delivery: Literal["png8", "png8_truncate", "float", "jpeg"] = Field(
        "png8", description="png8: 8-bit, rounded inside the budget; png8_truncate: the study's truncation; "
        "float: lossless; jpeg: JPEG at jpeg_quality")
    jpeg_quality: int = Field(90, ge=1, le=95)
    params: AttackParams = Field(default_factory=AttackParams,
                                 description="the method's own knobs (e.g. cw_steps, random_start, queries)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown attack {v!r}; known: {sorted(METHODS)}")
        if v == "score":
            raise ValueError("'score' maximises a recommender's differentiable score function, which a spec cannot "
                             "supply: use it from Python (services.attacker.attacks.run_attack(..., score_fn=...)); "
                             "in a spec, 'feature_match' pulls the features toward the target category's, and "
                             "promotion.attacks runs 'insa' (a recommender's score of the seller's own item)")
        if v in PROMOTION_METHODS:
            raise ValueError(f"{v!r} promotes a seller's own items, not a category: list it under promotion.attacks")
        return v

    @field_validator("eps")
    @classmethod
    def _eps_ok(cls, v: list[float]) -> list[float]:
        if any(not math.isfinite(e) or e < 0 for e in v):
            raise ValueError("eps must be finite and >= 0 (in /255 units)")
        for e in v:
            if problem := eps_unit_problem(e):
                raise ValueError(problem)
        return sorted(set(v))

    @model_validator(mode="after")
    def _valid_attacks(self) -> AttackGridSpec:
        """Every (method, eps) is a valid :class:`AttackSpec` (norm, budget space, eps = 0 ...), and the
        delivery can carry the budget (never a silent zero perturbation)."""
        if problem := delivery_problem(self.budget_space, self.delivery):
            raise ValueError(problem)
        if self.method in METHODS:
            for eps in self.eps:
                try:
                    self.attack_spec(eps, seed=0)
                except ValidationError as exc:
                    raise ValueError("; ".join(msg for _, msg in validation_problems(exc))) from None
        return self

    @field_serializer("params")
    def _params_as_given(self, params: AttackParams) -> dict[str, Any]:
        # only the fields the spec set: dumps (records, artifact parameters, keys) stay as written
        return params.model_dump(mode="json", exclude_unset=True)

    def attack_params(self) -> dict[str, Any]:
        """The grid entry as artifact parameters (``params`` without unset fields: stable keys)."""
        return self.model_dump(mode="json", exclude={"eps"})

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AttackGridSpec:
        """The grid entry of one cell's artifact parameters (:meth:`attack_params` + ``eps``)."""
        fields = {k: params[k] for k in cls.model_fields if k in params and k != "eps"}
        return cls.model_validate({**fields, "eps": [params["eps"]]})

    def attack_spec(self, eps: float, seed: int) -> AttackSpec:
        """The attacker's :class:`AttackSpec` of one budget of this grid entry."""
        return AttackSpec(method=self.method, eps=eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                          budget_space=self.budget_space, seed=seed,
                          **self.params.model_dump(exclude_unset=True))


class PromotionAttackSpec(AttackGridSpec):
    """One item-promotion attack over a list of budgets (``insa``, ``insa_topk``, ``expa``, or the ``noise``
    baseline)."""

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in PROMOTION_ATTACKS:
            raise ValueError(f"unknown promotion attack {v!r}; known: {list(PROMOTION_ATTACKS)} (category attacks such "
                             f"as fgsm or pgd go under attacks)")
        return v


class PromotedItems(_Strict):
    """Which items the seller promotes: ``ids`` (catalog item ids), or the ``least_exposed`` N items of
    ``category`` (None: the scenario's origin) in the clean top-K lists (ties in catalog order)."""

    ids: list[str] | None = Field(None, min_length=1, max_length=10_000)
    category: str | None = None
    least_exposed: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_way(self) -> PromotedItems:
        if self.ids is not None and self.category is not None:
            raise ValueError("give either ids or category (with least_exposed), not both")
        if self.ids is not None and len(set(self.ids)) != len(self.ids):
            raise ValueError("ids lists an item twice")
        return self


class UserSegment(_Strict):
    """The users whose scores INSA raises: all of them, or those who bought in ``category``."""

    category: str | None = None


class PromotionSpec(_Strict):
    """Item promotion (Liu & Larson): a seller perturbs the images of their own items. Per attacked item:
    prediction shift, share of users whose score rose, HR@K and share of top-K slots, median rank change;
    with a placebo per attack, replicates and the run's Benjamini-Hochberg family."""

    items: PromotedItems = Field(default_factory=PromotedItems)
    attacks: list[PromotionAttackSpec] = Field(..., min_length=1, max_length=8)
    users: UserSegment = Field(default_factory=UserSegment,
                               description="whose scores the insider raises (insa, insa_topk); default all users")
    transfer_from: str | None = Field(None, description="an extractor name: its attacked images are also delivered "
                                                        "to every other extractor (a transfer attack)")
    modes: list[Literal["retrain", "deployment"]] | None = Field(
        None, min_length=1, description="None: the spec's modes")
    topk_temperature: float = Field(0.5, gt=0, le=100, allow_inf_nan=False,
                                    description="insa_topk: the sigmoid's temperature, in units of the users' score "
                                                "spread")
    expa_targets: int = Field(10, ge=1, le=10_000, description="expa: how many of the most exposed items to imitate")

    @field_validator("attacks")
    @classmethod
    def _cells_unique(cls, v: list[PromotionAttackSpec]) -> list[PromotionAttackSpec]:
        seen: set[tuple[str, float]] = set()
        for i, grid in enumerate(v):
            for eps in grid.eps:
                if (grid.method, eps) in seen:
                    raise ValueError(f"attacks[{i}]: {grid.method} at eps {eps:g} is listed twice")
                seen.add((grid.method, eps))
        return v


class DefenseEntry(DefenseSpec):
    """One rung of the defense ladder (``defenses[i]``): a defense in front of ``extractor`` (None: the first
    extractor with ``defense: standard``, else the first one), shown as ``name`` (None: its label, e.g.
    ``jpeg-q75``). Every image the shop ingests, clean and attacked alike, passes the defense before the
    extractor. Each rung is measured against two attackers: the adaptive one (BPDA, EOT, end to end, or
    detector-aware: it attacks the composition; shown as ``name``) and the non-adaptive one (it attacks the
    bare extractor, the defense is applied after; shown as ``name`` + ``.nonadaptive``)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,39}$")
    extractor: str | None = None


class ScenarioSpec(_Strict):
    """Origin (pushed) and target categories; both None = chosen automatically like the study.

    ``category_source``: where items' categories come from. "extractor" = the class each defense's
    extractor assigns to the clean image (the study's protocol, for catalogs without labels);
    "catalog" = the catalog's own labels (the same origin items under every defense, so the
    defenses are compared on equal terms); "auto" = the catalog's labels when every item has one
    and they are class names of the extractor, else the extractor's classes.
    """

    category_source: Literal["auto", "catalog", "extractor"] = "auto"
    origin: str | None = None
    target: str | None = None
    select_k: int = Field(20, ge=1, le=10_000)
    min_items: int = Field(5, ge=1, le=1_000_000)


class RecommenderSpec(_Strict):
    """One recommender and its training settings (``config``: the recommender's :class:`RecConfig`)."""

    name: str
    config: RecConfig = Field(default_factory=RecConfig)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in RECOMMENDER_NEEDS:
            raise ValueError(f"unknown recommender {v!r}; known: {sorted(RECOMMENDER_NEEDS)}")
        return v

    @model_validator(mode="after")
    def _config_fits(self) -> RecommenderSpec:
        problems = config_problems(self.name, self.config)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_serializer("config")
    def _config_as_given(self, config: RecConfig) -> dict[str, Any]:
        # only the fields the spec set: dumps (records, artifact parameters, keys) stay as written
        return config.model_dump(mode="json", exclude_unset=True)

    def config_params(self) -> dict[str, Any]:
        """The config as artifact parameters: only the fields the spec set (stable keys)."""
        return self.model_dump(mode="json")["config"]


class EvaluationSpec(_Strict):
    """A robustness evaluation: defenses x attacks x budgets x recommenders on one dataset."""

    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field("evaluation", pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    extractors: list[ExtractorSpec] = Field(..., min_length=1, max_length=16)
    attacks: list[AttackGridSpec] = Field(..., min_length=1, max_length=32)
    recommenders: list[RecommenderSpec] = Field(..., min_length=1, max_length=16)
    ks: list[K] = Field(default_factory=lambda: [5, 10, 20, 50], min_length=1, max_length=32)
    scenario: ScenarioSpec = Field(default_factory=ScenarioSpec)
    modes: list[Literal["retrain", "deployment"]] = Field(default_factory=lambda: ["retrain", "deployment"], min_length=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    replicates: int = Field(3, ge=1, le=50, description="retrain seeds seed..seed+R-1: every trained model "
                            "(clean, attacked, controls) is trained R times; effects are tested across them")
    controls: list[Literal["placebo", "oracle", "oracle_centroid"]] = Field(
        default_factory=lambda: ["placebo", "oracle"],
        description="placebo: random perturbations of each attack's delivered size; oracle: every origin item "
        "takes the clean features of a real target item (a perfect visual disguise: the most moving features "
        "can do); oracle_centroid: origin items' features set to the target category's mean feature")
    promotion: PromotionSpec | None = Field(None, description="item promotion: a seller's own items attacked with "
                                                             "insa, insa_topk or expa (None: none)")
    defenses: list[DefenseEntry] = Field(default_factory=list, max_length=16,
                                         description="the defense ladder's rungs in front of the extractors: jpeg, "
                                                     "bit_depth, median, resize_pad, denoiser, detector")
    shard_size: int = Field(256, ge=1, le=100_000, description="items per attack shard")
    gallery_users: int = Field(1, ge=0, le=20)

    @field_serializer("defenses")
    def _defenses_as_given(self, defenses: list[DefenseEntry]) -> list[dict[str, Any]]:
        # the fields set (and the resolved name and extractor): dumps stay short and keys stable
        return [d.model_dump(mode="json", exclude_none=True) for d in defenses]

    @field_validator("attacks")
    @classmethod
    def _cells_unique(cls, v: list[AttackGridSpec]) -> list[AttackGridSpec]:
        seen: dict[tuple[str, float], int] = {}
        clashes = []
        for i, grid in enumerate(v):
            for eps in grid.eps:
                if (grid.method, eps) in seen:
                    clashes.append(f"attacks[{i}]: {grid.method} at eps {eps:g} is already attacks[{seen[grid.method, eps]}]")
                seen.setdefault((grid.method, eps), i)
        if clashes:
            raise ValueError("; ".join(clashes) + " (an attack cell is its method and eps: to compare deliveries, "
                             "norms or steps of one method and eps, run one spec per setting; the store shares the "
                             "rest of the work)")
        return v

    @field_validator("recommenders")
    @classmethod
    def _some_read_items(cls, v: list[RecommenderSpec]) -> list[RecommenderSpec]:
        if not any(reads_items(r.name) for r in v):
            raise ValueError(f"no recommender reads anything about items ({', '.join(r.name for r in v)}): an image "
                             "attack cannot move them; add a visual one (vbpr, amr, deepstyle, acf, dvbpr) -- BPR-MF "
                             "is trained beside them as the accuracy reference")
        return v

    @field_validator("ks")
    @classmethod
    def _ks_ok(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError("every K must be > 0")
        return sorted(set(v))

    @model_validator(mode="after")
    def _unique_and_known(self) -> EvaluationSpec:
        names = [e.name for e in self.extractors]
        if len(set(names)) != len(names):
            raise ValueError(f"extractor names must be unique: {names}")
        recs = [r.name for r in self.recommenders]
        if len(set(recs)) != len(recs):
            raise ValueError(f"recommender names must be unique: {recs}")
        self._resolve_defenses(names)
        promo = self.promotion
        if promo is not None:
            if promo.transfer_from is not None and promo.transfer_from not in names:
                raise ValueError(f"promotion.transfer_from {promo.transfer_from!r} is not an extractor of the spec; "
                                 f"extractors: {names}")
            if promo.transfer_from is not None and len(names) < 2:
                raise ValueError("promotion.transfer_from needs a second extractor to deliver the images to")
            if not any(uses_extractor(r) for r in recs):
                raise ValueError("promotion needs a recommender that reads the extractor's features (vbpr, amr, "
                                 "deepstyle, acf): the attacks act through the extractor")
        return self

    def _resolve_defenses(self, names: list[str]) -> None:
        """Every rung named and placed (written into the spec, so records, keys and the report say it); every
        problem at once."""
        if not self.defenses:
            return
        standard = next((e.name for e in self.extractors if e.defense == "standard"), names[0])
        resolved, problems = [], []
        for i, entry in enumerate(self.defenses):
            name = entry.name or entry.label()
            base = entry.extractor or standard
            if base not in names:
                problems.append(f"defenses[{i}].extractor {base!r} is not an extractor of the spec; extractors: {names}")
            if name in names or name.endswith(NONADAPTIVE) or len(name + NONADAPTIVE) > 60:
                problems.append(f"defenses[{i}].name {name!r} is taken by an extractor, ends in {NONADAPTIVE!r} or is "
                                "too long; name the rung")
            resolved.append(entry.model_copy(update={"name": name, "extractor": base}))
        seen = [r.name for r in resolved]
        problems += [f"defenses: the name {n!r} is used twice (name the rungs)" for n in sorted(set(seen))
                     if seen.count(n) > 1]
        detectors = [i for i, r in enumerate(resolved) if r.kind == "detector"]
        blind = sorted({a.method for a in self.attacks if not METHODS[a.method].reads_penalty})
        if detectors and blind:
            problems.append(f"defenses[{detectors[0]}] is a detector, and attacks {blind} read logits only: they would "
                            "ignore it (the detector-aware attacker needs fgsm, bim, pgd, mifgsm, feature_match or "
                            "noise)")
        if problems:
            raise ValueError("; ".join(problems))
        self.defenses = resolved

    def promotion_modes(self) -> list[str]:
        """The modes item promotion is evaluated in (its own, else the spec's)."""
        if self.promotion is None:
            return []
        return list(self.promotion.modes or self.modes)


def _demo_preset() -> dict[str, Any]:
    """The README's main command: the study's question with its science (3 defenses, replicates,
    placebo and oracle controls, corrected tests) on a grid cut to run in minutes on 2 CPU cores:
    the study's arXiv-era recommenders (VBPR, AMR) and attacks at the budgets where they differ, and
    item promotion (INSA, its exposure-aware variant and EXPA) in deployment."""
    return {
        "name": "demo",
        "dataset": {"kind": "demo", "n_users": 600},
        "extractors": [{"name": d} for d in DEMO_DEFENSES],
        "attacks": [
            {"method": "fgsm", "eps": [8]},
            {"method": "pgd", "eps": [4, 8], "steps": 10},
        ],
        "recommenders": [{"name": "vbpr"}, {"name": "amr"}],
        "ks": [5, 10, 20, 50],
        "replicates": 3,
        "controls": ["placebo", "oracle"],
        # a seller promoting their own items: the 20 least exposed items of the origin, in deployment, white-box
        # under each extractor and crafted on the standard one (the transfer a seller without the shop's model
        # could mount)
        "promotion": {"attacks": [{"method": m, "eps": [8], "steps": 20} for m in ("insa", "insa_topk", "expa")],
                      "transfer_from": "standard", "modes": ["deployment"]},
    }


def _study_preset() -> dict[str, Any]:
    """Everything the study (VAR; docs/study-protocol.md) did that runs offline: FGSM and PGD-10 at
    eps 4 and 8 in its normalised budget with its 8-bit truncation, C&W-L2 with its settings,
    categories from each extractor's own classes, its recommenders with its hyper-parameters
    (``preset: study``: no early stopping, its plain-sum regulariser, its epochs), the retrain
    scenario only, K up to 100. What differs is listed in docs/pipeline.md: the data (the demo
    catalog instead of Amazon Men/Women/Tradesy) and the extractors (the demo's small CNNs instead of
    ResNet50 and its robust checkpoints), which a user supplies with ``dataset`` and ``extractors``."""
    study_attack = {"budget_space": "normalized", "delivery": "png8_truncate"}
    cw = {"cw_binary_steps": 5, "cw_c": 1e-2, "cw_confidence": 0.0, "cw_steps": 1000, "cw_lr": 5e-3}
    return {
        "name": "study",
        "dataset": {"kind": "demo"},
        "extractors": [{"name": d} for d in DEMO_DEFENSES],
        "attacks": [
            {"method": "fgsm", "eps": [4, 8], **study_attack},
            {"method": "pgd", "eps": [4, 8], "steps": 10, **study_attack},
            {"method": "cw", "eps": [0], "norm": "l2", "delivery": "png8_truncate", "params": cw},
        ],
        "recommenders": [{"name": r, "config": {"preset": "study"}} for r in ("vbpr", "amr", "dvbpr", "acf")],
        "ks": [10, 20, 50, 100],
        "modes": ["retrain"],
        "scenario": {"category_source": "extractor"},
        "replicates": 3,
        "controls": ["placebo", "oracle"],
    }


def _defenses_preset() -> dict[str, Any]:
    """The defense ladder on the demo catalog (``advrec run defenses``): in front of the standard demo extractor,
    JPEG, bit-depth reduction, median smoothing, random resize-and-pad, a denoiser trained here and a
    feature-squeezing detector, beside extractor adversarial training (PGD-AT) and recommender adversarial
    training (AMR); each rung against the non-adaptive and the adaptive attacker, PGD-10 at eps 8 on the
    scenario's category and INSA-top-K (`insa_topk`) on the 20 least exposed origin items, in deployment."""
    return {
        "name": "defenses",
        "dataset": {"kind": "demo", "n_users": 600},
        "extractors": [{"name": "standard"}, {"name": "pgd_at"}],
        "attacks": [{"method": "pgd", "eps": [8], "steps": 10}],
        "recommenders": [{"name": "vbpr"}, {"name": "amr"}],
        "ks": [5, 10, 20, 50],
        "modes": ["deployment"],
        "replicates": 3,
        "controls": ["placebo", "oracle"],
        "defenses": [{"kind": k} for k in ("jpeg", "bit_depth", "median", "resize_pad", "denoiser", "detector")],
        "promotion": {"attacks": [{"method": "insa_topk", "eps": [8], "steps": 20}], "modes": ["deployment"]},
    }


PRESETS = {"demo": _demo_preset, "study": _study_preset, "defenses": _defenses_preset}


def preset(name: str) -> EvaluationSpec:
    """A named preset spec (``demo`` or ``study``)."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return parse_spec(PRESETS[name]())


def parse_spec(data: dict[str, Any]) -> EvaluationSpec:
    """Validate a spec document, or ``{"preset": NAME, ...top-level overrides}``; every problem is
    reported at once as InvalidInput."""
    if "preset" in data:
        data = dict(data)
        name = data.pop("preset")
        if not isinstance(name, str) or name not in PRESETS:
            raise InvalidInput(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        data = {**PRESETS[name](), **data}
    try:
        return EvaluationSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid(validation_problems(exc), "invalid evaluation spec") from None


MAX_SPEC_BYTES = 1_000_000


# a spec's file paths: dataset fields, then fields of each extractor
SPEC_PATH_FIELDS = {"dataset": ("root", "images_dir", "interactions", "categories"), "extractors": ("checkpoint",)}


def resolve_spec_paths(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """``document`` with every relative file path (:data:`SPEC_PATH_FIELDS`; ``~`` expanded) joined to
    ``base``, the spec file's folder: a spec means the same files from whichever folder it is run.
    Values that are not strings are left for validation to name."""

    def resolved(value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            return value
        path = Path(value).expanduser()
        return value if path.is_absolute() and str(path) == value else os.path.normpath(base / path)

    out = dict(document)
    if isinstance(out.get("dataset"), dict):
        out["dataset"] = {k: resolved(v) if k in SPEC_PATH_FIELDS["dataset"] else v for k, v in out["dataset"].items()}
    if isinstance(out.get("extractors"), list):
        out["extractors"] = [{k: resolved(v) if k in SPEC_PATH_FIELDS["extractors"] else v for k, v in e.items()}
                             if isinstance(e, dict) else e for e in out["extractors"]]
    return out


def read_spec_document(path_or_preset: str | Path, *, paths_from_file: bool = True) -> dict[str, Any]:
    """The unvalidated spec document of a YAML/JSON file, or ``{"preset": NAME}``.

    ``paths_from_file``: relative file paths in the spec are made absolute from the spec file's folder
    (:func:`resolve_spec_paths`), not the current one; False keeps them as written (a spec sent to a
    stack names paths on the server, relative to its datasets folder)."""
    text = str(path_or_preset)
    if text in PRESETS:
        return {"preset": text}
    path = Path(text)
    if not path.is_file():
        raise InvalidInput(f"no spec file {path} (and not a preset: {sorted(PRESETS)})")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise InvalidInput(f"{path}: {path.stat().st_size:,} bytes; a spec is at most {MAX_SPEC_BYTES:,}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start}); a spec is a YAML or JSON file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"{where}: not valid YAML/JSON: {what}") from None
    if data is None:
        raise InvalidInput(f"{path}: the file is empty; `advrec init` writes a commented example spec")
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a spec must be a mapping (field: value lines), not a {type(data).__name__}")
    return resolve_spec_paths(data, Path(os.path.abspath(path)).parent) if paths_from_file else data


def load_spec(path_or_preset: str | Path) -> EvaluationSpec:
    """A validated spec from a YAML/JSON file (relative paths from the file's folder), or a preset name."""
    return parse_spec(read_spec_document(path_or_preset))


def spec_differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two spec documents (JSON-like) differ: ``["attacks[0].eps: [4.0] -> [4.0, 8.0]", ...]``."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                out.append(f"{sub}: {before[key]!r} -> (absent)")
            elif key not in before:
                out.append(f"{sub}: (absent) -> {after[key]!r}")
            else:
                out.extend(spec_differences(before[key], after[key], sub))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (a, b) in enumerate(zip(before, after, strict=True))
                for d in spec_differences(a, b, f"{path}[{i}]")]
    return [] if before == after else [f"{path or '(spec)'}: {before!r} -> {after!r}"]
