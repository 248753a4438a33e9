"""Request and response models of the services' HTTP APIs (shared by the apps, the gateway and the client).

Conventions: artifact keys are 64 hex characters; users and items are addressed by their
*external* ids (the dataset's ``user_ids`` / catalog ``item_ids``); ranks start at 1; features
are float32, either a JSON list or base64 of little-endian float32 bytes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KEY_PATTERN = r"^[0-9a-f]{64}$"
FLOAT32_MAX = 3.4028234663852886e38
ArtifactKey = str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- shared --------------------------------------------------------------------------------------
class ProblemItem(BaseModel):
    """One individual mistake: where (e.g. a spec path ``attacks[0].params.cw_steps``) and what."""

    loc: str = Field(description="Where: a spec path, a request field, a file:line.")
    msg: str = Field(description="What is wrong and how to fix it.")


class Problem(BaseModel):
    """Every 4xx/5xx body of every advrec service and the gateway (RFC 9457 problem details,
    media type ``application/problem+json``), with every individual mistake in ``errors``."""

    type: str = Field(description="Problem type URI, e.g. urn:advrec:problem:invalid-input.")
    title: str = Field(description="Short summary of the problem type, e.g. 'Invalid input'.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong, for this occurrence, and what to fix.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemItem] = Field(default_factory=list, description="Every individual mistake (may be empty).")


class Health(BaseModel):
    """Liveness (``/healthz``: status 'ok') and readiness (``/readyz``: 'ready' or 'not ready') of a process."""

    service: str
    status: Literal["ok", "ready", "not ready"]
    checks: dict[str, str] = Field(default_factory=dict, description="check name -> 'ok' or why not")


# -- extractor -------------------------------------------------------------------------------------
class BackboneInfo(BaseModel):
    name: str


class WeightInfo(BaseModel):
    """A named pretrained weight and whether its file is on disk (advrec never downloads)."""

    name: str
    backbone: str
    layout: str
    present: bool
    path: str = Field(description="Where the file is (or must be put).")
    source: str = Field(description="Where to obtain the file.")
    note: str = ""


class ExtractorInfo(BaseModel):
    """An ``extractor`` artifact of the store."""

    key: ArtifactKey
    backbone: str
    source: str | None = None
    n_classes: int
    feature_dim: int | None = None
    step: str | None = None


class ImageFeatures(BaseModel):
    """Features and predicted class of one uploaded image."""

    index: int = Field(description="Position of the image in the request.")
    filename: str | None = None
    dim: int
    features: list[float] | None = Field(None, description="(D,) float32 when encoding='list'.")
    features_b64: str | None = Field(None, description="base64 of (D,) little-endian float32 when encoding='base64'.")
    class_index: int
    class_name: str
    probability: float = Field(ge=0, le=1, description="Softmax probability of the predicted class.")


class ExtractResponse(BaseModel):
    extractor: ArtifactKey
    encoding: Literal["list", "base64"]
    items: list[ImageFeatures]


class ScreenedImage(ImageFeatures):
    """Features of one uploaded image after the shop's defense, and a detector's verdict on it."""

    score: float | None = Field(None, description="detector: L1 distance of the softmax under squeezing (None for a "
                                                  "transform).")
    flagged: bool | None = Field(None, description="detector: score above its threshold (the upload would keep its "
                                                   "previous image); None for a transform.")


class ScreenResponse(BaseModel):
    extractor: ArtifactKey
    defense: ArtifactKey | None = Field(description="Key of the `defense` artifact (None: a transform given as `spec`).")
    kind: str
    label: str = Field(description="The defense's short name, e.g. jpeg-q75, detector-fpr0.05.")
    threshold: float | None = Field(None, description="detector: its fitted threshold.")
    image_size: int = Field(description="Side the images were brought to before the defense.")
    encoding: Literal["list", "base64"]
    seconds: float = Field(description="Time of the defense and the forward, for the whole request.")
    items: list[ScreenedImage]


class CatalogFeaturesRequest(_Model):
    dataset: str = Field(pattern=KEY_PATTERN, description="Key of a `dataset` artifact.")
    extractor: str = Field(pattern=KEY_PATTERN, description="Key of an `extractor` artifact.")
    image_size: int | None = Field(None, ge=16, le=1024,
                                   description="Resize images to this size (None: the extractor's input size).")
    spatial: bool = Field(False, description="Also store the last spatial feature map (ACF needs it).")
    category_source: Literal["auto", "catalog", "extractor"] = Field(
        "auto", description="Items' categories: the catalog's labels, the extractor's classes, or auto (see the spec).")


class CatalogFeaturesResponse(BaseModel):
    features: ArtifactKey = Field(description="Key of the `features` artifact (same key the pipeline uses).")
    computed: bool = Field(description="False when the artifact was already in the store.")
    n_items: int
    dim: int


# -- attacker --------------------------------------------------------------------------------------
class AttackInfo(BaseModel):
    """A registered attack and the parameters it accepts."""

    name: str
    norms: list[str]
    budget_spaces: list[str]
    unbounded_ok: bool = Field(description="Whether eps=0 (no budget) is allowed.")
    needs_labels: bool
    parameters: dict[str, Any] = Field(description="JSON schema of AttackSpec's fields.")


Delivery = Literal["png8", "png8_truncate", "float", "jpeg"]


class CatalogAttackRequest(_Model):
    """Attack catalog items of a dataset artifact toward a target class."""

    dataset: str = Field(pattern=KEY_PATTERN)
    items: list[str] = Field(min_length=1, max_length=256, description="External item ids of the catalog.")
    extractor: str = Field(pattern=KEY_PATTERN)
    spec: dict[str, Any] = Field(description="AttackSpec fields, e.g. {'method': 'pgd', 'eps': 8, 'steps': 10}.")
    target: str | None = Field(None, description="Target class name (None: untargeted, needs spec.targeted=false).")
    delivery: Delivery = "png8"
    jpeg_quality: int = Field(90, ge=1, le=95)
    image_size: int | None = Field(None, ge=16, le=1024)


class AttackedImage(BaseModel):
    index: int
    item_id: str | None = None
    filename: str | None = None
    encoding: Literal["png", "float32"] = Field(
        description="png: base64 PNG of the delivered 8-bit image; float32: base64 of (H,W,3) little-endian float32."
    )
    image_b64: str
    height: int
    width: int
    measurements: dict[str, Any]


class AttackResponse(BaseModel):
    attack: str = Field(description="Label of the attack, e.g. pgd-linf-eps8.")
    spec: dict[str, Any]
    target: str | None
    delivery: Delivery
    images: list[AttackedImage]
    summary: dict[str, Any]
    seconds: float


# -- recommender -----------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    """A ``train`` artifact: a fitted recommender and the artifacts it came from."""

    key: ArtifactKey
    recommender: str
    config: dict[str, Any] = Field(default_factory=dict)
    dataset: ArtifactKey | None = None
    features: ArtifactKey | None = None
    extractor: ArtifactKey | None = None
    step: str | None = None
    overlay_items: int = Field(0, description="Items whose features were replaced through the image endpoint.")


class RankedItem(BaseModel):
    rank: int = Field(ge=1)
    item_id: str
    item_index: int
    score: float


class TopResponse(BaseModel):
    model: ArtifactKey
    user_id: str
    k: int
    overlay_items: int
    items: list[RankedItem]


class ItemFeatures(_Model):
    item_id: str
    features: list[float] = Field(min_length=1, description="(D,) replacement feature vector (raw extractor units).")

    @field_validator("features")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        # float32 is what the model reads: a larger value would become inf there
        if not all(math.isfinite(x) and abs(x) <= FLOAT32_MAX for x in v):
            raise ValueError(f"features must be finite float32 values (no NaN or inf, |x| <= {FLOAT32_MAX:.4g})")
        return v


MAX_SCORE_PAIRS = 100_000  # rows of a score answer: one per (user, item)


class ScoreRequest(_Model):
    """'What if these items' features were replaced?' -- scored without retraining."""

    users: list[str] = Field(min_length=1, max_length=10_000, description="External user ids.")
    items: list[ItemFeatures] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _bounded_answer(self) -> ScoreRequest:
        pairs = len(self.users) * len(self.items)
        if pairs > MAX_SCORE_PAIRS:
            raise ValueError(f"{len(self.users)} users x {len(self.items)} items = {pairs} (user, item) rows in the "
                             f"answer, above {MAX_SCORE_PAIRS}; split the request")
        return self


class ItemScoreChange(BaseModel):
    user_id: str
    item_id: str
    score_before: float
    score_after: float
    rank_before: int | None = Field(description="Rank among the user's candidates (None: a training item).")
    rank_after: int | None


class ScoreResponse(BaseModel):
    model: ArtifactKey
    n_candidates: int = Field(description="Items in the catalog.")
    changes: list[ItemScoreChange]


class ImageRefreshResponse(BaseModel):
    model: ArtifactKey
    item_id: str
    class_name: str
    probability: float
    overlay_items: int
    ranks: list[ItemScoreChange]


class TrainRequest(_Model):
    dataset: str = Field(pattern=KEY_PATTERN)
    features: str | None = Field(None, pattern=KEY_PATTERN, description="Needed by feature-based recommenders.")
    recommender: str
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    max_k: int = Field(100, ge=1, le=10_000)


class TrainJob(BaseModel):
    job_id: str
    state: str
    model: ArtifactKey = Field(description="Key the trained model will have (known before training).")
    error: str | None = None
