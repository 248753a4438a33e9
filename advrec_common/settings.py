"""One settings object for every process, read from the environment (prefix ``ADVREC_``)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from advrec_common.apikeys import owner_of_digest
from advrec_common.errors import InvalidInput
from advrec_common.validation import loc_path

QUOTA_FIELDS = ("catalog_items", "image_pixels", "catalog_pixels", "plan_steps", "concurrent_jobs", "job_work_hours",
                "requests_per_minute")


class Quotas(BaseModel):
    """What one API key's job may ask for; a field left None in ``key_quotas`` takes the ``quota_*`` default."""

    model_config = ConfigDict(extra="forbid")

    catalog_items: int | None = Field(None, ge=1, description="items of a job's catalog (413)")
    image_pixels: int | None = Field(None, ge=1, description="pixels per image a job works at (413)")
    catalog_pixels: int | None = Field(None, ge=1, description="items x pixels per image of a job (413)")
    plan_steps: int | None = Field(None, ge=1, description="steps in a job's plan (422)")
    concurrent_jobs: int | None = Field(None, ge=1, description="unfinished jobs of the key (429)")
    job_work_hours: float | None = Field(None, gt=0, description="estimated work of one job, in CPU-hours of a "
                                         "2-core machine (422; never above max_job_work_hours)")
    requests_per_minute: int | None = Field(None, ge=1, description="gateway requests of the key per minute, "
                                            "bursts of a tenth of it (429 + Retry-After)")


def default_home() -> Path:
    """One home per user, wherever a command runs: ``$XDG_DATA_HOME/advrec``, else
    ``~/.local/share/advrec`` (``ADVREC_HOME`` or ``--home`` choose another)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative value
        return Path(xdg) / "advrec"
    try:
        return Path.home() / ".local" / "share" / "advrec"
    except RuntimeError:  # no HOME and no password entry (a bare container): the current folder
        return Path(".advrec")


class Settings(BaseSettings):
    """Process-wide configuration; every field can be set as ``ADVREC_<NAME>``."""

    # an empty variable is an unset one: docker-compose forwards every setting as ${ADVREC_X:-}
    model_config = SettingsConfigDict(env_prefix="ADVREC_", env_file=None, extra="ignore", env_ignore_empty=True)

    home: Path = Field(default_factory=default_home, description="Root for the store, runs, datasets and trained "
                       "extractors: one per user by default ($XDG_DATA_HOME/advrec or ~/.local/share/advrec), so "
                       "runs and models are shared between folders.")
    weights_dir: Path | None = Field(
        default=None, description="Where named pretrained checkpoints live (default <home>/weights)."
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:n]'.")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads of every pipeline step (0: one thread for steps that train, whose models "
        "depend on the count; the others' count measured once per home, stored in <home>/threads.json). The same "
        "for every process of a home, so that the in-process and Celery executors give bit-identical numbers. "
        "Extractor training on the CPU and the category head fit use one thread whatever this says."
    )
    jobs: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="Steps an in-process run (`advrec run`, `advrec demo`) computes at once, each in its own "
        "worker process, with the numbers of a sequential run; 'auto': one per CPU idle now, within the memory "
        "available (advrec/pipeline/parallelism.py). `--jobs` overrides it.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    stack_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="This stack's namespace on Redis (queues, keys, results). Default: a hash of the resolved home, "
        "so two stacks on one Redis database never see each other's messages. 'auto': a hash of the home's "
        "instance id (<home>/.instance, random, made once): distinct per deployment even where every deployment "
        "mounts its home at the same path (docker-compose's /data).",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of accepted gateway API keys (`advrec stack hash-key`)."
    )
    admin_key_hashes: list[str] = Field(
        default_factory=list, description="SHA-256 digests of admin keys: accepted, and they see every key's jobs "
        "and datasets.",
    )
    internal_token: str = Field(
        "", description="Shared secret the services require in `X-Internal-Token` (the gateway's proxy sends it). "
        "Empty: the services refuse every /v1 request.",
    )
    reconcile_every_s: float = Field(10.0, gt=0, description="Period of every worker's recovery loop.")
    extractor_url: str = "http://127.0.0.1:8001"
    attacker_url: str = "http://127.0.0.1:8002"
    recommender_url: str = "http://127.0.0.1:8003"
    extract_max_batch: int = Field(32, ge=1, description="extractor micro-batcher: most images per forward")
    extract_max_wait_ms: float = Field(5.0, ge=0, description="extractor micro-batcher: longest wait to fill a batch")
    extract_max_queue: int = Field(1024, ge=1, description="extractor micro-batcher: queued images before 503")
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_sync_attack_passes: int = Field(
        500, ge=1, description="attacker service, one synchronous request: images x model passes per image x "
        "(pixels / 224^2); ResNet-50 takes 0.33 s a pass on 2 CPU cores, so ~3 minutes, inside the gateway proxy's "
        "300 s read timeout. Larger attacks run as jobs (sharded, resumable, cancellable)")
    max_sync_extract_images: int = Field(
        2_000, ge=1, description="extractor service, one /v1/extract/catalog request that computes features: items x "
        "(pixels / 224^2); ResNet-50 takes 0.12 s a forward per 224x224 image on 2 CPU cores, so ~4 minutes, inside "
        "the gateway proxy's 300 s read timeout. Larger catalogs get their features in an evaluation job")
    # uploads: what one upload may cost the gateway before anything is kept
    max_zip_members: int = Field(20_000, ge=1, description="files in one uploaded zip")
    max_zip_ratio: float = Field(100.0, gt=1, description="largest uncompressed/compressed size of one zip member")
    max_upload_pixels: int = Field(100_000_000, ge=1, description="pixels of all images of one upload (from headers)")
    upload_cpu_seconds: float = Field(20.0, gt=0, description="CPU time one upload's validation may take")
    upload_concurrency: int = Field(2, ge=1, description="uploads validated at once (more: 503, retry)")
    # per-key quotas: what one API key's job may ask for (admission answers 413/422/429 otherwise)
    quota_catalog_items: int = Field(50_000, ge=1, description="items of a job's catalog (413)")
    quota_image_pixels: int = Field(512 * 512, ge=1, description="pixels per image a job works at (413): at the size "
                                    "its extractors see (image_size, else the backbone's input size), not the photos'")
    quota_catalog_pixels: int = Field(1_000_000_000, ge=1, description="items x pixels per image of a job (413)")
    quota_plan_steps: int = Field(5_000, ge=1, description="steps in a job's plan (422)")
    quota_concurrent_jobs: int = Field(4, ge=1, description="unfinished jobs per key (429)")
    quota_job_work_hours: float = Field(
        48.0, gt=0, description="estimated work of one job (advrec.pipeline.work: image forwards and attack passes "
        "at the model's input size, epochs x training pairs x replicates, rankings), in CPU-hours of a 2-core "
        "machine (422 naming what to shrink). The study preset is ~35, the demo ~0.2")
    max_job_work_hours: float = Field(
        200.0, gt=0, description="the server's ceiling on one job's estimated work (CPU-hours): no key_quotas "
        "entry lifts a job above it (422)")
    quota_requests_per_minute: int = Field(
        3000, ge=1, description="gateway requests per key and minute, in bursts of up to a tenth of it (429 with "
        "Retry-After); health, readiness and metrics are not counted")
    metrics_token: str = Field(
        "", description="When set, GET /metrics needs `Authorization: Bearer <token>` (Prometheus' "
        "`authorization.credentials`); empty: open, like /healthz")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines of the stack's processes: one JSON object per line with the request, job and "
        "step ids, or plain text")
    key_quotas: dict[str, Quotas] = Field(
        default_factory=dict,
        description="Per-key overrides of the quota_* defaults, keyed by the key's SHA-256 digest (as in "
        "api_key_hashes), e.g. {\"<digest>\": {\"concurrent_jobs\": 10, \"catalog_items\": 200000}}.",
    )

    @field_validator("key_quotas")
    @classmethod
    def _digests(cls, v: dict[str, Quotas]) -> dict[str, Quotas]:
        bad = [k for k in v if len(k.strip()) != 64 or any(c not in "0123456789abcdef" for c in k.strip().lower())]
        if bad:
            raise ValueError(f"key_quotas must be keyed by SHA-256 hex digests (`advrec stack hash-key KEY`), got {bad}")
        return {k.strip().lower(): q for k, q in v.items()}

    def _key_override(self, owner: str | None) -> tuple[str, Quotas] | None:
        """(digest, overrides) of the ``key_quotas`` entry of the key whose owner id is ``owner``."""
        for digest, override in self.key_quotas.items():
            if owner and owner_of_digest(digest) == owner:
                return digest, Quotas.model_validate(override)
        return None

    def quotas(self, owner: str | None = None) -> Quotas:
        """The quotas of the key whose owner id is ``owner``: its ``key_quotas`` entry over the defaults."""
        resolved = {f: getattr(self, f"quota_{f}") for f in QUOTA_FIELDS}
        if found := self._key_override(owner):
            resolved.update(found[1].model_dump(exclude_none=True))
        return Quotas(**resolved)

    def quota_source(self, owner: str | None, field: str) -> str:
        """Where ``field``'s quota for ``owner`` comes from, for error messages."""
        found = self._key_override(owner)
        if found and getattr(found[1], field) is not None:
            return f"key_quotas[{found[0][:8]}...].{field}"
        return f"quota_{field}"

    @property
    def namespace(self) -> str:
        """This stack's id on Redis: ``stack_id``, else 12 hex of the SHA-256 of the resolved home."""
        if self.stack_id == "auto":
            return "i" + hashlib.sha256(instance_id(self.home).encode()).hexdigest()[:11]
        if self.stack_id:
            return self.stack_id
        return hashlib.sha256(str(self.home.expanduser().resolve()).encode()).hexdigest()[:12]

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir if self.weights_dir is not None else self.home / "weights"


INSTANCE_FILE = ".instance"


def instance_id(home: str | Path) -> str:
    """The id of the deployment whose home is ``home``: ``<home>/.instance``, random, created once
    (atomically: O_EXCL) by whichever of its processes comes first; every process and host sharing the
    home reads the same."""
    path = Path(home).expanduser() / INSTANCE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{INSTANCE_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_hex(8))
        try:
            os.link(tmp, path)  # all or nothing: a reader never sees the file empty; the first link wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (cached; tests build their own ``Settings``). InvalidInput names every
    ``ADVREC_*`` variable whose value does not fit, at once."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidInput(settings_problems(exc)) from None
    except SettingsError as exc:  # a list/dict variable that is not JSON
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "?"
        raise InvalidInput(f"invalid settings (environment variables):\n  ADVREC_{field.upper()}: not valid JSON "
                           "(lists and mappings are given as JSON, e.g. '[\"...\"]')") from None


# pydantic names the member of a union type an error comes from in its loc ("constrained-int", "literal['auto']")
_UNION_MEMBER = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|list\[.*\]|dict\[.*\])$")


def settings_problems(exc: ValidationError) -> str:
    """A ValidationError of :class:`Settings` as one line per environment variable (a field whose type is a
    union gets one line, its alternatives' messages joined)."""
    by_var: dict[str, list[str]] = {}
    got: dict[str, object] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        inner = loc_path(p for p in err["loc"][1:] if not _UNION_MEMBER.match(str(p)))
        var = f"ADVREC_{field.upper()}" + (f" ({inner})" if inner else "")
        by_var.setdefault(var, [])
        if err["msg"] not in by_var[var]:
            by_var[var].append(err["msg"])
        secret = any(word in field for word in ("token", "secret", "password", "key"))
        got.setdefault(var, "<hidden>" if secret else repr(err.get("input")))
    lines = [f"  {var}={got[var]}: {' or '.join(msgs)}" for var, msgs in by_var.items()]
    return "invalid settings (environment variables):\n" + "\n".join(lines)


def resolve_device(name: str = "auto") -> str:
    """Map 'auto' to 'cuda' when a GPU is present, else 'cpu'; InvalidInput for a device this machine lacks.

    (A torch error such as "Found no NVIDIA driver" deep inside a step would otherwise be the answer.)
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {name!r} was asked for but this machine has no usable CUDA GPU; "
                               f"use 'cpu' or 'auto'")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InvalidInput(f"device {name!r} does not exist here: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
        return name
    raise InvalidInput(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:n]'")
