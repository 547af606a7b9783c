#!/usr/bin/env python3
"""The one-shot GPU check: `python3 dev.py gpu` (or `.venv/bin/python bench/gpu.py`).

    python3 dev.py gpu                       # about 8 minutes at most on a GPU host
    python3 dev.py gpu --rounds 1 --budget-s 300 --out bench/results --skip-bench

1. The card: ``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader``.
2. Which GPU providers really run: for CUDA and TensorRT, a child process builds a small MLP
   session requesting that provider first, reads ``session.get_providers()`` of the real
   session (not ``get_available_providers()``), runs it and compares the outputs with the CPU's.
   The library folders of the ``nvidia-*`` and ``tensorrt`` pip packages, where installed
   (``pip install tensorrt-cu12`` for TensorRT), go on every step's ``LD_LIBRARY_PATH``, so the
   probe, the demo's worker and the bench find the same libraries; the probe says whether
   libnvinfer (TensorRT) loads.
3. On each provider that really runs: ``icow demo --providers ...`` (the provider it reports),
   then the comparison bench (``bench/compare.py --provider P --quick --rounds N``).
4. Writes ``OUT/gpu-<card>.json`` and ``OUT/gpu-<card>.md`` (a table to paste in README);
   ``gpu-none.*`` when no GPU provider runs.

Every step runs in a child process with its own time limit inside ``--budget-s`` (480 s):
a step that would not fit is skipped and reported, never left hanging.

Exit status: 0 every step ran on every GPU provider that really runs; 3 no GPU provider
really runs (no card, no CUDA libraries, or the CPU build of onnxruntime): the result says
which; 1 a step failed on a provider that runs; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = 3
PROBE_TAG = "ICOW-PROBE "
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CHAINS = {"cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}
# The figures of compare.py's JSON that the table shows, in order: (key, label, format)
FIGURES = [
    ("direct.mlp.p50_ms", "MLP p50, direct onnxruntime", "{:.3f} ms"),
    ("icow.mlp.p50_ms", "MLP p50, ICOW sync round trip", "{:.2f} ms"),
    ("icow.mlp.jobs_s_async", "MLP jobs/s, ICOW asyncio, 100 in flight", "{:,.0f}"),
    ("direct.mlp.b32_samples_s", "MLP samples/s, direct batch 32", "{:,.0f}"),
    ("icow.mlp.bulk_samples_s", "MLP samples/s, ICOW submit_bulk", "{:,.0f}"),
    ("direct.cnn.img_s", "CNN images/s, direct batch 1", "{:.1f}"),
    ("icow.cnn.img_s", "CNN images/s, ICOW 32 in flight", "{:.1f}"),
    ("direct.cnn.p50_ms", "CNN p50, direct", "{:.2f} ms"),
    ("icow.cnn.p50_ms", "CNN p50, ICOW sync", "{:.2f} ms"),
]


# ---------------------------------------------------------------- parsing (unit-tested)


@dataclass(frozen=True)
class Card:
    name: str
    memory: str = ""
    driver: str = ""


def parse_nvidia_smi(text: str) -> list[Card]:
    """The cards of ``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader``."""
    cards = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts[0] or parts[0].lower().startswith(("no devices", "nvidia-smi has failed", "failed")):
            continue
        if len(parts) < 3 or not re.search(r"\d", parts[1]):  # not a row of the query (an error text)
            continue
        cards.append(Card(parts[0], parts[1], parts[2]))
    return cards


@dataclass
class Probe:
    """What a provider really did in a real session."""

    provider: str
    requested: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)  # session.get_providers()
    max_abs_err: float | None = None  # outputs against the CPU's
    libs: list[str] = field(default_factory=list)  # what was loaded first (TensorRT, CUDA libraries)
    error: str | None = None

    @property
    def runs(self) -> bool:
        return (
            self.error is None
            and bool(self.running)
            and self.running[0] == ORT_NAMES[self.provider]
            and self.max_abs_err is not None
            and self.max_abs_err <= 1e-3
        )

    def verdict(self) -> str:
        name = ORT_NAMES[self.provider]
        if self.runs:
            return f"{name} really runs (outputs within {self.max_abs_err:.2g} of the CPU's)"
        if self.error:
            return f"{name} does not run: {self.error}"
        if self.running and self.running[0] != name:
            return f"{name} does not run: the session fell back to {self.running[0]} (get_providers: {self.running})"
        return f"{name} runs but its outputs differ from the CPU's by {self.max_abs_err}"


def parse_probe(provider: str, returncode: int | None, stdout: str, stderr: str) -> Probe:
    """The probe child's report: its last ``ICOW-PROBE {json}`` line, or why there is none."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(PROBE_TAG)]
    if not lines:
        tail = " | ".join((stderr or stdout).strip().splitlines()[-3:])[-400:]
        how = "timed out" if returncode is None else f"exited {returncode}"
        return Probe(provider, error=f"the probe {how} without a report ({tail or 'no output'})")
    try:
        doc = json.loads(lines[-1][len(PROBE_TAG) :])
        return Probe(
            provider,
            [str(p) for p in doc.get("requested") or []],
            [str(p) for p in doc.get("running") or []],
            None if doc.get("max_abs_err") is None else float(doc["max_abs_err"]),
            [str(x) for x in doc.get("libs") or []],
            None if doc.get("error") is None else str(doc["error"]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        return Probe(provider, error=f"unreadable probe report: {exc}")


def parse_demo(text: str) -> dict[str, Any]:
    """What `icow demo` said: whether it passed and the providers its worker really ran."""
    running: list[str] = []
    for m in re.finditer(r"execution provider really running: (.+)", text):
        running += [p.strip() for p in m.group(1).split(",") if p.strip()]
    return {"ok": "demo OK" in text, "running": sorted(set(running))}


def slug(cards: list[Card]) -> str:
    if not cards:
        return "none"
    name = re.sub(r"[^a-z0-9]+", "-", cards[0].name.lower()).strip("-")
    return name or "unknown"


def markdown(doc: dict[str, Any]) -> str:
    """The results as a table that can be pasted in README."""
    cards = ", ".join(c["name"] for c in doc["cards"]) or "no GPU seen by nvidia-smi"
    lines = [
        f"GPU check, {doc['date']}: {cards}; {doc['machine']}; {doc['onnxruntime']}",
        "",
        "| provider | really runs | demo | note |",
        "|---|---|---|---|",
    ]
    for p in doc["probes"]:
        demo = doc["demo"].get(p["provider"])
        shown = "-" if demo is None else ("OK on " + ", ".join(demo["running"]) if demo["ok"] else "FAILED")
        lines.append(f"| {ORT_NAMES[p['provider']]} | {'yes' if p['runs'] else 'no'} | {shown} | {p['verdict']} |")
    benched = [p for p in doc["bench"] if doc["bench"][p].get("figures")]
    if benched:
        lines += ["", "| figure | " + " | ".join(ORT_NAMES[p] for p in benched) + " |"]
        lines.append("|---|" + "---|" * len(benched))
        for key, label, fmt in FIGURES:
            cells = []
            for p in benched:
                v = doc["bench"][p]["figures"].get(key)
                cells.append(fmt.format(v) if isinstance(v, (int, float)) else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        rounds = {doc["bench"][p].get("rounds") for p in benched}
        lines.append(f"\n(bench/compare.py --quick, medians of {', '.join(map(str, sorted(rounds)))} round(s))")
    for p, b in doc["bench"].items():
        if not b.get("figures"):
            lines.append(f"\nbench on {ORT_NAMES[p]}: {b.get('status')}: {b.get('why', '')}")
    lines += ["", f"result: {doc['verdict']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the probe (in a child)


def pip_library_dirs() -> list[str]:
    """The folders holding the shared libraries of the ``nvidia-*`` (CUDA, cuDNN, ...) and
    ``tensorrt`` pip packages installed in this environment (none: an empty list)."""
    import importlib.util

    found: list[str] = []
    for module in ("nvidia", "tensorrt_libs", "tensorrt"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            base = Path(folder)
            candidates = [base, *sorted(base.glob("*/lib"))]
            found += [str(d) for d in candidates if d.is_dir() and any(d.glob("lib*.so*"))]
    return list(dict.fromkeys(found))


def tensorrt_library() -> str:
    """Whether libnvinfer (TensorRT) loads here, as onnxruntime's TensorRT provider would load it."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return f"{name} loads"
    return "libnvinfer not found (pip install tensorrt-cu12, or put TensorRT's lib folder on LD_LIBRARY_PATH)"


def probe(provider: str) -> dict[str, Any]:
    """Build a real session requesting ``provider`` first, run it, compare with the CPU."""
    import numpy as np
    import onnxruntime as ort

    from icow.workers import samples

    ort.set_default_logger_severity(3)
    libs = [tensorrt_library()] if provider == "tensorrt" else []
    requested = [ORT_NAMES[p] for p in CHAINS[provider]]
    with tempfile.TemporaryDirectory() as tmp:
        path = samples.mlp(Path(tmp) / "m.onnx", (64, 128, 10))
        x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
        cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        try:
            session = ort.InferenceSession(str(path), providers=requested)
            running = list(session.get_providers())
            y = session.run(None, {"x": x})[0]
        except Exception as exc:
            return {"requested": requested, "libs": libs, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"requested": requested, "running": running, "max_abs_err": float(np.max(np.abs(y - cpu))), "libs": libs}


# ---------------------------------------------------------------- the steps


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def child(cmd: list[str], limit_s: float, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """Run a step; (returncode or None when it ran past ``limit_s``, stdout, stderr)."""
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(1.0, limit_s), cwd=ROOT, env={**os.environ, **(env or {})}
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return None, out, err
    return p.returncode, p.stdout, p.stderr


def find_cards() -> list[Card]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    code, out, _ = child([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], 30)
    return parse_nvidia_smi(out) if code == 0 else []


def onnxruntime_build() -> str:
    sys.path.insert(0, str(ROOT))
    from icow import ort_build

    return ort_build.describe(ort_build.installed())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON and markdown go")
    ap.add_argument("--rounds", type=int, default=1, help="bench rounds per provider (1)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time limit (480 s)")
    ap.add_argument("--skip-bench", action="store_true", help="probes and demos only")
    ap.add_argument("--probe", choices=sorted(CHAINS), help=argparse.SUPPRESS)  # the child's entry
    args = ap.parse_args(argv)
    if args.probe:
        try:
            report = probe(args.probe)
        except Exception as exc:  # the parent reads a report, whatever happened
            report = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(PROBE_TAG + json.dumps(report), flush=True)
        return 0
    if args.rounds < 1 or args.budget_s <= 0:
        print("--rounds >= 1 and --budget-s > 0, please", file=sys.stderr)
        return 2

    budget = Budget(args.budget_s)
    dirs = pip_library_dirs()
    env = {"LD_LIBRARY_PATH": os.pathsep.join([*dirs, os.environ.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)}
    cards = find_cards()
    print(f"cards: {', '.join(c.name for c in cards) or 'nvidia-smi sees no GPU (or is not installed)'}", flush=True)
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "onnxruntime": onnxruntime_build(),
        "cards": [asdict(c) for c in cards],
        "library_dirs": dirs,  # put on LD_LIBRARY_PATH for every step
        "probes": [],
        "demo": {},
        "bench": {},
    }
    running = []
    for provider in CHAINS:
        code, out, err = child([sys.executable, __file__, "--probe", provider], min(120.0, budget.left()), env)
        p = parse_probe(provider, code, out, err)
        doc["probes"].append({**asdict(p), "runs": p.runs, "verdict": p.verdict()})
        print(f"{provider}: {p.verdict()}" + (f" [{'; '.join(p.libs)}]" if p.libs else ""), flush=True)
        if p.runs:
            running.append(provider)

    failed = []
    icow = [sys.executable, "-m", "icow.cli"]
    for provider in running:
        limit = min(120.0, budget.left())
        if limit < 20:
            doc["demo"][provider] = {"ok": False, "running": [], "status": "skipped", "why": "no time left"}
            failed.append(f"demo on {provider}: skipped, no time left")
            continue
        code, out, err = child([*icow, "demo", "--providers", ",".join(CHAINS[provider])], limit, env)
        demo = parse_demo(out)
        demo["ok"] = demo["ok"] and code == 0 and ORT_NAMES[provider] in demo["running"]
        doc["demo"][provider] = demo
        print(f"demo on {provider}: {'OK' if demo['ok'] else 'FAILED'} (really running: {demo['running']})", flush=True)
        if not demo["ok"]:
            failed.append(f"demo on {provider}: {(err or out).strip()[-300:]}")

    for i, provider in enumerate([] if args.skip_bench else running):
        share = budget.left() / (len(running) - i)  # what is left, shared by the benches still to run
        if share < 60:
            doc["bench"][provider] = {"status": "skipped", "why": f"{budget.left():.0f} s left of --budget-s"}
            failed.append(f"bench on {provider}: skipped (no time left)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out_json = Path(tmp) / "bench.json"
            cmd = [sys.executable, str(ROOT / "bench" / "compare.py"), "--provider", provider, "--quick"]
            code, out, err = child([*cmd, "--rounds", str(args.rounds), "--json", str(out_json)], share, env)
            if code == 0 and out_json.is_file():
                doc["bench"][provider] = {"status": "ok", **json.loads(out_json.read_text())}
            else:
                how = f"ran past its {share:.0f} s" if code is None else f"exited {code}"
                doc["bench"][provider] = {"status": "failed", "why": f"{how}: {(err or out).strip()[-300:]}"}
                failed.append(f"bench on {provider}: {how}")
        print(f"bench on {provider}: {doc['bench'][provider]['status']}", flush=True)

    if not running:
        seen = f"nvidia-smi sees {', '.join(c.name for c in cards)}" if cards else "nvidia-smi sees no GPU"
        doc["verdict"] = f"no GPU provider really runs ({seen}; {doc['onnxruntime']})"
        code = NO_GPU
    elif failed:
        doc["verdict"] = "FAILED: " + "; ".join(failed)
        code = 1
    else:
        doc["verdict"] = "OK: " + ", ".join(ORT_NAMES[p] for p in running) + " really run"
        code = 0
    doc["exit"] = code
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu-{(slug(cards) if cards else 'unknown') if running else 'none'}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(doc))
    print(f"{doc['verdict']}\nwrote {stem}.json and {stem}.md", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
