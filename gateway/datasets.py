"""``/v1/datasets``: upload a catalog (images + interactions [+ categories]) in the generic layout.

An upload is either one zip holding ``images/<item_id>.<ext>`` and ``interactions.csv`` (or
``.tsv``) [+ ``categories.csv``], possibly inside one top-level folder, or the same as separate
multipart files. Every image is decoded (:func:`decode_image`, pixel budget from the settings)
and the interactions are loaded with the generic-layout loader before anything is kept: any
problem is a 422 naming the file, and nothing is written. The dataset id is derived from the
content, so uploading the same files twice gives the same dataset.

What one upload may cost is bounded before the work is done: the body (``max_upload_bytes``),
the zip's members (count, total uncompressed size, each member's compression ratio), the pixels
of all images from their headers before any is decoded (``max_upload_pixels``, each at most
``max_image_pixels``), the CPU time of the validation (``upload_cpu_seconds``), and the uploads
validated at once (``upload_concurrency``; more answer 503 with ``Retry-After``).

A dataset belongs to the keys that uploaded it (``owners`` in ``dataset.json``: owner ids): the
same content uploaded by a second key is shared with it, and other keys see a 404.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import re
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from advrec_common.datasets.delimited import Problem
from advrec_common.datasets.generic_layout import (
    GENERIC_IMAGE_SUFFIXES,
    CategoryColumns,
    InteractionColumns,
    load_generic_dataset,
)
from advrec_common.datasets.images import decode_image, read_image_header
from advrec_common.datasets.preflight import check_generic_dataset
from advrec_common.errors import BadImage, InvalidInput, NotFound, Overloaded, PayloadTooLarge, invalid
from advrec_common.http import error_responses
from advrec_common.settings import Settings
from advrec_common.store import atomic_write
from advrec_common.validation import validate_model
from gateway.auth import Caller, require_api_key
from gateway.deps import get_app_settings
from gateway.schemas import DatasetInfo

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(require_api_key)],
                   responses=error_responses(400, 401, 403, 404, 413, 422, 429))

DATASET_ID_RE = re.compile(r"^ds-[0-9a-f]{16}$")
TABLE_SUFFIXES = (".csv", ".tsv")


def _datasets_dir(settings: Settings) -> Path:
    return settings.home / "datasets"


def _safe_name(name: str, where: str) -> str:
    """The base name of an uploaded file; rejects empty, hidden and path-like names."""
    base = PurePosixPath(name.replace("\\", "/")).name
    if not base or base.startswith(".") or base != name.replace("\\", "/").split("/")[-1]:
        raise InvalidInput(f"{where}: bad file name {name!r}")
    return base


def files_from_zip(data: bytes, max_bytes: int, max_members: int = 20_000, max_ratio: float = 100.0) -> dict[str, bytes]:
    """Members of an uploaded zip as ``{relative path: bytes}`` (one top-level folder is stripped).

    413 before anything is decompressed when the zip has more than ``max_members`` files, more than
    ``max_bytes`` uncompressed, or a member that expands more than ``max_ratio`` times."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise InvalidInput("archive: not a zip file") from None
    infos = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
             and not PurePosixPath(i.filename).name.startswith(".")]
    if len(infos) > max_members:
        raise PayloadTooLarge(f"archive: {len(infos)} files, above the limit of {max_members} (max_zip_members)")
    if sum(i.file_size for i in infos) > max_bytes:
        raise PayloadTooLarge(f"archive: uncompressed size exceeds the limit of {max_bytes} bytes")
    for i in infos:
        if i.file_size > 1 << 20 and i.file_size > max_ratio * max(i.compress_size, 1):
            raise PayloadTooLarge(f"archive: {i.filename!r} expands {i.file_size / max(i.compress_size, 1):.0f} "
                                  f"times, above the limit of {max_ratio:g} (max_zip_ratio)")
    names = [PurePosixPath(i.filename) for i in infos]
    for n in names:
        if n.is_absolute() or ".." in n.parts:
            raise InvalidInput(f"archive: unsafe member name {str(n)!r}")
    tops = {n.parts[0] for n in names}
    strip = len(tops) == 1 and all(len(n.parts) > 1 for n in names) and next(iter(tops)) != "images"
    out: dict[str, bytes] = {}
    for info, name in zip(infos, names, strict=True):
        rel = PurePosixPath(*name.parts[1:]) if strip else name
        try:
            out[str(rel)] = zf.read(info)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
            raise InvalidInput(f"archive: cannot read {str(rel)!r}: {exc}") from None
    return out


class _CpuBudget:
    """PayloadTooLarge once this thread has spent more than ``seconds`` of CPU since it was made."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.thread_time()

    def check(self, what: str) -> None:
        used = time.thread_time() - self.start
        if used > self.seconds:
            raise PayloadTooLarge(f"validating this upload took more than {self.seconds:g} s of CPU ({what}); "
                                  f"upload fewer or smaller images (upload_cpu_seconds)")


def _check_pixels(images: dict[str, bytes], settings: Settings) -> None:
    """Every image's header (no pixel decoded): 422 for one that is not an image, 413 when all of them
    together have more than ``max_upload_pixels`` pixels."""
    total = 0
    for rel, blob in images.items():
        try:
            header = read_image_header(blob, max_pixels=settings.max_image_pixels)
        except BadImage as exc:
            raise BadImage(f"{rel}: {str(exc).replace('image bytes', 'image')}") from None
        total += header.width * header.height
        if total > settings.max_upload_pixels:
            raise PayloadTooLarge(f"the images of this upload have more than {settings.max_upload_pixels} pixels "
                                  f"together (max_upload_pixels); upload smaller images or split the catalog")


def _layout(files: dict[str, bytes], settings: Settings, budget: _CpuBudget | None = None) -> dict[str, bytes]:
    """Check and normalise ``{relpath: bytes}`` to images/<id>.<ext>, interactions.<csv|tsv>, categories.<..>."""
    out: dict[str, bytes] = {}
    tables = {"interactions": None, "categories": None}
    budget = budget or _CpuBudget(settings.upload_cpu_seconds)
    for rel in files:
        p = PurePosixPath(rel)
        if len(p.parts) == 2 and p.parts[0] == "images" and p.suffix.lower() not in GENERIC_IMAGE_SUFFIXES:
            raise InvalidInput(f"{rel}: not an image file name (allowed: {', '.join(GENERIC_IMAGE_SUFFIXES)})")
    _check_pixels({r: b for r, b in files.items() if r.startswith("images/") and r.count("/") == 1}, settings)
    for rel, blob in files.items():
        p = PurePosixPath(rel)
        if len(p.parts) == 2 and p.parts[0] == "images":
            try:
                decode_image(blob, max_pixels=settings.max_image_pixels)
            except BadImage as exc:
                raise BadImage(f"{rel}: {str(exc).replace('image bytes', 'image')}") from None
            budget.check(f"at {rel}")
            out[rel] = blob
        elif len(p.parts) == 1 and p.stem in tables and p.suffix.lower() in TABLE_SUFFIXES:
            if tables[p.stem] is not None:
                raise InvalidInput(f"two {p.stem} files: {tables[p.stem]} and {rel}")
            tables[p.stem] = rel
            out[rel] = blob
        else:
            raise InvalidInput(f"{rel}: unexpected file (want images/<item_id>.<ext>, interactions.csv, categories.csv)")
    if tables["interactions"] is None:
        raise InvalidInput("the upload has no interactions.csv (or .tsv)")
    if not any(r.startswith("images/") for r in out):
        raise InvalidInput("the upload has no images")
    return out


def dataset_id(files: dict[str, bytes], mapping: dict[str, Any] | None = None) -> str:
    """``ds-`` + 16 hex of the SHA-256 over every (relative path, content digest), sorted, and the column
    mapping when one is given (the same files read with other columns are another dataset)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
    if mapping:
        h.update(json.dumps(mapping, sort_keys=True).encode())
    return "ds-" + h.hexdigest()[:16]


def parse_mapping(text: str | None, field: str, model: type[InteractionColumns] | type[CategoryColumns]) -> Any:
    """The ``columns`` / ``category_columns`` form field (JSON) as its model; 422 naming each problem."""
    if text is None or not text.strip():
        return None
    if len(text) > 4096:
        raise InvalidInput(f"{field}: longer than 4096 characters; send e.g. {_MAPPING_EXAMPLES[field]}",
                           problems=[{"loc": field, "msg": "too long"}])
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{field}: not JSON; send e.g. {_MAPPING_EXAMPLES[field]}",
                           problems=[{"loc": field, "msg": "not JSON"}]) from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field}: a JSON object is needed, e.g. {_MAPPING_EXAMPLES[field]}",
                           problems=[{"loc": field, "msg": "not a JSON object"}])
    return validate_model(model, raw, root=field, what=f"invalid {field}")


_MAPPING_EXAMPLES = {"columns": '{"user": "customer", "item": "sku", "timestamp": "bought_at"}',
                     "category_columns": '{"item": "sku", "category": "department"}'}


def dataset_owners(settings: Settings, ds_id: str) -> list[str] | None:
    """Owner ids of uploaded dataset ``ds_id`` (None when it is not an uploaded dataset)."""
    path = _datasets_dir(settings) / ds_id / "dataset.json"
    if not DATASET_ID_RE.match(ds_id) or not path.is_file():
        return None
    return list(json.loads(path.read_text()).get("owners", []))


def _add_owner(settings: Settings, ds_id: str, owner: str | None) -> dict[str, Any]:
    """dataset.json of ``ds_id`` with ``owner`` among its owners (under a lock)."""
    path = _datasets_dir(settings) / ds_id / "dataset.json"
    with open(settings.home / "datasets.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            info = json.loads(path.read_text())
            if owner is not None and owner not in info.setdefault("owners", []):
                info["owners"].append(owner)
                atomic_write(path, json.dumps(info, indent=1))
            return info
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_dataset(files: dict[str, bytes], settings: Settings, owner: str | None = None,
                  columns: InteractionColumns | None = None,
                  category_columns: CategoryColumns | None = None) -> dict[str, Any]:
    """Validate ``files`` fully (read with ``columns`` / ``category_columns`` when given), then move them
    into ``<home>/datasets/<id>/`` (atomic rename)."""
    budget = _CpuBudget(settings.upload_cpu_seconds)
    files = _layout(files, settings, budget)
    mapping = {k: m.model_dump(mode="json", exclude_none=True)
               for k, m in (("columns", columns), ("category_columns", category_columns)) if m is not None}
    ds_id = dataset_id(files, mapping)
    root = _datasets_dir(settings)
    final = root / ds_id
    if (final / "dataset.json").is_file():
        return _add_owner(settings, ds_id, owner)
    scratch_root = settings.home / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=scratch_root))
    try:
        for rel, blob in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
        inter = next(r for r in files if PurePosixPath(r).stem == "interactions" and "/" not in r)
        cats = next((r for r in files if PurePosixPath(r).stem == "categories" and "/" not in r), None)
        checked = check_generic_dataset(tmp / "images", tmp / inter, tmp / cats if cats else None,
                                        columns=columns or InteractionColumns(),
                                        category_columns=category_columns or CategoryColumns(),
                                        max_pixels=settings.max_image_pixels)
        budget.check("checking the dataset")
        if checked.errors:  # every problem at once, each with its file and line
            raise invalid([(_where(p, tmp), _in_upload(p.message, tmp)) for p in checked.errors],
                          f"{len(checked.errors)} problem(s) in the uploaded dataset")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = load_generic_dataset(tmp / "images", tmp / inter, tmp / cats if cats else None,
                                          columns=columns or InteractionColumns(),
                                          category_columns=category_columns or CategoryColumns())
            except (InvalidInput, NotFound) as exc:
                raise InvalidInput(f"{inter}: {_in_upload(str(exc), tmp)}") from None
            except (UnicodeError, ValueError, OSError) as exc:  # whatever the loader did not name
                raise InvalidInput(f"{inter}: cannot be read: {type(exc).__name__}: {_in_upload(str(exc), tmp)}") \
                    from None
        budget.check("reading the interactions")
        n_rows = max(0, sum(1 for line in files[inter].decode("utf-8", "replace").splitlines() if line.strip()) - 1)
        info = {
            "id": ds_id, "n_images": sum(r.startswith("images/") for r in files), "n_interactions": n_rows,
            "has_categories": cats is not None, "bytes": sum(len(b) for b in files.values()), "created": time.time(),
            "usable": {"users": ds.n_users, "items": len(ds.catalog)},
            "spec": {"kind": "generic", "images_dir": f"{ds_id}/images", "interactions": f"{ds_id}/{inter}",
                     **({"categories": f"{ds_id}/{cats}"} if cats else {}), **mapping},
            "owners": [owner] if owner is not None else [],
            "warnings": [{"loc": _where(p, tmp), "msg": _in_upload(p.message, tmp)} for p in checked.warnings],
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=1))
        root.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(final)
        except OSError:  # the same content was stored meanwhile
            if not (final / "dataset.json").is_file():
                raise
            return _add_owner(settings, ds_id, owner)
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_upload(text: str, scratch: Path) -> str:
    """``text`` with the upload's scratch folder on the server left out: paths as the uploader named them
    (``images``, ``interactions.csv``), the scratch folder itself named ``the upload``."""
    for form in {str(scratch), str(scratch.resolve())}:
        text = text.replace(form + "/", "").replace(f"'{form}'", "'the upload'").replace(form, "the upload")
    return text


def _where(problem: Problem, scratch: Path) -> str:
    """``file[:line]`` of a problem, relative to the upload (no server path)."""
    file = _in_upload(problem.file, scratch)
    return file if problem.line is None else f"{file}:{problem.line}"


def _read(upload: UploadFile) -> bytes:
    upload.file.seek(0)
    return upload.file.read()


def upload_slots(request: Request) -> threading.BoundedSemaphore:
    """The app's semaphore of uploads validated at once (``upload_concurrency``)."""
    state = request.app.state
    if getattr(state, "upload_slots", None) is None:
        state.upload_slots = threading.BoundedSemaphore(state.settings.upload_concurrency)
    return state.upload_slots


@router.post("", status_code=201, response_model=DatasetInfo, summary="Upload a catalog",
             responses=error_responses(503))
def upload_dataset(
    request: Request,
    # optional files, declared without `| None` so the API description says "a file, or absent", never null
    archive: UploadFile = File(None, description="a zip with images/ and interactions.csv [+ categories.csv]"),
    images: list[UploadFile] = File(None, description="image files named <item_id>.<jpg|png|webp>"),
    interactions: UploadFile = File(None, description="CSV/TSV with user,item[,rating,timestamp] columns"),
    categories: UploadFile = File(None, description="CSV with item,category columns"),
    columns: str = Form(None, description="JSON: the interaction file's columns when they are not named user, "
                        "item[, timestamp, rating], e.g. " + _MAPPING_EXAMPLES["columns"] + " (fields: user, item, "
                        "timestamp, rating, min_rating, delimiter); kept in the dataset's spec block"),
    category_columns: str = Form(None, description="JSON: the categories file's columns, e.g. "
                                 + _MAPPING_EXAMPLES["category_columns"]),
    settings: Settings = Depends(get_app_settings),
    caller: Caller = Depends(require_api_key),
) -> dict[str, Any]:
    """Validate everything (422 naming the bad file; 413 above a size, pixel or CPU limit; 503 while
    ``upload_concurrency`` other uploads are validated), then store it."""
    mapping = (parse_mapping(columns, "columns", InteractionColumns),
               parse_mapping(category_columns, "category_columns", CategoryColumns))
    slots = upload_slots(request)
    if not slots.acquire(blocking=False):
        raise Overloaded(f"{settings.upload_concurrency} uploads are being validated; retry in a moment")
    try:
        files: dict[str, bytes] = {}
        if archive is not None:
            files.update(files_from_zip(_read(archive), settings.max_upload_bytes, settings.max_zip_members,
                                        settings.max_zip_ratio))
        for up in images or []:
            files[f"images/{_safe_name(up.filename or '', 'images')}"] = _read(up)
        for field, up in (("interactions", interactions), ("categories", categories)):
            if up is not None:
                suffix = PurePosixPath(up.filename or "").suffix.lower()
                files[f"{field}{suffix if suffix in TABLE_SUFFIXES else '.csv'}"] = _read(up)
        if not files:
            raise InvalidInput("send an archive, or images + interactions")
        return _public(store_dataset(files, settings, caller.owner, *mapping))
    finally:
        slots.release()


def _public(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "owners"}


def _info(settings: Settings, ds_id: str, caller: Caller | None = None) -> dict[str, Any]:
    path = _datasets_dir(settings) / ds_id / "dataset.json"
    if not DATASET_ID_RE.match(ds_id) or not path.is_file():
        raise NotFound(f"unknown dataset {ds_id!r}")
    info = json.loads(path.read_text())
    if caller is not None and not caller.may_see(info.get("owners", [])):
        raise NotFound(f"unknown dataset {ds_id!r}")
    return info


@router.get("", response_model=list[DatasetInfo], summary="List uploaded datasets (this key's; all for an admin)")
def list_datasets(settings: Settings = Depends(get_app_settings),
                  caller: Caller = Depends(require_api_key)) -> list[dict[str, Any]]:
    root = _datasets_dir(settings)
    ids = sorted(p.name for p in root.iterdir() if DATASET_ID_RE.match(p.name)) if root.is_dir() else []
    infos = [json.loads((root / i / "dataset.json").read_text()) for i in ids if (root / i / "dataset.json").is_file()]
    return [_public(i) for i in infos if caller.may_see(i.get("owners", []))]


@router.get("/{dataset_id}", response_model=DatasetInfo, summary="One uploaded dataset")
def get_dataset(dataset_id: str, settings: Settings = Depends(get_app_settings),
                caller: Caller = Depends(require_api_key)) -> dict[str, Any]:
    return _public(_info(settings, dataset_id, caller))
