"""`python3 dev.py gpu` (bench/gpu.py), the one-shot GPU check, before it ever meets a GPU: its
CPU path for real on this machine (it runs, finds no GPU provider, says so, exits 3, writes a
result saying so), and its parsing fed with recorded outputs (nvidia-smi, the provider probe,
`icow demo`) and its results table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("icow_bench_gpu", ROOT / "bench" / "gpu.py")
assert _spec is not None and _spec.loader is not None
gpu: Any = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gpu  # dataclasses look their module up
_spec.loader.exec_module(gpu)

H200 = "NVIDIA H200, 143771 MiB, 580.159.03\n"
TWO_CARDS = "Tesla T4, 15360 MiB, 535.104.05\nTesla T4, 15360 MiB, 535.104.05\n"
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
DEMO_ON_CUDA = """sample model repository: /tmp/icow-demo-x/repo (mlp v1, scale v1 and v2)
providers requested: cuda, cpu
fleet up in 1.2 s: 1 worker, embedded valkey-server (AOF on) at redis://127.0.0.1:40000/0
onnxruntime build: onnxruntime-gpu 1.20.1 (icow[worker]: CUDA, TensorRT and the CPU)
worker icow-local0-1@gpu: execution provider really running: CUDAExecutionProvider
models: {'mlp': [1], 'scale': [1, 2]}
fleet shut down
demo OK
"""


def test_nvidia_smi_rows_are_parsed_and_its_errors_are_no_cards() -> None:
    assert gpu.parse_nvidia_smi(H200) == [gpu.Card("NVIDIA H200", "143771 MiB", "580.159.03")]
    assert [c.name for c in gpu.parse_nvidia_smi(TWO_CARDS)] == ["Tesla T4", "Tesla T4"]
    for text in (NO_DRIVER, "No devices were found\n", "", "\n\n"):
        assert gpu.parse_nvidia_smi(text) == []
    assert gpu.slug(gpu.parse_nvidia_smi(H200)) == "nvidia-h200" and gpu.slug([]) == "none"


def test_a_probe_report_says_whether_the_provider_really_runs() -> None:
    ran = gpu.parse_probe(
        "cuda",
        0,
        'ort noise\nICOW-PROBE {"requested": ["CUDAExecutionProvider", "CPUExecutionProvider"], '
        '"running": ["CUDAExecutionProvider", "CPUExecutionProvider"], "max_abs_err": 2e-07, "libs": []}\n',
        "",
    )
    assert ran.runs and ran.verdict().startswith("CUDAExecutionProvider really runs")
    fell = gpu.parse_probe(
        "tensorrt",
        0,
        'ICOW-PROBE {"requested": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], '
        '"running": ["CUDAExecutionProvider", "CPUExecutionProvider"], "max_abs_err": 0.0, '
        '"libs": ["libnvinfer not found (pip install tensorrt-cu12, ...)"]}\n',
        "",
    )
    assert not fell.runs and "fell back to CUDAExecutionProvider" in fell.verdict()
    assert fell.libs[0].startswith("libnvinfer not found")
    wrong = gpu.parse_probe("cuda", 0, 'ICOW-PROBE {"running": ["CUDAExecutionProvider"], "max_abs_err": 0.5}', "")
    assert not wrong.runs and "differ from the CPU's" in wrong.verdict()
    refused = gpu.parse_probe("cuda", 0, 'ICOW-PROBE {"error": "RuntimeError: CUDA failure 100"}', "")
    assert not refused.runs and "CUDA failure 100" in refused.verdict()
    crashed = gpu.parse_probe("tensorrt", -11, "", "Segmentation fault (core dumped)\n")
    assert not crashed.runs and "exited -11" in str(crashed.error) and "Segmentation fault" in str(crashed.error)
    hung = gpu.parse_probe("tensorrt", None, "", "building engine...")
    assert not hung.runs and "timed out" in str(hung.error)
    garbled = gpu.parse_probe("cuda", 0, "ICOW-PROBE {not json", "")
    assert not garbled.runs and "unreadable" in str(garbled.error)


def test_the_demo_output_gives_the_provider_that_really_ran() -> None:
    assert gpu.parse_demo(DEMO_ON_CUDA) == {"ok": True, "running": ["CUDAExecutionProvider"]}
    assert gpu.parse_demo(DEMO_ON_CUDA.replace("demo OK", "demo FAILED"))["ok"] is False
    assert gpu.parse_demo("Traceback ...") == {"ok": False, "running": []}


def test_a_real_demo_with_providers_reports_them_as_the_script_reads_them() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "icow.cli", "demo", "--providers", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "providers requested: cpu" in proc.stdout
    assert gpu.parse_demo(proc.stdout) == {"ok": True, "running": ["CPUExecutionProvider"]}


def test_the_results_table_names_the_card_and_each_provider() -> None:
    figures = {"direct.mlp.p50_ms": 0.0412, "icow.mlp.p50_ms": 0.61, "icow.cnn.img_s": 812.25}
    doc = {
        "date": "2026-12-05 10:00",
        "machine": "x86_64, 16 cores, Python 3.12.3",
        "onnxruntime": "onnxruntime-gpu 1.20.1 (icow[worker]: CUDA, TensorRT and the CPU)",
        "cards": [{"name": "NVIDIA H200", "memory": "143771 MiB", "driver": "580.159.03"}],
        "probes": [
            {"provider": "cuda", "runs": True, "verdict": "CUDAExecutionProvider really runs"},
            {"provider": "tensorrt", "runs": False, "verdict": "TensorrtExecutionProvider does not run: ..."},
        ],
        "demo": {"cuda": {"ok": True, "running": ["CUDAExecutionProvider"]}},
        "bench": {"cuda": {"status": "ok", "rounds": 1, "figures": figures}},
        "verdict": "OK: CUDAExecutionProvider really run",
    }
    text = gpu.markdown(doc)
    assert "GPU check, 2026-12-05 10:00: NVIDIA H200" in text
    assert "| CUDAExecutionProvider | yes | OK on CUDAExecutionProvider |" in text
    assert "| TensorrtExecutionProvider | no | - |" in text
    assert "| figure | CUDAExecutionProvider |" in text
    assert "| MLP p50, direct onnxruntime | 0.041 ms |" in text
    assert "| CNN images/s, ICOW 32 in flight | 812.2 |" in text
    assert "| MLP samples/s, ICOW submit_bulk | - |" in text  # a figure the bench did not give
    skipped = {**doc, "bench": {"cuda": {"status": "skipped", "why": "40 s left of --budget-s"}}}
    assert "bench on CUDAExecutionProvider: skipped: 40 s left" in gpu.markdown(skipped)


def run_gpu_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "gpu", "--out", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.skipif(bool(gpu.find_cards()), reason="this host has a GPU: the CPU path is not what runs here")
def test_on_a_machine_without_a_gpu_it_says_so_exits_3_and_writes_a_result(tmp_path: Path) -> None:
    proc = run_gpu_script(tmp_path)
    assert proc.returncode == gpu.NO_GPU == 3, proc.stdout + proc.stderr
    assert "no GPU provider really runs (nvidia-smi sees no GPU" in proc.stdout
    doc = json.loads((tmp_path / "results" / "gpu-none.json").read_text())
    assert doc["exit"] == 3 and doc["cards"] == [] and doc["bench"] == {} and doc["demo"] == {}
    assert [(p["provider"], p["runs"]) for p in doc["probes"]] == [("cuda", False), ("tensorrt", False)]
    assert all(p["running"] and p["running"][0] == "CPUExecutionProvider" for p in doc["probes"])  # a real session
    md = (tmp_path / "results" / "gpu-none.md").read_text()
    assert "no GPU seen by nvidia-smi" in md and "result: no GPU provider really runs" in md


@pytest.mark.skipif(bool(gpu.find_cards()), reason="this host has a GPU")
def test_a_card_that_no_provider_can_use_is_named_in_the_result(tmp_path: Path) -> None:
    """nvidia-smi sees a card (a recorded H200 row) but CUDA does not really run (here: no CUDA
    at all): the result names the card and still says no GPU provider runs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{H200.strip()}\\n'\n")
    (fake / "nvidia-smi").chmod(0o755)
    proc = run_gpu_script(tmp_path, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cards: NVIDIA H200" in proc.stdout and "nvidia-smi sees NVIDIA H200" in proc.stdout
    doc = json.loads((tmp_path / "results" / "gpu-none.json").read_text())
    assert doc["cards"] == [{"name": "NVIDIA H200", "memory": "143771 MiB", "driver": "580.159.03"}]
    assert "GPU check" in (tmp_path / "results" / "gpu-none.md").read_text()
