"""How to train an extractor (:class:`TrainConfig`), as torch-free data: the evaluation spec embeds it
(``extractors[].training``) and validates it without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """How to train an extractor. ``eps``/``step_size``/``eval_eps`` are L-inf budgets in pixels/255.

    ``step_size`` defaults to 2.5 * eps / pgd_steps (Madry et al.), ``eval_eps`` to ``eps``.
    Free-AT runs ceil(epochs / replays) passes over the data, each minibatch replayed ``replays``
    times, so its cost matches ``epochs`` standard epochs; its FGSM step is ``eps`` (Shafahi et al.).
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["standard", "pgd_at", "free_at"] = "standard"
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    eps: float = Field(8.0, ge=0, le=255)
    pgd_steps: int = Field(5, ge=1, le=10_000)
    step_size: float | None = Field(None, gt=0, le=255)
    random_start: bool = True
    replays: int = Field(4, ge=1, le=100)
    seed: int = Field(0, ge=0)
    eval_eps: float | None = Field(None, ge=0, le=255)
    eval_steps: int = Field(10, ge=1, le=10_000)

    @model_validator(mode="after")
    def _fill_defaults(self) -> TrainConfig:
        if self.step_size is None:
            self.step_size = 2.5 * self.eps / self.pgd_steps if self.eps > 0 else 1.0
        if self.eval_eps is None:
            self.eval_eps = self.eps
        return self


# Training on a user's own catalog (``source: train``): few images, so small batches; Adam at a
# fine-tuning learning rate (a pretrained backbone is not wrecked by the first steps); the study's
# defended models are PGD-AT at eps 4/255.
CATALOG_TRAIN_DEFAULTS: dict[str, object] = {
    "epochs": 6, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "eps": 4.0,
    "pgd_steps": 3, "eval_steps": 5,
}


class TrainOverrides(BaseModel):
    """The knobs of ``extractors[].training`` (None = :data:`CATALOG_TRAIN_DEFAULTS`); budgets in /255."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int | None = Field(None, ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0, le=1)
    eps: float | None = Field(None, ge=0, le=255, description="PGD-AT / Free-AT budget, L-inf in /255")
    pgd_steps: int | None = Field(None, ge=1, le=1000, description="PGD-AT inner steps")
    replays: int | None = Field(None, ge=1, le=100, description="Free-AT replays per minibatch")
    eval_steps: int | None = Field(None, ge=1, le=1000, description="PGD steps of the held-out robust accuracy")

    def config(self, method: str, epochs: int | None, seed: int) -> TrainConfig:
        """The full :class:`TrainConfig` of a catalog training run."""
        values = {**CATALOG_TRAIN_DEFAULTS, **self.model_dump(exclude_none=True), "method": method, "seed": seed}
        if epochs is not None:
            values["epochs"] = epochs
        return TrainConfig.model_validate(values)
