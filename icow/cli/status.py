"""`icow status`: queues, workers and recent failures of a fleet, read from Redis.

``icow status`` prints one view, ``--watch`` refreshes it in place, ``--json`` prints the
same facts for scripts. Workers are listed while their heartbeat key lives (``icow:worker:*``,
TTL ``keys.HEARTBEAT_TTL_S``): a killed worker disappears once its last beat expires.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from icow import connection, keys
from icow.errors import IcowError
from icow.records import parse_record


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def fleet_status(r: Any, *, failures: int = 10, now: float | None = None) -> dict[str, Any]:
    """Everything `icow status` shows, as plain data (the ``--json`` document)."""
    from icow.workers.heartbeat import failed_models, live_workers
    from icow.workers.queues import published_models, queue_states

    now = time.time() if now is None else now
    workers = live_workers(r)
    models = sorted(
        set(published_models(r))
        | {m for w in workers for m in w.get("models") or {}}
        | {m for w in workers for m in failed_models(w)}
    )
    queues = []
    for q in queue_states(r, models, now=now):
        serving = [w for w in workers if q.model in (w.get("models") or {})]
        queues.append(
            {
                "model": q.model,
                "backlog": q.backlog,
                "oldest_age_s": None if q.oldest_age_s is None else round(q.oldest_age_s, 3),
                "jobs_per_s": round(sum((w.get("jobs_per_s") or {}).get(q.model, 0.0) for w in serving), 2),
                "workers": len(serving),
                "ready_workers": sum(1 for w in serving if w.get("ready")),
                "failed_workers": sum(1 for w in workers if q.model in failed_models(w)),
            }
        )
    out_workers = [
        {
            "name": w.get("name"),
            "host": w.get("host"),
            "pid": w.get("pid"),
            "device": w.get("device"),
            "ready": bool(w.get("ready")),
            "models": w.get("models") or {},
            "providers": w.get("providers") or {},
            "cpu_fallback": w.get("cpu_fallback") or [],
            "failed_models": w.get("failed") or {},  # "model:version" -> why it does not load
            "jobs": w.get("jobs", 0),
            "failures": w.get("failures", 0),
            "jobs_per_s": round(sum((w.get("jobs_per_s") or {}).values()), 2),
            "last_error": w.get("last_error"),
            "uptime_s": round(now - w["started"], 1) if isinstance(w.get("started"), float) else None,
            "last_beat_s": round(now - w["time"], 1) if isinstance(w.get("time"), float) else None,
        }
        for w in workers
    ]
    raws = r.lrange(keys.RECENT_FAILURES, 0, max(0, failures - 1)) if failures > 0 else []
    recent = [rec for rec in map(parse_record, raws) if rec is not None]
    return {
        "time": now,
        "queues": queues,
        "workers": out_workers,
        "recent_failures": recent,
        "shadow": shadow_rows(workers),
    }


def shadow_rows(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shadow runs (workers/shadow.py) added up over the workers' heartbeats, per model and
    (primary, shadow) versions."""
    totals: dict[tuple[str, int, int], dict[str, Any]] = {}
    for w in workers:
        for row in w.get("shadow") or []:
            if not isinstance(row, dict):
                continue
            key = (str(row.get("model")), int(row.get("primary") or 0), int(row.get("shadow") or 0))
            t = totals.setdefault(key, {"model": key[0], "primary": key[1], "shadow": key[2]})
            for k in ("compared", "mismatch", "failed", "dropped", "argmax_rows", "argmax_agree", "latency_ratios"):
                t[k] = t.get(k, 0) + int(row.get(k) or 0)
            t["latency_ratio_sum"] = t.get("latency_ratio_sum", 0.0) + float(row.get("latency_ratio_sum") or 0.0)
            for k in ("max_abs_error", "max_rel_error"):
                t[k] = max(t.get(k, 0.0), float(row.get(k) or 0.0))
            t["last_error"] = row.get("last_error") or t.get("last_error")
    out = []
    for t in totals.values():
        rows, n = t.pop("argmax_rows"), t.pop("latency_ratios")
        t["argmax_agreement"] = round(t.pop("argmax_agree") / rows, 6) if rows else None
        t["latency_ratio"] = round(t.pop("latency_ratio_sum") / n, 3) if n else None
        out.append(t)
    return sorted(out, key=lambda t: (t["model"], t["primary"], t["shadow"]))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def shorten(text: Any, width: int) -> str:
    """``text`` on one line, at most ``width`` characters: cut at a word boundary (mid-word only
    for a word longer than half the width) and ended with an ellipsis."""
    flat = re.sub(r"\s*[\r\n\t\v\f]+\s*", " ", _text(text)).strip()
    if len(flat) <= width:
        return flat
    cut = flat[: max(1, width - 1)]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


def render(doc: dict[str, Any], width: int = 80) -> Any:
    """The rich renderable of a :func:`fleet_status` document, fitting ``width`` columns: one
    short row per queue and per worker; reasons and messages on lines of their own, cut at a
    word boundary."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def table(title: str) -> Table:
        return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, expand=True)

    q = table("queues")
    for col in ("model", "backlog", "oldest", "jobs/s", "workers (ready)"):
        q.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    for row in doc["queues"]:
        serving = f"{row['workers']} ({row['ready_workers']})"
        if row.get("failed_workers"):
            serving += f" [red]{row['failed_workers']} failed[/red]"
        q.add_row(row["model"], str(row["backlog"]), _age(row["oldest_age_s"]), f"{row['jobs_per_s']:.1f}", serving)
    w = table("workers")
    w.add_column("worker", overflow="fold", ratio=3)
    w.add_column("device", no_wrap=True, overflow="ellipsis", max_width=12)
    w.add_column("state", no_wrap=True)
    w.add_column("models", overflow="fold", ratio=3)
    w.add_column("jobs", justify="right", no_wrap=True)
    w.add_column("errors", justify="right", no_wrap=True)
    notes: list[Text] = []

    def note(worker: str, what: str, text: str) -> None:
        notes.append(Text("  " + shorten(f"{worker}: {what}", width - 2), style="red"))
        notes.append(Text("    " + shorten(text, width - 4)))

    for row in doc["workers"]:
        providers = sorted({p.replace("ExecutionProvider", "") for p in row["providers"].values()}) or ["-"]
        models = ", ".join(f"{m}:{','.join(map(str, vs))}" for m, vs in sorted(row["models"].items())) or "-"
        if row["failed_models"]:
            models += f" [red]({len(row['failed_models'])} failed)[/red]"
        w.add_row(
            Text(_text(row["name"])),
            f"{row['device']} {'+'.join(providers)}",
            "[green]ready[/green]" if row["ready"] else "[yellow]starting[/yellow]",
            models,
            str(row["jobs"]),
            str(row["failures"]),
        )
        if row["cpu_fallback"]:
            note(row["name"], "CPU fallback", ", ".join(row["cpu_fallback"]))
        for version, why in sorted(row["failed_models"].items()):
            note(row["name"], f"failed to load: {version}", why)
        if row["last_error"]:
            note(row["name"], "last error", row["last_error"])
    failures: list[Text] = [Text("recent failures", style="italic")]
    for rec in doc["recent_failures"]:
        when = _age(doc["time"] - rec["time"]) + " ago" if isinstance(rec.get("time"), float) else "-"
        model = f"{rec.get('model') or '?'}" + (f":{rec['version']}" if rec.get("version") else "")
        line = f"{when}  {_text(rec.get('id'))}  {model}  {_text(rec.get('error'))}"
        failures.append(Text("  " + shorten(line, width - 2)))
        failures.append(Text("    " + shorten(rec.get("message") or "", width - 4), style="dim"))
    if len(failures) == 1:
        failures.append(Text("  none"))
    workers = Group(w, *notes)
    recent = Group(*failures)
    if not doc.get("shadow"):
        return Group(q, workers, recent)
    s = table("shadow runs")
    for col in ("model", "primary -> shadow", "compared", "mismatch", "failed", "dropped", "max abs err"):
        s.add_column(col, justify="left" if col == "model" else "right")
    for col in ("max rel err", "argmax agree", "latency x"):
        s.add_column(col, justify="right")
    for row in doc["shadow"]:
        agree, ratio = row["argmax_agreement"], row["latency_ratio"]
        s.add_row(
            row["model"],
            f"{row['primary']} -> {row['shadow']}",
            *(str(row[k]) for k in ("compared", "mismatch", "failed", "dropped")),
            f"{row['max_abs_error']:.3g}",
            f"{row['max_rel_error']:.3g}",
            "-" if agree is None else f"{agree:.2%}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    return Group(q, workers, recent, s)


def cmd_status(args: argparse.Namespace) -> int:
    import redis

    url = args.redis or args.settings.redis_url
    if not url:
        raise IcowError("give --redis URL (or set ICOW_REDIS_URL)")
    r = connection.connect(
        url, socket_connect_timeout=5, socket_timeout=10, **connection.tls_options(url, args.settings)
    )
    try:
        if args.json:
            print(json.dumps(fleet_status(r, failures=args.failures), default=str, indent=2))
            return 0
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if not args.watch:
            console.print(render(fleet_status(r, failures=args.failures), console.width))
            return 0
        with Live(render(fleet_status(r, failures=args.failures), console.width), console=console) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(fleet_status(r, failures=args.failures), console.width))
    except redis.exceptions.RedisError as exc:
        raise connection.redis_failure(
            exc,
            "cannot read the fleet's state from Redis",
            "`icow status` reads heartbeats, queues and failures: run it as the worker user or an admin "
            "(the client user may not read fleet state)",
        ) from exc
    finally:
        r.close()


def add_commands(sub: Any) -> None:
    s = sub.add_parser("status", help="queues, workers and recent failures of the fleet")
    s.add_argument("--redis", help="Redis URL (ICOW_REDIS_URL)")
    s.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    s.add_argument("--json", action="store_true", help="print a JSON document instead")
    s.add_argument("--failures", type=int, default=10, help="how many recent failures to show")
    s.set_defaults(func=cmd_status)
