"""Shadow runs: a candidate version answers nobody, but runs on a sample of live traffic.

With ``shadow = { version = 3, fraction = 0.1 }`` in a model's config.toml, each job that a
worker answered successfully on another version of that model is, with probability
``fraction``, run again on version 3 after its answer was written. The outputs are compared
(:func:`compare`) and the comparison goes to the listeners: Prometheus metrics
(workers/metrics.py, ``icow_shadow_*``) and :class:`ShadowStats` (the heartbeat, `icow status`).
The shadow's outputs are never written anywhere a caller reads.

The shadow runs in one background thread fed by a bounded queue: the intake only samples and
enqueues (no session call, no Redis), so neither the caller nor the next take waits for a
shadow run; when the queue is full (or holds ``queue_max_bytes`` of inputs) the job is not
shadowed and counts as ``dropped``. Under load the shadow sheds itself instead of slowing the
fleet down; its sessions still share the device with the primary's.

A shadowed job is a **mismatch** when its outputs cannot be compared (other names, shapes or
types, or BYTES that differ) or when any output's max absolute error exceeds the spec's
``max_abs_err`` (1e-5 unless config.toml says ``shadow = { ..., max_abs_err = 1e-3 }``; a NaN
where the other side has a number counts as an infinite error); ``compared`` counts the jobs
whose every output is within it. Both carry the per-output figures.

The shadow version is loaded from the repository by every worker serving the model, whether or
not the model's ``versions`` policy serves it to callers (it takes jobs only if it does).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from icow import envelope, keys, result, tensor
from icow.errors import InvalidInput
from icow.workers.followup import Answered

if TYPE_CHECKING:
    from icow.workers.models import ModelManager
    from icow.workers.runtime import OnnxModel

log = logging.getLogger("icow.shadow")

COMPARED, MISMATCH, FAILED, DROPPED = "compared", "mismatch", "failed", "dropped"
RETRY_LOAD_S = 30.0  # a shadow version that did not load is tried again after this
DEFAULT_MAX_ABS_ERR = 1e-5  # the tolerance of a shadow run (and `icow replay --max-abs-err`)
WARN_EVERY_S = 60.0  # mismatches and failures are logged at most this often per model and versions


@dataclass(frozen=True)
class ShadowSpec:
    """``shadow = { version = V, fraction = F, max_abs_err = E }`` of a model's config.toml."""

    version: int
    fraction: float
    max_abs_err: float = DEFAULT_MAX_ABS_ERR  # an output further than this from the primary's: mismatch

    @staticmethod
    def pop_from(raw: MutableMapping[str, Any], where: str = "config.toml") -> ShadowSpec | None:
        """Take ``shadow`` out of a parsed config.toml, validating it (None: no shadow)."""
        spec = raw.pop("shadow", None)
        if spec is None:
            return None
        if not isinstance(spec, Mapping) or set(spec) - {"version", "fraction", "max_abs_err"}:
            raise InvalidInput(f"{where}: shadow must be {{ version = V, fraction = F[, max_abs_err = E] }}")
        version, fraction = spec.get("version"), spec.get("fraction", 1.0)
        tolerance = spec.get("max_abs_err", DEFAULT_MAX_ABS_ERR)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidInput(f"{where}: shadow.version must be a positive integer")
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
            raise InvalidInput(f"{where}: shadow.fraction must be a number in 0..1")
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 <= tolerance < float("inf"):
            raise InvalidInput(f"{where}: shadow.max_abs_err must be a finite number >= 0")
        return ShadowSpec(version, float(fraction), float(tolerance))


@dataclass(frozen=True)
class OutputDiff:
    """How one output of the shadow differs from the primary's, for one job."""

    max_abs_error: float
    max_rel_error: float  # max |shadow - primary| / max |primary| (0 when both are all zero)
    mean_abs_error: float = 0.0
    size: int = 0  # elements compared
    argmax_rows: int = 0  # classifier-like outputs (2-D float): rows compared ...
    argmax_agree: int = 0  # ... and rows whose argmax is the same


@dataclass(frozen=True)
class ShadowResult:
    model: str
    primary: int
    shadow: int
    outcome: str  # compared (within the tolerance), mismatch (beyond it, or not comparable), failed, dropped
    outputs: Mapping[str, OutputDiff] = field(default_factory=dict)
    latency_ratio: float | None = None  # shadow compute / the primary's share of its session call
    error: str | None = None


class ShadowListener(Protocol):
    def shadow_done(self, result: ShadowResult) -> None: ...


def compare(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> dict[str, OutputDiff] | str:
    """Per-output differences, or why the outputs cannot be compared."""
    if list(primary) != list(shadow):
        return f"outputs {list(shadow)} differ from the primary's {list(primary)}"
    out: dict[str, OutputDiff] = {}
    for name, a in primary.items():
        b = shadow[name]
        if a.shape != b.shape:
            return f"output {name!r}: shape {list(b.shape)} differs from the primary's {list(a.shape)}"
        if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":  # BYTES: equal or not
            if a.dtype.kind != b.dtype.kind or not np.array_equal(a, b):
                return f"output {name!r}: the strings differ"
            out[name] = OutputDiff(0.0, 0.0, size=a.size)
            continue
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(fa - fb)
        # NaN against NaN (or the same infinity) agrees; NaN against anything else is infinitely off
        diff[(np.isnan(fa) & np.isnan(fb)) | (fa == fb)] = 0.0
        diff[np.isnan(diff)] = np.inf
        err = float(np.max(diff)) if fa.size else 0.0
        mean = float(np.mean(diff)) if fa.size else 0.0
        scale = float(np.max(np.abs(fa))) if fa.size else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        rows = agree = 0
        if a.ndim == 2 and a.dtype.kind == "f" and a.shape[1] > 1 and a.shape[0] > 0:
            rows = a.shape[0]
            agree = int(np.sum(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        out[name] = OutputDiff(err, rel, mean, a.size, rows, agree)
    return out


def beyond(diffs: Mapping[str, OutputDiff], max_abs_err: float) -> str | None:
    """Why the outputs mismatch at this tolerance (None: every output is within it)."""
    for name, d in diffs.items():
        if not d.max_abs_error <= max_abs_err:
            return f"output {name!r}: max abs error {d.max_abs_error:.6g} > {max_abs_err:g}"
    return None


def _outputs_of(a: Answered) -> dict[str, np.ndarray]:
    """The primary's outputs as written (claim-checked ones from the blobs written with them)."""
    wire, missing = envelope.join(result.of(a.meta).outputs, a.blobs)
    if missing:
        raise KeyError(f"output {missing[0]!r} was not written with the answer")
    return {t["name"]: tensor.decode(t, max_bytes=1 << 62) for t in wire}


@dataclass
class _Work:
    answered: Answered
    primary: int
    shadow: int
    nbytes: int
    max_abs_err: float = DEFAULT_MAX_ABS_ERR


class ShadowRunner:
    """A follow-up (workers/followup.py): samples answered jobs of shadowed models and runs
    them on the shadow version in a background thread."""

    def __init__(
        self,
        manager: ModelManager,
        listeners: Sequence[ShadowListener] = (),
        *,
        queue_max: int = 64,
        queue_max_bytes: int = 256 * 1024 * 1024,
        rng: random.Random | None = None,
    ):
        self.manager = manager
        self.listeners = list(listeners)
        self.queue_max_bytes = queue_max_bytes
        self._queue: queue.Queue[_Work | None] = queue.Queue(queue_max)
        self._bytes = 0
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._load_failed: dict[tuple[str, int], float] = {}
        self._warned: dict[tuple[str, int, int], float] = {}
        self._thread: threading.Thread | None = None

    # -- the intake's side: sample and enqueue, never block

    def jobs_answered(self, answered: Sequence[Answered]) -> None:
        for a in answered:
            entry = self.manager.entries.get(a.model)
            spec = entry.config.shadow if entry is not None else None
            if spec is None or not a.ok or a.version is None or a.version == spec.version:
                continue
            if from_replay(a) or self._rng.random() >= spec.fraction:
                continue
            nbytes = sum(len(t.get("data") or b"") for t in a.job["inputs"])
            work = _Work(a, a.version, spec.version, nbytes, spec.max_abs_err)
            with self._lock:
                fits = self._bytes + nbytes <= self.queue_max_bytes
                if fits:
                    try:
                        self._queue.put_nowait(work)
                        self._bytes += nbytes
                    except queue.Full:
                        fits = False
            if not fits:
                self._tell(ShadowResult(a.model, a.version, spec.version, DROPPED))

    # -- the shadow thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="icow-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while (work := self._queue.get()) is not None:
            with self._lock:
                self._bytes -= work.nbytes
            try:
                self._tell(self.run(work.answered, work.shadow, work.max_abs_err))
            except Exception:
                log.exception("a shadow run failed unexpectedly")

    def run(self, a: Answered, shadow: int, max_abs_err: float = DEFAULT_MAX_ABS_ERR) -> ShadowResult:
        """Run one answered job on version ``shadow`` and compare (in the calling thread): a
        mismatch past ``max_abs_err``."""
        primary = a.version or 0
        try:
            model = self._session(a.model, shadow)
            inputs: dict[str, np.ndarray] = {}
            datatypes: dict[str, str] = {}
            for t in a.job["inputs"]:
                inputs[t["name"]] = tensor.decode(t, max_bytes=1 << 62)
                datatypes[t["name"]] = t["datatype"]
            expected = _outputs_of(a)
            model.check_inputs(inputs, datatypes)
            t0 = time.perf_counter()
            got = model.run(inputs, list(expected))
            shadow_s = time.perf_counter() - t0
        except Exception as exc:
            return ShadowResult(a.model, primary, shadow, FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        diffs = compare(expected, got)
        if isinstance(diffs, str):
            return ShadowResult(a.model, primary, shadow, MISMATCH, error=diffs)
        why = beyond(diffs, max_abs_err)
        outcome = COMPARED if why is None else MISMATCH
        return ShadowResult(a.model, primary, shadow, outcome, diffs, _ratio(shadow_s, a, inputs), why)

    def _session(self, model: str, version: int) -> OnnxModel:
        entry = self.manager.entry(model)
        if version in entry.versions:
            return self.manager.get(model, version)
        failed_at = self._load_failed.get((model, version))
        if failed_at is not None and time.monotonic() - failed_at < RETRY_LOAD_S:
            raise InvalidInput(f"shadow version {version} of {model!r} did not load (retried every {RETRY_LOAD_S:g} s)")
        try:
            self.manager.repo.store.fetch(model, version)  # S3: download and verify; a folder: nothing
            return self.manager.load(entry, version)
        except Exception:
            self._load_failed[(model, version)] = time.monotonic()
            raise

    def _tell(self, result: ShadowResult) -> None:
        key = (result.model, result.primary, result.shadow)
        now = time.monotonic()
        if result.outcome in (FAILED, MISMATCH) and now - self._warned.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[key] = now  # a wholly different shadow mismatches every job: one line a minute
            log.warning(
                "shadow run of %s v%s (primary v%s): %s: %s",
                result.model,
                result.shadow,
                result.primary,
                result.outcome,
                result.error,
            )
        for listener in self.listeners:
            try:
                listener.shadow_done(result)
            except Exception:
                log.exception("a shadow listener failed")


def from_replay(a: Answered) -> bool:
    """Jobs of `icow replay` compare two versions already: they are not shadowed."""
    return keys.is_replay_job(a.job_id)


def _ratio(shadow_s: float, a: Answered, inputs: Mapping[str, np.ndarray]) -> float | None:
    """Shadow compute time over the primary's: its session call's time, shared out by samples
    when the job was batched with others."""
    timing = result.of(a.meta).timing
    compute, samples = timing.compute_s, timing.batch_samples
    if compute is None or compute <= 0:
        return None
    first = next(iter(inputs.values()))
    mine = int(first.shape[0]) if first.ndim else 1
    share = compute * mine / samples if isinstance(samples, int) and samples >= mine > 0 else compute
    return shadow_s / share if share > 0 else None


class ShadowStats:
    """Running totals per (model, primary, shadow) for the heartbeat (``shadow`` in it, shown
    by `icow status`): sums, so that `icow status` can add workers up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}

    def shadow_done(self, result: ShadowResult) -> None:
        key = f"{result.model}:{result.primary}:{result.shadow}"
        with self._lock:
            row = self._rows.setdefault(
                key,
                {
                    "model": result.model,
                    "primary": result.primary,
                    "shadow": result.shadow,
                    **{k: 0 for k in (COMPARED, MISMATCH, FAILED, DROPPED, "argmax_rows", "argmax_agree")},
                    "max_abs_error": 0.0,
                    "max_rel_error": 0.0,
                    "latency_ratio_sum": 0.0,
                    "latency_ratios": 0,
                    "last_error": None,
                },
            )
            row[result.outcome] += 1
            if result.error:
                row["last_error"] = result.error
            for d in result.outputs.values():
                row["max_abs_error"] = max(row["max_abs_error"], d.max_abs_error)
                row["max_rel_error"] = max(row["max_rel_error"], d.max_rel_error)
                row["argmax_rows"] += d.argmax_rows
                row["argmax_agree"] += d.argmax_agree
            if result.latency_ratio is not None:
                row["latency_ratio_sum"] += result.latency_ratio
                row["latency_ratios"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"shadow": [dict(r) for r in self._rows.values()]}
