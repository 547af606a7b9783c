"""Models from an S3-compatible store (AWS S3, MinIO, Ceph, Cloudflare R2, ...): ``s3://bucket/prefix``.

The layout under the prefix is a local repository's, plus a ``manifest.json`` per version
(workers/store.py), written last by ``icow models push``: a version exists once its manifest
does. Endpoint, region and credentials come from boto3's standard chain: ``AWS_ENDPOINT_URL``
(MinIO and others), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, ``~/.aws/config``, instance and pod roles. A store that is not AWS is
addressed path-style (``http://host:9000/bucket/key``), which every S3-compatible server speaks.

Workers download into ``<cache_dir>/s3/<endpoint host>/<bucket>/<prefix>/<model>/<version>/``:
to a temporary name, hashed while it streams, moved into place (``os.replace``) only when its
size and SHA-256 match the manifest; a file lock keeps workers sharing a cache from fetching
the same version twice. A file already in the cache is hashed again once per process before it
is served. A version whose bytes do not match is refused (not fetched again until its objects
change); one that cannot be reached is retried at the next rescan. Each rescan is one listing
of the prefix; objects are read again only when their ETag changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from icow import keys, settings
from icow.errors import InvalidInput, StoreUnavailable
from icow.workers.store import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    S3_SCHEME,
    VERSION_RE,
    Manifest,
    sha256_file,
)

log = logging.getLogger("icow.s3")

_CHUNK = 1 << 20
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix``); the prefix may be empty."""
    if not url.startswith(S3_SCHEME):
        raise InvalidInput(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.match(bucket):
        raise InvalidInput(f"{url!r}: {bucket!r} is not a valid bucket name")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise InvalidInput(f"{url!r}: the prefix must not contain empty, '.' or '..' parts")
    return bucket, prefix


def make_client() -> Any:
    """A boto3 S3 client configured from the standard AWS variables and files."""
    import boto3
    from botocore.config import Config

    # botocore reads AWS_DEFAULT_REGION; the AWS CLI v2 and the other SDKs also read AWS_REGION.
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)

    def client(addressing: str) -> Any:
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": addressing},
        )
        return session.client("s3", config=config)

    c = client("auto")
    host = urlsplit(c.meta.endpoint_url).hostname or ""
    return c if host.endswith(".amazonaws.com") else client("path")


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class S3Store:
    """A model repository under ``s3://bucket/prefix`` (see the module docstring)."""

    def __init__(self, url: str, *, cache_dir: str | Path | None = None, client: Any = None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client if client is not None else make_client()
        self.endpoint = str(self.client.meta.endpoint_url)
        self.where = S3_SCHEME + "/".join(p for p in (self.bucket, self.prefix) if p)
        cache = Path(cache_dir or settings.user_cache_dir())  # the worker hands down ICOW_CACHE_DIR
        host = urlsplit(self.endpoint).netloc
        self.root = (cache / "s3" / _safe(host) / self.bucket).joinpath(*self.prefix.split("/")).resolve()
        self._objects: dict[str, tuple[str, int]] = {}  # key under the prefix -> (ETag, size), last listing
        self._configs: dict[str, tuple[str, str]] = {}  # model -> (ETag, config.toml text)
        self._verified: dict[tuple[str, int], tuple[str, str]] = {}  # version -> ETags checked this process
        self._refused: dict[tuple[str, int], tuple[tuple[str, str], str]] = {}  # ETags -> why
        self._incomplete: set[str] = set()  # versions without a manifest, logged once
        self._call("reach", self.client.head_bucket, Bucket=self.bucket)

    # -- reading (workers)

    def listing(self) -> dict[str, list[int]]:
        objects: dict[str, tuple[str, int]] = {}
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        for page in self._call("list", lambda: list(pages)):
            for obj in page.get("Contents", ()):
                objects[obj["Key"][len(base) :]] = (str(obj.get("ETag", "")), int(obj.get("Size", 0)))
        self._objects = objects
        found: dict[str, list[int]] = {}
        for rel in objects:
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == CONFIG_FILE:
                found.setdefault(parts[0], [])
            if len(parts) != 3 or not VERSION_RE.match(parts[1]) or parts[2] != MODEL_FILE:
                continue
            versions = found.setdefault(parts[0], [])
            if f"{parts[0]}/{parts[1]}/{MANIFEST_FILE}" in objects:
                versions.append(int(parts[1]))
            elif rel not in self._incomplete:
                self._incomplete.add(rel)
                log.info("%s/%s has no %s (yet): not served until it has", self.where, rel, MANIFEST_FILE)
        for versions in found.values():
            versions.sort()
        self._prune(found)
        return found

    def config_text(self, model: str) -> str | None:
        key = f"{model}/{CONFIG_FILE}"
        listed = self._objects.get(key)
        if listed is None:
            return None
        cached = self._configs.get(model)
        if cached is not None and cached[0] == listed[0]:
            return cached[1]
        try:
            text = self._read(key).decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{self.where}/{key}: {exc}") from exc
        self._configs[model] = (listed[0], text)
        return text

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def fetch(self, model: str, version: int) -> Path:
        mkey, okey = f"{model}/{version}/{MANIFEST_FILE}", f"{model}/{version}/{MODEL_FILE}"
        listed, mlisted = self._objects.get(okey), self._objects.get(mkey)
        if listed is None or mlisted is None:
            raise InvalidInput(f"{self.where}/{model}/{version} is not complete in the store")
        stamp = (mlisted[0], listed[0])
        final = self.model_dir(model) / str(version) / MODEL_FILE
        if self._verified.get((model, version)) == stamp and final.is_file():
            return final
        refused = self._refused.get((model, version))
        if refused is not None and refused[0] == stamp:
            raise InvalidInput(refused[1])
        try:
            manifest = Manifest.parse(self._read(mkey), f"{self.where}/{mkey}")
            if listed[1] != manifest.size:
                raise InvalidInput(
                    f"{self.where}/{okey} is {listed[1]} bytes, its manifest says {manifest.size}: refused"
                )
            self._download_verified(okey, final, manifest)
        except InvalidInput as exc:
            self._refused[(model, version)] = (stamp, str(exc))
            raise
        self._refused.pop((model, version), None)
        self._verified[(model, version)] = stamp
        return final

    def _download_verified(self, key: str, final: Path, manifest: Manifest) -> None:
        """Put the object at ``final`` if its bytes match ``manifest``; never a partial file."""
        final.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(final.parent / ".lock"):
            if final.is_file():  # from an earlier run or another worker: checked again
                if final.stat().st_size == manifest.size and sha256_file(final) == manifest.sha256:
                    return
                final.unlink()
            fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".part", dir=final.parent)
            try:
                digest = hashlib.sha256()
                size = 0
                with os.fdopen(fd, "wb") as f:

                    def stream() -> None:
                        nonlocal size
                        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                        for chunk in body.iter_chunks(_CHUNK):
                            f.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)

                    self._call("download", stream)
                    f.flush()
                    os.fsync(f.fileno())
                if size != manifest.size or digest.hexdigest() != manifest.sha256:
                    raise InvalidInput(
                        f"{self.where}/{key}: checksum mismatch (got {size} bytes, sha256 {digest.hexdigest()}; "
                        f"manifest: {manifest.size} bytes, sha256 {manifest.sha256}): refused"
                    )
                os.replace(tmp, final)
            finally:
                Path(tmp).unlink(missing_ok=True)
        log.info("fetched %s/%s (%d bytes, sha256 verified)", self.where, key, manifest.size)

    def _prune(self, found: dict[str, list[int]]) -> None:
        """Drop cached versions that the store no longer has."""
        if not self.root.is_dir():
            return
        for d in self.root.iterdir():
            if not d.is_dir() or not keys.MODEL_NAME_RE.match(d.name):
                continue
            for v in d.iterdir():
                if v.is_dir() and VERSION_RE.match(v.name) and int(v.name) not in found.get(d.name, ()):
                    shutil.rmtree(v, ignore_errors=True)
                    self._verified.pop((d.name, int(v.name)), None)

    # -- writing (icow models push)

    def push(self, src: Path, name: str, version: int | None = None) -> str:
        """Upload ``src`` as ``<name>/<version>/model.onnx``, then its manifest: the version
        is visible only once complete. Versions are immutable: an existing one is refused
        (atomically where the server supports conditional writes, as AWS S3 and MinIO do).
        ``version`` defaults to the highest present + 1. Returns the object's URL."""
        keys.check_model_name(name)
        manifest = Manifest.of_file(src)
        for _ in range(5):  # with a default version, a concurrent push may take ours: take the next
            taken = self._versions_present(name)
            v = max(taken, default=0) + 1 if version is None else version
            if v < 1:
                raise InvalidInput("version must be a positive integer")
            url = f"{self.where}/{name}/{v}/{MODEL_FILE}"
            if v in taken:
                raise InvalidInput(f"{url} exists: versions are immutable, push a new version number")
            with open(src, "rb") as f:
                created = self._put_new(f"{name}/{v}/{MODEL_FILE}", f)
            if not created:
                if version is None:
                    continue
                raise InvalidInput(f"{url} exists: versions are immutable, push a new version number")
            if not self._put_new(f"{name}/{v}/{MANIFEST_FILE}", manifest.to_bytes()):
                raise InvalidInput(f"{self.where}/{name}/{v} was pushed by someone else at the same time")
            return url
        raise InvalidInput(f"{self.where}/{name}: could not claim a new version (concurrent pushes?)")

    def _versions_present(self, name: str) -> set[int]:
        """Every version folder with any object in it, complete or not."""
        base = self._key(f"{name}/")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        found: set[int] = set()
        for page in self._call("list", lambda: list(pages)):
            for obj in page.get("Contents", ()):
                head = obj["Key"][len(base) :].split("/", 1)[0]
                if VERSION_RE.match(head):
                    found.add(int(head))
        return found

    def _put_new(self, key: str, body: bytes | IO[bytes]) -> bool:
        """Create the object only if it does not exist yet; False if it did."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            if code not in ("NotImplemented", "501"):
                raise self._error("upload", exc) from exc
        except Exception as exc:
            err = self._error("upload", exc)
            if err is exc:
                raise
            raise err from exc
        if not isinstance(body, bytes):  # a server without conditional writes: the listing checked
            body.seek(0)
        self._call("upload", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=body)
        return True

    # -- plumbing

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _read(self, rel: str) -> bytes:
        return bytes(
            self._call("read", lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read())
        )

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            err = self._error(what, exc)
            if err is exc:
                raise
            raise err from exc

    def _error(self, what: str, exc: Exception) -> Exception:
        """Boto errors as ICOW errors that name the endpoint and say what to do."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        at = f"{self.where} at {self.endpoint}"
        if isinstance(exc, NoCredentialsError):
            return StoreUnavailable(f"no S3 credentials for {at}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                return StoreUnavailable(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreUnavailable(f"access to {at} denied ({code}): check the AWS credentials")
            return StoreUnavailable(f"S3 {what} failed for {at}: {code} {err.get('Message', '')}".rstrip())
        if isinstance(exc, BotoCoreError):  # connection refused, timeouts, a broken stream
            return StoreUnavailable(f"S3 endpoint {self.endpoint} unreachable ({what} {self.where}): {exc}")
        return exc
