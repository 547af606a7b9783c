"""The types and bounds of a model's ``config.toml`` values, checked one model at a time.

Every error names the file, the key, the value given and what is allowed, so that one bad
value refuses only its own model (workers/repository.py reports it as failed) while the others
keep serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from icow import keys
from icow.errors import InvalidInput

# key -> (lowest, highest) for the integer settings
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "threads": (0, 1024),  # onnxruntime intra-op threads (0: the worker's --threads)
    "max_batch": (1, 65_536),  # samples per session call
    "max_queue": (0, 1_000_000),  # jobs waiting (0: the fleet default)
    "keep_inputs": (0, keys.KEPT_MAX),
    "latest": (0, 2**31 - 1),  # a version number (0: the highest served)
}
MAX_WAIT_MS = 10_000.0  # max_wait_ms: 0..10 s (a number; fractions allowed)
# Every key a config.toml may hold (GPU and shadow keys are checked by their own owners).
KNOWN_KEYS = frozenset(
    {
        "versions",
        "preload",
        "providers",
        "max_wait_ms",
        *INT_BOUNDS,
        "gpu_mem_limit",
        "arena_extend_strategy",
        "cudnn_conv_algo_search",
        "tensorrt_fp16",
        "tensorrt_cache_dir",
        "shadow",
    }
)


def _bad(where: str, key: str, value: Any, allowed: str) -> InvalidInput:
    return InvalidInput(f"{where}: {key} = {value!r}: {allowed}")


def check_keys(raw: Mapping[str, Any], where: str) -> None:
    """Refuse keys ICOW does not know (a typo would otherwise be ignored silently)."""
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {unknown}; known keys: {sorted(KNOWN_KEYS)}")


def integer(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    """``raw[key]`` (or ``default``): a TOML integer within :data:`INT_BOUNDS`."""
    value = raw.get(key, default)
    lo, hi = INT_BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(where, key, value, f"must be an integer in {lo}..{hi}")
    return value


def max_wait_ms(raw: Mapping[str, Any], where: str) -> float:
    value = raw.get("max_wait_ms", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_MS:
        raise _bad(where, "max_wait_ms", value, f"must be a number of milliseconds in 0..{MAX_WAIT_MS:g}")
    return float(value)


def boolean(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _bad(where, key, value, "must be true or false")
    return value


def versions(raw: Mapping[str, Any], where: str) -> str | tuple[int, ...]:
    value = raw.get("versions", "all")
    if value in ("all", "latest"):
        return str(value)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**31 - 1 for v in value)
    ):
        return tuple(value)
    raise _bad(where, "versions", value, "must be 'all', 'latest' or a non-empty list of positive integers")


def providers(raw: Mapping[str, Any], names: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = raw.get("providers", ["cuda", "cpu"])
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, str) and p in names for p in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise _bad(where, "providers", value, f"must be a non-empty list of distinct names among {list(names)}")
