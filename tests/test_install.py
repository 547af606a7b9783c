"""Packaging: the client installs alone with redis, msgpack and numpy, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_client_installs_alone(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ behind
    shutil.copytree(ROOT / "icow", src / "icow", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "client", src / "client", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(src / "client")], check=True, timeout=600)
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("==")[0].lower() for line in listed.split() if "==" in line}
    assert names - {"pip", "setuptools", "wheel"} == {"icow-client", "redis", "msgpack", "numpy"}
    code = (
        "import sys, importlib.util, icow.client\n"
        "assert importlib.util.find_spec('icow.workers') is None\n"
        "assert importlib.util.find_spec('icow.cli') is None\n"
        "assert importlib.util.find_spec('client') is None and importlib.util.find_spec('workers') is None\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('celery', 'onnxruntime')]\n"
        "print(icow.client.Client.__module__)\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "icow.client.sync"


def test_full_install_names_are_namespaced() -> None:
    import icow.client
    import icow.workers

    assert Path(icow.client.__file__).parent.name == "client"
    top = {p.name for p in Path(sys.prefix, "lib").glob("python3*/site-packages/*")}
    assert "client" not in top and "workers" not in top
