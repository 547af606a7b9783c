"""`icow replay MODEL --from V1 --to V2`: run a model's kept inputs on two versions through the
fleet and compare, so that a deployment pipeline can gate a promotion on the exit status.

The inputs are those the workers kept (``keep_inputs = N`` in the model's config.toml,
workers/kept.py), newest first in ``icow:kept:<m>``; records older than their result TTL are
skipped. Each is submitted twice with the Python client, pinned to ``--from`` and to ``--to``,
as jobs named ``replay-...`` (never kept again, never shadowed), and the outputs are compared
per output name: max and mean absolute error, max relative error (over the largest magnitude of
the ``--from`` output), argmax agreement for classifier-like (2-D float) outputs.

Latency is measured apart, like for like (:func:`measure_latency`): those comparison jobs are
all submitted at once, so the worker batches them, and it drains one version's queue before the
other's (a fixed order): one version ran in batches of 1-5, the other in batches of 10+, and
its compute time shared out by samples read ~3x lower for an identical model. Instead, after a
warm-up job on each version (not counted), ``--latency-jobs`` kept inputs run one job at a
time, each waited for before the next, the versions alternating which goes first (A B, B A,
...), and only jobs that ran alone in their session call are counted: each version's p50 is the
compute time of the same inputs, alone, in the same conditions.

Exit status: 0 within the thresholds; 1 past them, or when a job failed or its outputs could
not be compared; 2 on an error (no kept inputs, a version not served, Redis unreachable).
Reading ``icow:kept:<m>`` needs the worker user's credentials: the client user cannot read
other callers' inputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icow import connection, keys, tensor
from icow.errors import IcowError
from icow.records import parse_kept
from icow.result import Result
from icow.result import read as read_result


@dataclass
class OutputReport:
    jobs: int = 0
    max_abs_error: float = 0.0
    abs_error_sum: float = 0.0
    elements: int = 0
    max_rel_error: float = 0.0
    argmax_rows: int = 0
    argmax_agree: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.abs_error_sum / self.elements if self.elements else 0.0,
            "max_rel_error": self.max_rel_error,
            "argmax_agreement": self.argmax_agree / self.argmax_rows if self.argmax_rows else None,
        }


@dataclass
class Report:
    model: str
    versions: tuple[int, int]
    kept: int = 0
    skipped: int = 0  # expired or unreadable records
    compared: int = 0
    outputs: dict[str, OutputReport] = field(default_factory=dict)
    failed: dict[int, list[str]] = field(default_factory=dict)  # version -> "job: error"
    mismatched: list[str] = field(default_factory=list)
    compute_s: dict[int, list[float]] = field(default_factory=dict)  # like for like (measure_latency)
    latency_skipped: int = 0  # latency jobs not alone in their session call, or failed

    def add(self, diffs: Mapping[str, Any]) -> None:
        self.compared += 1
        for name, d in diffs.items():
            o = self.outputs.setdefault(name, OutputReport())
            o.jobs += 1
            o.max_abs_error = max(o.max_abs_error, d.max_abs_error)
            o.abs_error_sum += d.mean_abs_error * d.size
            o.elements += d.size
            o.max_rel_error = max(o.max_rel_error, d.max_rel_error)
            o.argmax_rows += d.argmax_rows
            o.argmax_agree += d.argmax_agree

    def verdict(self, max_abs_err: float, max_rel_err: float | None, min_agreement: float | None) -> list[str]:
        """Why the replay fails the thresholds (empty: it passes)."""
        why = [f"{len(errs)} jobs failed on v{v} (first: {errs[0]})" for v, errs in self.failed.items() if errs]
        if self.mismatched:
            why.append(f"{len(self.mismatched)} jobs' outputs could not be compared (first: {self.mismatched[0]})")
        if not self.compared:
            why.append("no job was compared")
        for name, o in self.outputs.items():
            row = o.row()
            if row["max_abs_error"] > max_abs_err:
                why.append(f"output {name!r}: max abs error {row['max_abs_error']:.6g} > {max_abs_err:g}")
            if max_rel_err is not None and row["max_rel_error"] > max_rel_err:
                why.append(f"output {name!r}: max rel error {row['max_rel_error']:.6g} > {max_rel_err:g}")
            agree = row["argmax_agreement"]
            if min_agreement is not None and agree is not None and agree < min_agreement:
                why.append(f"output {name!r}: argmax agreement {agree:.4f} < {min_agreement:g}")
        return why

    def document(self) -> dict[str, Any]:
        latency = {
            f"v{v}": {"jobs": len(xs), "p50_ms": statistics.median(xs) * 1e3, "mean_ms": statistics.fmean(xs) * 1e3}
            for v, xs in self.compute_s.items()
            if xs
        }
        return {
            "model": self.model,
            "from": self.versions[0],
            "to": self.versions[1],
            "kept": self.kept,
            "skipped": self.skipped,
            "compared": self.compared,
            "outputs": {name: o.row() for name, o in sorted(self.outputs.items())},
            "failed": {f"v{v}": len(errs) for v, errs in self.failed.items()},
            "mismatched": len(self.mismatched),
            "latency": latency,
            "latency_skipped": self.latency_skipped,
        }


def kept_records(r: Any, model: str, last: int | None, now: float) -> tuple[list[dict[str, Any]], int]:
    """The newest ``last`` kept records of ``model`` that have not outlived their TTL, oldest
    first, and how many were skipped (expired or unreadable)."""
    raw = r.lrange(keys.kept(model), 0, (last or keys.KEPT_MAX) - 1)
    out, skipped = [], 0
    for item in raw:
        try:
            rec = parse_kept(item)
        except IcowError:
            skipped += 1
            continue
        if rec["model"] != model or rec["time"] + rec["ttl"] < now:
            skipped += 1
            continue
        out.append(rec)
    return out[::-1], skipped


def _compute_share(meta: Result | None, samples: int) -> float | None:
    if meta is None or meta.timing.compute_s is None:
        return None
    batch = meta.timing.batch_samples
    share = samples / batch if batch is not None and batch >= samples > 0 else 1.0
    return meta.timing.compute_s * share


def replay(r: Any, client: Any, args: argparse.Namespace) -> Report:
    """Submit every kept record to both versions, wait, compare."""
    from icow.workers.shadow import compare  # the same comparison as shadow runs

    versions = (args.from_version, args.to_version)
    report = Report(args.model, versions, failed={v: [] for v in versions}, compute_s={v: [] for v in versions})
    records, report.skipped = kept_records(r, args.model, args.last, time.time())
    report.kept = len(records)
    if not records:
        raise IcowError(
            f"no kept inputs for model {args.model!r} ({report.skipped} skipped): set keep_inputs = N in its "
            "config.toml and let the fleet answer some jobs"
        )
    pairs = []
    for rec in records:
        inputs = _inputs(rec)
        pairs.append([_submit(client, args, rec, inputs, v) for v in versions])
    deadline = time.monotonic() + args.timeout
    for jobs in pairs:
        outs: list[dict[str, np.ndarray] | None] = []
        for v, job in zip(versions, jobs):
            try:
                outs.append(dict(job.result(timeout_s=max(0.001, deadline - time.monotonic()))))
            except IcowError as exc:
                report.failed[v].append(f"{job.id}: {type(exc).__name__}: {exc}"[:300])
                outs.append(None)
        a, b = outs
        if a is None or b is None:
            continue
        diffs = compare(a, b)
        if isinstance(diffs, str):
            report.mismatched.append(f"{jobs[1].id}: {diffs}")
        else:
            report.add(diffs)
    measure_latency(r, client, args, records[-args.latency_jobs :], report)
    return report


def _inputs(rec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {t["name"]: tensor.decode(t) for t in rec["inputs"]}


def _submit(client: Any, args: argparse.Namespace, rec: Mapping[str, Any], inputs: Any, version: int) -> Any:
    return client.submit(
        args.model,
        inputs,
        version=version,
        outputs=rec["outputs"],
        result_ttl_s=args.result_ttl,
        job_id=f"{keys.REPLAY_ID_PREFIX}{uuid.uuid4()}",
    )


def measure_latency(
    r: Any, client: Any, args: argparse.Namespace, records: list[dict[str, Any]], report: Report
) -> None:
    """Each version's compute time on the same inputs, like for like: a warm-up job on each
    version first (not counted), then one job at a time, waited for before the next, the
    versions alternating which runs first; only jobs alone in their session call count."""
    if not records or args.latency_jobs <= 0:
        return
    versions = report.versions
    deadline = time.monotonic() + args.timeout
    warm = records[0]
    for v in versions:
        try:
            _submit(client, args, warm, _inputs(warm), v).result(timeout_s=max(0.001, deadline - time.monotonic()))
        except IcowError:
            pass  # its failure, if any, is the comparison's to report
    for i, rec in enumerate(records):
        inputs = _inputs(rec)
        first = next(iter(inputs.values()))
        samples = int(first.shape[0]) if first.ndim else 1
        for v in versions if i % 2 == 0 else versions[::-1]:
            job = _submit(client, args, rec, inputs, v)
            try:
                job.result(timeout_s=max(0.001, deadline - time.monotonic()))
            except IcowError:
                report.latency_skipped += 1
                continue
            raw = r.get(keys.result(job.id))
            meta = read_result(raw) if raw is not None else None
            share = _compute_share(meta, samples) if _alone(meta) else None
            if share is None:
                report.latency_skipped += 1
            else:
                report.compute_s[v].append(share)


def _alone(meta: Result | None) -> bool:
    """Whether the job ran alone in its session call (no other job batched with it)."""
    return meta is not None and meta.timing.batch == 1


def render(doc: Mapping[str, Any], why: list[str]) -> str:
    lines = [
        f"replay of {doc['model']}: v{doc['from']} -> v{doc['to']} on {doc['kept']} kept inputs "
        f"({doc['skipped']} expired or unreadable skipped); {doc['compared']} jobs compared",
        f"{'output':<24} {'jobs':>6} {'max abs err':>12} {'mean abs err':>12} {'max rel err':>12} {'argmax agree':>12}",
    ]
    for name, o in doc["outputs"].items():
        agree = "-" if o["argmax_agreement"] is None else f"{o['argmax_agreement']:.2%}"
        lines.append(
            f"{name:<24} {o['jobs']:>6} {o['max_abs_error']:>12.4g} {o['mean_abs_error']:>12.4g} "
            f"{o['max_rel_error']:>12.4g} {agree:>12}"
        )
    for v, lat in doc["latency"].items():
        p50, mean = lat["p50_ms"], lat["mean_ms"]
        lines.append(
            f"latency {v}: compute p50 {p50:.3f} ms, mean {mean:.3f} ms ({lat['jobs']} jobs alone, alternating)"
        )
    failed = ", ".join(f"{v}: {n}" for v, n in doc["failed"].items())
    lines.append(f"failed jobs: {failed}; outputs not comparable: {doc['mismatched']}")
    lines.append("PASS" if not why else "FAIL: " + "; ".join(why))
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace) -> int:
    import redis

    from icow.client import Client

    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    r = connection.connect(
        url, socket_connect_timeout=5, socket_timeout=30, **connection.tls_options(url, args.settings)
    )
    try:
        with Client(url) as client:
            report = replay(r, client, args)
    except redis.exceptions.RedisError as exc:
        raise connection.redis_failure(
            exc,
            "cannot replay through Redis",
            "`icow replay` reads the inputs workers kept: run it as the worker user or an admin",
        ) from exc
    finally:
        r.close()
    doc = report.document()
    why = report.verdict(args.max_abs_err, args.max_rel_err, args.min_agreement)
    if args.json:
        print(json.dumps({**doc, "passed": not why, "why": why}, indent=2))
    else:
        print(render(doc, why))
    return 0 if not why else 1


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="run a model's kept inputs on two versions through the fleet and compare (exit 1 past the thresholds)",
    )
    p.add_argument("model")
    p.add_argument("--from", dest="from_version", type=int, required=True, help="the version in service")
    p.add_argument("--to", dest="to_version", type=int, required=True, help="the candidate version")
    p.add_argument("--last", type=int, help="replay only the newest N kept inputs (default: all)")
    p.add_argument("--max-abs-err", type=float, default=1e-5, help="fail above this max absolute error (1e-5)")
    p.add_argument("--max-rel-err", type=float, help="fail above this max relative error")
    p.add_argument("--min-agreement", type=float, help="fail below this argmax agreement (0..1)")
    p.add_argument(
        "--latency-jobs",
        type=int,
        default=20,
        help="kept inputs run one at a time on each version, alternating, for the latency figures (20; 0: none)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all the jobs (120)")
    p.add_argument("--result-ttl", type=int, default=600, help="seconds the replay jobs' results are kept (600)")
    p.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL); the worker user, which may read kept inputs")
    p.add_argument("--json", action="store_true", help="print a JSON document instead")
    p.set_defaults(func=cmd_replay)
