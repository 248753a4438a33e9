"""Training configuration shared by every recommender; unset (``None``) fields take the model's preset default.

Each model class declares ``DEFAULTS = {"fast": {...}, "study": {...}}``. ``preset="study"`` keeps the
study's numbers (study-protocol.md section 4; VAR code: Adagrad, lr [0.01, 1e-4, 1e-3], regs
[0.1, 1e-3, 0] as plain sums, batch 512 with the last short batch dropped, 4000 epochs, no early
stopping for VBPR/AMR; Adam 1e-4 for ACF/DVBPR); ``preset="fast"`` (default) uses larger learning
rates, larger batches and an epoch budget with early stopping so the demo trains in seconds.

Plain pydantic: importing this module does not import torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from advrec_common.errors import InvalidInput
from services.recommender.kinds import CONFIG_BLOCKS

# a finite, non-negative number (a NaN or inf learning rate or weight would train garbage quietly)
Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


def _one_for_all(value: Any) -> Any:
    """``lr: 0.05`` means ``lr: [0.05]`` (one value for every parameter block)."""
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


PerBlock = Annotated[list[Weight], BeforeValidator(_one_for_all)]


class RecConfig(BaseModel):
    """Hyper-parameters of one recommender fit (``None`` = the model's preset default)."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["fast", "study"] = "fast"
    k: int | None = Field(None, ge=1, le=4096, description="Latent dimension (study: 64).")
    epochs: int | None = Field(None, ge=1, le=20_000, description="Maximum number of epochs.")
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    optimizer: Literal["adagrad", "adam"] | None = None
    lr: PerBlock | None = Field(None, max_length=8, description="One lr per parameter block, or one for all "
                                "(a number or a one-value list).")
    regs: PerBlock | None = Field(None, max_length=8, description="Regularisation weights, one per parameter block "
                                  "(model-specific) or one for all.")
    reg_form: Literal["l2", "study_sum"] | None = Field(
        None, description="'l2' = squared L2 norms; 'study_sum' = the study's plain sums (quirk Q8)."
    )
    drop_last: bool | None = Field(None, description="Drop the last incomplete batch (study: True).")
    patience: int | None = Field(None, ge=0, le=20_000,
                                 description="Evaluations without improvement before stopping; 0 = off.")
    eval_every: int = Field(1, ge=1, le=20_000, description="Validate every this many epochs.")
    val_metric: Literal["auc", "hr"] = "auc"
    val_k: int = Field(10, ge=1, le=10_000, description="K of the validation HR.")
    val_negatives: int | None = Field(
        None, ge=0, le=10_000_000, description="0: validate by ranking against every item (exact); N: against N "
        "items drawn once per fit and shared by all validation users (non-training ones count), an unbiased AUC "
        "estimate at N/I of the cost (exact when N >= I - 1).")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: str = "cpu"
    # VBPR / AMR
    full_vbpr: bool = Field(False, description="He & McAuley form with item bias, theta_u and beta'.")
    adv_lambda: float = Field(0.1, ge=0, le=1e6, allow_inf_nan=False, description="AMR: weight of the adversarial BPR loss.")
    adv_eps: float = Field(1.0, ge=0, le=1e6, allow_inf_nan=False,
                           description="AMR: L2 size of the per-item feature perturbation.")
    adv_type: Literal["grad", "rand"] = "grad"
    adv_start: float = Field(0.5, ge=0, le=1, allow_inf_nan=False,
                             description="AMR: fraction of epochs trained as plain VBPR.")
    # ACF / DVBPR
    hidden: int = Field(64, ge=1, le=4096, description="ACF: attention layer width.")
    max_history: int = Field(50, ge=1, le=100_000, description="ACF: most positives per user kept for item attention.")
    cnn_width: int | None = Field(None, ge=4, le=1024, description="DVBPR: channels of the first conv layer.")
    score_batch: int = Field(256, ge=1, le=1_000_000, description="Users per scoring chunk inside score().")

    def resolved(self, defaults: dict[str, dict[str, Any]]) -> RecConfig:
        """Fill ``None`` fields from ``defaults[self.preset]``, then from :data:`COMMON_DEFAULTS`."""
        preset = {**COMMON_DEFAULTS.get(self.preset, {}), **defaults.get(self.preset, {})}
        update = {k: v for k, v in preset.items() if getattr(self, k) is None}
        return self.model_copy(update=update)


# Defaults every model shares per preset (a model's DEFAULTS override them). The study trained for a
# fixed number of epochs (checkpoints at 1000-epoch steps) without early stopping.
COMMON_DEFAULTS: dict[str, dict[str, Any]] = {
    "fast": {"patience": 5, "reg_form": "l2", "val_negatives": 200},
    "study": {"patience": 0, "reg_form": "l2", "val_negatives": 0},
}


# Model-specific fields and the recommenders that read them (every other field applies to all).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "full_vbpr": ("vbpr", "amr"),
    "adv_lambda": ("amr",),
    "adv_eps": ("amr",),
    "adv_type": ("amr",),
    "adv_start": ("amr",),
    "hidden": ("acf",),
    "max_history": ("acf",),
    "cnn_width": ("dvbpr",),
}


def unused_fields(recommender: str, config: RecConfig) -> list[str]:
    """Fields ``config`` sets to a non-default value that ``recommender`` never reads (a silent no-op)."""
    return [name for name, users in MODEL_FIELDS.items()
            if recommender not in users and name in config.model_fields_set
            and getattr(config, name) != RecConfig.model_fields[name].default]


def block_problems(recommender: str, config: RecConfig) -> list[str]:
    """Why ``config.lr`` / ``config.regs`` do not fit ``recommender``'s parameter blocks (one value for all, or
    one per block, in :data:`CONFIG_BLOCKS` order); empty when they do."""
    problems = []
    for field, blocks in CONFIG_BLOCKS[recommender].items():
        values = getattr(config, field)
        if values is not None and len(values) not in (1, len(blocks)):
            per = f" or one per block: {len(blocks)} ({', '.join(blocks)})" if len(blocks) > 1 else ""
            problems.append(f"config.{field}: {recommender} takes one value for all its parameters{per}; "
                            f"got {len(values)} values")
    return problems


def config_problems(recommender: str, config: RecConfig) -> list[str]:
    """Everything in ``config`` that does not fit ``recommender``: lr/regs lengths, and fields only other
    models read (:func:`unused_fields`); empty when it fits."""
    problems = block_problems(recommender, config)
    ignored = unused_fields(recommender, config)
    if ignored:
        readers = "; ".join(f"{f}: {', '.join(MODEL_FIELDS[f])}" for f in ignored)
        problems.append(f"{recommender} does not use config {', '.join(ignored)} (read only by {readers})")
    return problems


def values_per_block(recommender: str, field: Literal["lr", "regs"], values: list[float]) -> list[float]:
    """``values`` as one per parameter block of ``recommender`` (a single value is broadcast); the lengths
    were checked by :func:`block_problems` when the model was built."""
    return list(values) * len(CONFIG_BLOCKS[recommender][field]) if len(values) == 1 else list(values)


def parse_config(config: RecConfig | dict[str, Any] | None) -> RecConfig:
    """A RecConfig from a dict (InvalidInput with the pydantic message on bad fields)."""
    if config is None:
        return RecConfig()
    if isinstance(config, RecConfig):
        return config
    try:
        return RecConfig.model_validate(config)
    except ValidationError as exc:
        raise InvalidInput(f"bad recommender config: {exc}") from None
