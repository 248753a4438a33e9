"""What a defense entry of a spec may say, as torch-free data: :data:`DEFENSE_KINDS` (each kind's
parameters, defaults and gradient rule) and :class:`DefenseSpec` (pydantic, so a YAML file and an
HTTP body validate the same way before any compute, and without importing torch).

An entry is flat: ``{kind: jpeg, quality: 75}``, ``{kind: detector, fpr: 0.05}``. A field left out
takes its kind's default (:meth:`DefenseSpec.resolved`); setting a field the kind does not read is an
error, never a silent no-op. Budgets (``train_eps``, ``tpr_eps``) are L-inf in 1/255 units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GradientRule = Literal["exact", "bpda", "eot"]


@dataclass(frozen=True)
class DefenseKind:
    """One kind of defense as data.

    ``params``: what the module itself holds (rebuilds it); ``fit_params``: what fitting it reads
    (``fitted`` kinds only); ``defaults``: the value of every one of them when the spec leaves it out;
    ``gradient``: the adaptive attacker's rule -- ``exact`` (differentiable), ``bpda`` (identity
    gradient through the non-differentiable transform, Athalye et al. 2018), ``eot`` (exact per
    random draw, averaged over ``eot_draws`` draws per step).
    """

    summary: str
    gradient: GradientRule
    label: str  # str.format template over the resolved params, e.g. "jpeg-q{quality}"
    params: tuple[str, ...] = ()
    fit_params: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    fitted: bool = False

    def fields(self) -> tuple[str, ...]:
        return self.params + self.fit_params


DEFENSE_KINDS: dict[str, DefenseKind] = {
    "jpeg": DefenseKind("JPEG re-encoding at `quality` (PIL)", "bpda", "jpeg-q{quality}", ("quality",), defaults={"quality": 75}),
    "bit_depth": DefenseKind("colour bit-depth reduction to `bits` per channel (Xu et al. 2018)", "bpda",
                             "bit_depth-{bits}b", ("bits",), defaults={"bits": 4}),
    "median": DefenseKind("median smoothing over a `window` x `window` neighbourhood (Xu et al. 2018)", "bpda",
                          "median-{window}", ("window",), defaults={"window": 3}),
    "resize_pad": DefenseKind("random resize to [min_scale, 1] of the side and random zero padding back "
                              "(Xie et al. 2018)", "eot", "resize_pad-{min_scale:g}", ("min_scale", "eot_draws"),
                              defaults={"min_scale": 0.875, "eot_draws": 10}),
    "denoiser": DefenseKind(
        "a small residual denoising network trained on the catalog's clean images and the extractor's PGD "
        "examples, guided by the extractor's features (HGD, Liao et al. 2018; AiD)", "exact",
        "denoiser-w{width}d{depth}", ("width", "depth"), ("epochs", "lr", "batch_size", "feature_weight", "train_eps", "pgd_steps", "held_out"),
        defaults={"width": 16, "depth": 4, "epochs": 4, "lr": 2e-3, "batch_size": 32, "feature_weight": 1.0,
                  "train_eps": (8.0,), "pgd_steps": 5, "held_out": 0.2},
        fitted=True),
    "detector": DefenseKind(
        "feature squeezing as a detector (Xu et al. 2018): flags an upload whose softmax moves by more than a "
        "threshold (L1) under bit-depth reduction or median smoothing; the threshold gives `fpr` false positives "
        "on clean images", "bpda",
        "detector-fpr{fpr:g}", ("bits", "window", "penalty"), ("fpr", "held_out", "tpr_eps", "pgd_steps"),
        defaults={"bits": 5, "window": 2, "penalty": 1.0, "fpr": 0.05, "held_out": 0.5, "tpr_eps": 8.0,
                  "pgd_steps": 10},
        fitted=True),
}


def defense_kind(kind: str) -> DefenseKind:
    """The entry of ``kind`` (ValueError naming the known kinds otherwise)."""
    if kind not in DEFENSE_KINDS:
        raise ValueError(f"unknown defense kind {kind!r}; known: {sorted(DEFENSE_KINDS)}")
    return DEFENSE_KINDS[kind]


_EPS_UNITS = "in 1/255 units (8 means 8/255)"


class DefenseSpec(BaseModel):
    """One defense of the ladder (``defenses[i]``). Every field but ``kind`` is None = the kind's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description=f"One of {sorted(DEFENSE_KINDS)}.")
    # the transforms
    quality: int | None = Field(None, ge=1, le=95, description="jpeg: JPEG quality (PIL), 1..95.")
    bits: int | None = Field(None, ge=1, le=7, description="bit_depth, detector: bits per channel kept (1..7).")
    window: int | None = Field(None, ge=2, le=7, description="median, detector: median window side (2..7 px).")
    min_scale: float | None = Field(None, ge=0.5, lt=1.0, allow_inf_nan=False,
                                    description="resize_pad: smallest side kept, as a fraction of the image's.")
    eot_draws: int | None = Field(None, ge=10, le=1000,
                                  description="resize_pad: random draws the adaptive attacker averages per step (EOT).")
    # the denoiser
    width: int | None = Field(None, ge=4, le=128, description="denoiser: channels of its hidden layers.")
    depth: int | None = Field(None, ge=2, le=12, description="denoiser: convolution layers.")
    epochs: int | None = Field(None, ge=1, le=1000, description="denoiser: training passes.")
    lr: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="denoiser: Adam learning rate.")
    batch_size: int | None = Field(None, ge=1, le=4096, description="denoiser: images per training step.")
    feature_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False,
                                         description="denoiser: weight of the extractor-feature loss (HGD) beside the "
                                                     "pixel loss.")
    train_eps: list[float] | None = Field(None, min_length=1, max_length=8,
                                          description=f"denoiser: PGD budgets of its adversarial training images, "
                                                      f"{_EPS_UNITS}.")
    pgd_steps: int | None = Field(None, ge=1, le=100,
                                  description="denoiser, detector: steps of the PGD examples it is trained or measured on.")
    # the detector
    fpr: float | None = Field(None, gt=0, le=0.5, allow_inf_nan=False,
                              description="detector: false-positive rate on clean images its threshold is set at.")
    held_out: float | None = Field(None, ge=0.1, le=0.9, allow_inf_nan=False,
                                   description="denoiser, detector: fraction of the catalog held out to measure it "
                                               "(never fitted on).")
    tpr_eps: float | None = Field(None, ge=1, le=64, allow_inf_nan=False,
                                  description=f"detector: budget of the PGD examples its true-positive rate is measured "
                                              f"on, {_EPS_UNITS}.")
    penalty: float | None = Field(None, ge=0, le=10_000, allow_inf_nan=False,
                                  description="detector: weight of the detection penalty in the adaptive attacker's "
                                              "objective (objective - penalty * excess score).")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        defense_kind(v)
        return v

    @field_validator("train_eps")
    @classmethod
    def _eps_in_units(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        bad = [e for e in v if not 1 <= e <= 64]
        if bad:
            raise ValueError(f"every budget must lie in [1, 64], {_EPS_UNITS}; got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _fields_of_kind(self) -> DefenseSpec:
        info = DEFENSE_KINDS[self.kind]
        # only this model's own fields: a subclass (a spec's ladder entry) adds its name and placement
        foreign = [name for name in self.model_fields_set if name in DefenseSpec.model_fields
                   and name != "kind" and name not in info.fields() and getattr(self, name) is not None]
        if foreign:
            raise ValueError(f"{self.kind} does not use {', '.join(sorted(foreign))} (its fields: "
                             f"{', '.join(info.fields()) or 'none'})")
        return self

    # -- resolved values -------------------------------------------------------------------------
    @property
    def info(self) -> DefenseKind:
        return DEFENSE_KINDS[self.kind]

    def resolved(self, name: str) -> Any:
        """The value of field ``name``: the spec's own, else the kind's default."""
        value = getattr(self, name)
        value = self.info.defaults[name] if value is None else value
        return list(value) if isinstance(value, tuple) else value  # the defaults hold tuples: never shared lists

    def module_params(self) -> dict[str, Any]:
        """What the defense module is built with (``DEFENSES[kind](**module_params())``)."""
        return {name: self.resolved(name) for name in self.info.params}

    def fit_params(self) -> dict[str, Any]:
        """What fitting reads (empty for the transforms)."""
        return {name: self.resolved(name) for name in self.info.fit_params}

    def params(self) -> dict[str, Any]:
        """Every resolved field of the kind: ``{"kind": ..., **module_params, **fit_params}`` (artifact parameters)."""
        return {"kind": self.kind, **self.module_params(), **self.fit_params()}

    def label(self) -> str:
        """Short human name, e.g. ``jpeg-q75``, ``bit_depth-4b``, ``detector-fpr0.05``."""
        return self.info.label.format(**self.params())
