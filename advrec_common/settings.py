"""One settings object for every process, read from the environment (prefix ``ADVREC_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide configuration; every field can be set as ``ADVREC_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ADVREC_", env_file=None, extra="ignore")

    home: Path = Field(default=Path(".advrec"), description="Root for the store, runs and datasets.")
    weights_dir: Path | None = Field(
        default=None, description="Where named pretrained checkpoints live (default <home>/weights)."
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:n]'.")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads of every pipeline step (0: chosen per kind of step by measurement, "
        "stored in <home>/threads.json). The same for every process of a home, so that the in-process and Celery "
        "executors give bit-identical numbers."
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key_hashes: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of accepted gateway API keys (`advrec stack hash-key`)."
    )
    extractor_url: str = "http://127.0.0.1:8001"
    attacker_url: str = "http://127.0.0.1:8002"
    recommender_url: str = "http://127.0.0.1:8003"
    extract_max_batch: int = Field(32, ge=1, description="extractor micro-batcher: most images per forward")
    extract_max_wait_ms: float = Field(5.0, ge=0, description="extractor micro-batcher: longest wait to fill a batch")
    extract_max_queue: int = Field(1024, ge=1, description="extractor micro-batcher: queued images before 503")
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir if self.weights_dir is not None else self.home / "weights"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (cached; tests build their own ``Settings``)."""
    return Settings()


def resolve_device(name: str = "auto") -> str:
    """Map 'auto' to 'cuda' when a GPU is present, else 'cpu'."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
