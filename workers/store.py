"""Where a model repository's files come from: a local folder, or an S3-compatible bucket.

:class:`~icow.workers.repository.Repository` asks its store four things and nothing else, so
the rest of the worker never cares where a model came from:

- :meth:`Store.listing`: every model folder with the versions that are complete,
- :meth:`Store.config_text`: a model's ``config.toml``, if it has one,
- :meth:`Store.fetch`: make one version's ``model.onnx`` present and verified on local disk,
- :meth:`Store.model_dir`: the local folder in which ``<version>/model.onnx`` then lies.

:class:`LocalStore` reads a folder in place (nothing to fetch). ``S3Store``
(workers/s3store.py) lists a bucket and downloads into a local cache, each file checked against
its version's ``manifest.json`` before it is moved into place.

A version's ``manifest.json`` (written by ``icow models push`` after ``model.onnx``, so that a
version is complete once it exists)::

    {"file": "model.onnx", "size": 1234, "sha256": "<64 hex digits>"}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from icow.errors import InvalidInput

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
MANIFEST_FILE = "manifest.json"
S3_SCHEME = "s3://"
_CHUNK = 1 << 20
VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")  # a version folder: a positive integer, no leading zero


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a version's ``model.onnx`` must be: its size and SHA-256."""

    size: int
    sha256: str
    file: str = MODEL_FILE

    @staticmethod
    def of_file(path: Path) -> Manifest:
        return Manifest(size=path.stat().st_size, sha256=sha256_file(path))

    def to_bytes(self) -> bytes:
        return json.dumps({"file": self.file, "size": self.size, "sha256": self.sha256}, indent=2).encode() + b"\n"

    @staticmethod
    def parse(raw: bytes, where: str) -> Manifest:
        """Validate a manifest read from ``where`` (named in the error)."""
        try:
            doc = json.loads(raw)
            size, digest, file = doc["size"], doc["sha256"], doc.get("file", MODEL_FILE)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{where}: not a valid manifest ({exc})") from exc
        ok_digest = isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
        if not (isinstance(size, int) and size >= 0 and ok_digest and file == MODEL_FILE):
            raise InvalidInput(f"{where}: manifest needs file {MODEL_FILE!r}, size >= 0 and a hex sha256")
        return Manifest(size=size, sha256=digest)


class Store(Protocol):
    """A model repository's backing store (see the module docstring)."""

    where: str  # for messages: the folder, or s3://bucket/prefix and its endpoint
    root: Path  # the local folder in which <model>/<version>/model.onnx lie (S3: the cache)

    def listing(self) -> dict[str, list[int]]:
        """Every model folder name (unvalidated) -> its complete versions, ascending."""
        ...

    def config_text(self, model: str) -> str | None:
        """The model's ``config.toml``, or None without one."""
        ...

    def model_dir(self, model: str) -> Path:
        """The local folder holding ``<version>/model.onnx`` once fetched."""
        ...

    def fetch(self, model: str, version: int) -> Path:
        """Make the version's file present and verified locally; raise an IcowError if not."""
        ...


class LocalStore:
    """A repository folder, read in place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise InvalidInput(f"model repository {self.root} is not a folder")
        self.where = str(self.root)

    def listing(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for d in sorted(self.root.iterdir()):
            if d.is_dir():
                found[d.name] = sorted(
                    int(v.name)
                    for v in d.iterdir()
                    if v.is_dir() and VERSION_RE.match(v.name) and (v / MODEL_FILE).is_file()
                )
        return found

    def config_text(self, model: str) -> str | None:
        path = self.root / model / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            return path.read_text()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: {exc}") from exc

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def fetch(self, model: str, version: int) -> Path:
        return self.root / model / str(version) / MODEL_FILE


def is_s3_url(repo: str | Path) -> bool:
    return str(repo).startswith(S3_SCHEME)


def open_store(repo: str | Path, *, cache_dir: str | Path | None = None) -> Store:
    """The store for ``repo``: ``s3://bucket/prefix`` (boto3, AWS_* variables) or a folder."""
    if is_s3_url(repo):
        from icow.workers.s3store import S3Store  # boto3 is imported only for S3 repositories

        return S3Store(str(repo), cache_dir=cache_dir)
    return LocalStore(repo)
