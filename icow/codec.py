"""msgpack as every ICOW record is written and read: one packing, one unpacking, one version.

Results, dead letters, kept inputs, heartbeats and model metadata all go through
:func:`packb` / :func:`unpackb` (bin type for bytes, str for text). What each record holds is
its owner's: icow.envelope (the job), icow.celery_message (the Celery wrapper around it),
icow.result (the result record), icow.records (dead letters, failures, kept inputs, bulks).
"""

from __future__ import annotations

from typing import Any

import msgpack

PROTOCOL_VERSION = 1  # ``v`` in the job envelope, the result envelope and the kept records


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: Any) -> Any:
    # strict_map_key=False is safe here: keys are validated by each record's reader.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
