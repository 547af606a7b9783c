"""The job digest: what makes a reused custom job id detectable (docs/PROTOCOL.md §8.4).

A client that lets its caller choose a job id sends, in the message's ``icow_digest`` header
(right after ``id``) and to ``icow_submit``, the SHA-256 of what the job asks: model, version,
outputs and every input tensor (name, datatype, shape, bytes). ``icow_submit`` keeps the first
digest of an id under ``icow:digest:<id>`` and refuses a later job under the same id whose
digest differs (``JobIdConflict``); the same digest is the same job, resubmitted (idempotent).

The digest is the lowercase hex SHA-256 of ``msgpack(["icow-digest", 1, model, version or nil,
outputs or nil, [[name, datatype, shape], ...]])`` followed by each input's data bytes, the
inputs sorted by the UTF-8 bytes of their names (the order a caller lists them in does not
matter), data being the wire bytes of §5.1 whether the tensor travels inline or claim-checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

HEADER = "icow_digest"  # the message header carrying it (headers.id, then this)
TAG = "icow-digest"
VERSION = 1


def job_digest(
    model: str,
    version: int | None,
    outputs: Sequence[str] | None,
    tensors: Iterable[tuple[str, str, Sequence[int], Any]],
) -> str:
    """The digest of a job: ``tensors`` are (name, datatype, shape, data bytes) per input."""
    ordered = sorted(tensors, key=lambda t: t[0].encode("utf-8"))
    head = [TAG, VERSION, model, version, None if outputs is None else list(outputs)]
    head.append([[name, datatype, [int(d) for d in shape]] for name, datatype, shape, _ in ordered])
    h = hashlib.sha256(msgpack.packb(head, use_bin_type=True))
    for *_, data in ordered:
        h.update(data)
    return h.hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
