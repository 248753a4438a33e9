"""Content-addressed artifact store.

An artifact is a directory of files plus ``meta.json``. Its key is the SHA-256 of a canonical
JSON document holding the step name, its parameters, the keys of its input artifacts and the
code version of the step, so the same computation always lands on the same key and a grid never
recomputes work that is already stored. Writes are atomic: files go to a private temporary
directory that is renamed into place only when the step finished, so a crash never leaves a
half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from advrec_common.errors import InvalidInput, NotFound

STORE_FORMAT = 1


def _canonical(obj: Any) -> Any:
    """Turn params into plain JSON types with a stable order (tuples -> lists, paths -> str)."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        raise InvalidInput("NaN is not allowed in artifact parameters")
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "model_dump"):
        return _canonical(obj.model_dump(mode="json"))
    raise InvalidInput(f"cannot hash parameter of type {type(obj).__name__}")


def artifact_key(step: str, params: Mapping[str, Any], inputs: Sequence[str] = (), version: str = "1") -> str:
    """The content address of a step's output: hash of (step, params, input keys, code version)."""
    doc = {"format": STORE_FORMAT, "step": step, "version": version, "params": _canonical(params), "inputs": list(inputs)}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, then a rename.

    Readers see the old file or the new one, never a partial write. The one atomic-write helper of
    advrec (records, overlays, model files, study outputs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (used to key checkpoints and datasets by content)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ArtifactStore:
    """A directory of immutable artifacts addressed by key (see :func:`artifact_key`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _check_key(self, key: str) -> str:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise InvalidInput(f"not an artifact key: {key!r}")
        return key

    def path(self, key: str) -> Path:
        """Directory of artifact ``key`` (may not exist)."""
        key = self._check_key(key)
        return self.root / "objects" / key[:2] / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def open(self, key: str) -> Path:
        """Directory of an existing artifact; NotFound when absent."""
        p = self.path(key)
        if not (p / "meta.json").is_file():
            raise NotFound(f"artifact {key} is not in the store")
        return p

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads((self.open(key) / "meta.json").read_text())

    @contextmanager
    def writing(self, key: str, meta: Mapping[str, Any] | None = None) -> Iterator[Path]:
        """Yield a private directory to fill; it becomes artifact ``key`` atomically on success.

        If the artifact appeared meanwhile (another worker computed it), the new copy is dropped:
        both are the same content by construction.
        """
        final = self.path(key)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key[:12]}-", dir=self.root / "tmp"))
        try:
            yield tmp
            (tmp / "meta.json").write_text(json.dumps({"key": key, **_canonical(dict(meta or {}))}, indent=1))
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has(key):
                    # a stale partial directory (crash between rename steps cannot happen, but a
                    # foreign directory might): replace it
                    stale = final.with_name(final.name + f".stale-{uuid.uuid4().hex}")
                    os.rename(final, stale)
                    os.rename(tmp, final)
                    shutil.rmtree(stale, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def keys(self) -> list[str]:
        out = []
        for shard in (self.root / "objects").iterdir():
            out.extend(p.name for p in shard.iterdir() if (p / "meta.json").is_file())
        return sorted(out)
