"""What to attack with, as pure data: :data:`METHODS` (each attack's capabilities), :class:`AttackSpec`
(pydantic, so a YAML file, a CLI flag and an HTTP body validate the same way, without torch) and the
study's presets. The attack classes (:mod:`services.attacker.attacks`) read their capabilities here.

Units: ``eps`` and ``step_size`` are in 1/255 units of a [0,1] image. For ``norm="l2"`` the
radius is ``eps/255`` in the L2 norm of the whole (3,H,W) perturbation in [0,1] units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Norm = Literal["linf", "l2"]
BudgetSpace = Literal["pixel", "normalized"]


@dataclass(frozen=True)
class MethodInfo:
    """What an attack method supports: norms, budget spaces, eps = 0 (no budget), class labels, and
    which :class:`AttackParams` it reads (``targeted`` too when it uses labels)."""

    norms: tuple[str, ...] = ("linf",)
    budget_spaces: tuple[str, ...] = ("pixel",)
    unbounded_ok: bool = False
    needs_labels: bool = True  # False: feature-level attacks that ignore class labels
    params: tuple[str, ...] = ()
    # params the method pins: stating that value is harmless (as is any param's default, so dumps round-trip)
    fixed: tuple[tuple[str, object], ...] = ()
    # the attack reads per-image inputs (an item's catalog row): its labels are the images' positions
    positional: bool = False
    # it needs what only the pipeline can give (a recommender's objective, popular items' features)
    promotion: bool = False
    # runs on our projected-gradient engine, which subtracts a model's penalty (a detector-aware
    # composition) from its objective; the others read logits only and are refused such a model
    reads_penalty: bool = False

    def accepted_params(self) -> tuple[str, ...]:
        return (("targeted",) if self.needs_labels else ()) + self.params


_SIGN = ("pixel", "normalized")  # sign-gradient attacks also run the study's normalised-space budget
_CW = ("cw_binary_steps", "cw_c", "cw_confidence", "cw_steps", "cw_lr")
METHODS: dict[str, MethodInfo] = {
    "fgsm": MethodInfo(budget_spaces=_SIGN, fixed=(("random_start", False),), reads_penalty=True),
    "bim": MethodInfo(budget_spaces=_SIGN, fixed=(("random_start", False),), reads_penalty=True),
    "pgd": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, params=("random_start",), reads_penalty=True),
    "mifgsm": MethodInfo(budget_spaces=_SIGN, params=("decay",), fixed=(("random_start", False),), reads_penalty=True),
    "cw": MethodInfo(norms=("l2",), unbounded_ok=True, params=_CW),
    "apgd": MethodInfo(norms=("linf", "l2")),
    "square": MethodInfo(norms=("linf", "l2"), params=("queries",)),
    "spsa": MethodInfo(params=("queries",)),
    "feature_match": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, params=("random_start",),
                                reads_penalty=True),
    "score": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, params=("random_start",),
                        reads_penalty=True),
    # a random point of the budget's ball: the baseline every attack must beat, and a null cell against its placebo
    # (it follows no objective, so a detector is no reason to refuse it)
    "noise": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, reads_penalty=True),
    # item promotion (Liu & Larson's INSA and EXPA): a seller's own item, not a category
    "insa": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, params=("random_start",),
                       positional=True, promotion=True, reads_penalty=True),
    "insa_topk": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, params=("random_start",),
                            positional=True, promotion=True, reads_penalty=True),
    "expa": MethodInfo(norms=("linf", "l2"), budget_spaces=_SIGN, needs_labels=False, params=("random_start",),
                       promotion=True, reads_penalty=True),
}
PROMOTION_METHODS = tuple(m for m, info in METHODS.items() if info.promotion)
# what promotion.attacks accepts: the promotion methods and the noise baseline
PROMOTION_ATTACKS = (*PROMOTION_METHODS, "noise")


def method_info(method: str) -> MethodInfo:
    """Capabilities of ``method`` (ValueError naming the known methods otherwise)."""
    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method]

# per-method defaults used when ``steps`` / ``queries`` is None (see AttackSpec.resolved_steps)
DEFAULT_STEPS: dict[str, int] = {
    "fgsm": 1,
    "bim": 10,
    "pgd": 10,  # study: 10 iterations
    "mifgsm": 10,
    "apgd": 50,
    "spsa": 100,  # study: nb_iter 100
    "feature_match": 10,
    "score": 10,
    "noise": 1,
    "insa": 20,
    "insa_topk": 20,
    "expa": 20,
}
DEFAULT_QUERIES: dict[str, int] = {"square": 1000, "spsa": 128}


class AttackParams(BaseModel):
    """The method-specific knobs of an attack (the evaluation spec's ``attacks[].params``).

    Each method reads only its own: ``targeted`` (every label-based attack), ``random_start`` (pgd,
    feature_match, score), ``decay`` (mifgsm), ``cw_*`` (cw), ``queries`` (square, spsa). Setting
    another to a value other than its default is a validation error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    random_start: bool = True
    targeted: bool = True
    cw_binary_steps: int = Field(default=5, gt=0, le=100)
    cw_c: float = Field(default=1e-2, gt=0, le=1e6, allow_inf_nan=False)
    cw_confidence: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False)
    cw_steps: int = Field(default=1000, gt=0, le=100_000)
    cw_lr: float = Field(default=5e-3, gt=0, le=1e3, allow_inf_nan=False)
    decay: float = Field(default=1.0, ge=0, le=1e3, allow_inf_nan=False, description="MI-FGSM momentum decay.")
    queries: int | None = Field(
        default=None, gt=0, le=1_000_000,
        description="Square: queries per image (1000). SPSA: samples per gradient estimate (128).",
    )


class AttackSpec(AttackParams):
    """One attack configuration; validated on construction (unknown methods and bad values fail here)."""

    method: str = Field(description="Attack method, one of METHODS (the registry services.attacker.attacks.ATTACKS).")
    eps: float = Field(ge=0, le=100_000, allow_inf_nan=False,
                       description="Budget in 1/255 units (0 = unbounded, only for 'cw').")
    norm: Norm = "linf"
    steps: int | None = Field(default=None, gt=0, le=100_000, description="Iterations; None = the method's default.")
    step_size: float | None = Field(
        default=None, gt=0, le=100_000, allow_inf_nan=False,
        description="Step in 1/255 units; None = eps/6 (study) for PGD-like, eps for FGSM.",
    )
    budget_space: BudgetSpace = Field(
        default="pixel",
        description="'pixel': eps/255 on [0,1] images. 'normalized': eps/255 on the normalised tensor, no [0,1] "
        "clip inside the iterations (the study's code; ~0.23x the pixel budget with ImageNet std).",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        method_info(v)
        return v

    @field_validator("eps")
    @classmethod
    def _eps_in_255_units(cls, v: float) -> float:
        if problem := eps_unit_problem(v):
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _fits_method(self) -> AttackSpec:
        cls = METHODS[self.method]
        if self.norm not in cls.norms:
            raise ValueError(f"{self.method} supports norm {list(cls.norms)}, not {self.norm!r}")
        if self.budget_space not in cls.budget_spaces:
            raise ValueError(f"{self.method} supports budget_space {list(cls.budget_spaces)}, not {self.budget_space!r}")
        if self.eps == 0 and not cls.unbounded_ok:
            raise ValueError(f"{self.method} needs eps > 0 (in 1/255 units)")
        accepted, pinned = cls.accepted_params(), dict(cls.fixed)
        ignored = [name for name in AttackParams.model_fields if name in self.model_fields_set and name not in accepted
                   and getattr(self, name) not in (AttackParams.model_fields[name].default, pinned.get(name))]
        if ignored:
            raise ValueError(f"{self.method} does not use params {', '.join(ignored)} (its params: "
                             f"{', '.join(accepted) or 'none'})")
        return self

    # -- resolved values in the units the attacks use -------------------------------------------
    @property
    def radius(self) -> float:
        """Budget radius in [0,1] units of the attack space (eps/255)."""
        return self.eps / 255.0

    @property
    def resolved_steps(self) -> int:
        return self.steps if self.steps is not None else DEFAULT_STEPS.get(self.method, 10)

    @property
    def resolved_step(self) -> float:
        """Step size in [0,1] units: given, else eps (FGSM), eps/steps (MI-FGSM, the paper), else eps/6 (study)."""
        if self.step_size is not None:
            return self.step_size / 255.0
        if self.method == "fgsm":
            return self.radius
        if self.method == "mifgsm":
            return self.radius / self.resolved_steps
        return self.radius / 6.0

    @property
    def resolved_queries(self) -> int:
        return self.queries if self.queries is not None else DEFAULT_QUERIES.get(self.method, 1000)

    def passes_per_image(self) -> int:
        """What one image costs, in forward + backward passes of the model: the iterations (C&W: steps x
        binary-search steps); forward-only queries (Square, SPSA's samples) count a third of a pass."""
        if self.method == "cw":
            return self.cw_steps * self.cw_binary_steps
        if self.method == "square":
            return max(1, self.resolved_queries // 3)
        if self.method == "spsa":
            return max(1, self.resolved_steps * self.resolved_queries // 3)
        return self.resolved_steps

    def label(self) -> str:
        """Short human name, e.g. ``pgd-linf-eps4``."""
        return f"{self.method}-{self.norm}-eps{self.eps:g}" + ("-norm" if self.budget_space == "normalized" else "")


def delivery_problem(budget_space: str, delivery: str) -> str | None:
    """Why ``delivery`` would erase attacks in ``budget_space`` (None when it can carry them).

    The normalised budget is eps/255 in normalised units, about eps x 0.23 grey levels per channel:
    rounding to 8 bits inside that budget (png8, and JPEG after it) leaves nothing at eps 4."""
    if budget_space == "normalized" and delivery in ("png8", "jpeg"):
        return (f"budget_space 'normalized' allows about eps x 0.23 grey levels per channel (< 1 level at eps 4): "
                f"delivery {delivery!r} rounds inside that budget and erases the attack. Use delivery "
                "'png8_truncate' (the study's 8-bit quantisation) or 'float'")
    return None


def eps_unit_problem(eps: float) -> str | None:
    """Why ``eps`` looks like a budget in [0, 1] units rather than /255 (None when it does not):
    0.03 (a torchattacks user's 8/255) is a fraction of one grey level, a silent no-op once delivered."""
    if 0 < eps < 1:
        return (f"eps is in 1/255 units (8 means 8/255), so {eps:g} is a fraction of one grey level and changes "
                f"nothing once delivered; did you mean {eps * 255:g}?")
    return None


def study_presets() -> dict[str, AttackSpec]:
    """The study's attacks (VAR, study-protocol.md section 3) in this project's pixel convention; add
    ``budget_space="normalized"`` (``spec.model_copy(update=...)``) to reproduce the seed code's budget."""
    cw = {"cw_binary_steps": 5, "cw_c": 1e-2, "cw_confidence": 0.0, "cw_steps": 1000, "cw_lr": 5e-3}
    return {
        "fgsm_eps4": AttackSpec(method="fgsm", eps=4),
        "fgsm_eps8": AttackSpec(method="fgsm", eps=8),
        "pgd_eps4": AttackSpec(method="pgd", eps=4, steps=10, random_start=True),
        "pgd_eps8": AttackSpec(method="pgd", eps=8, steps=10, random_start=True),
        "cw": AttackSpec(method="cw", eps=0, norm="l2", **cw),
    }
