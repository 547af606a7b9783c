"""Which build of ONNX Runtime is installed, read from package metadata (onnxruntime is not
imported): ``icow[worker]`` brings ``onnxruntime-gpu`` (CUDA and TensorRT providers, and the
CPU), ``icow[worker-cpu]`` brings ``onnxruntime`` (the CPU only, a venv about half the size).
Both distributions own the same ``onnxruntime/`` folder: with both installed, whichever was
installed last has overwritten the other's files, so a worker warns about it."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

GPU_DIST, CPU_DIST = "onnxruntime-gpu", "onnxruntime"
EXTRA = {GPU_DIST: "icow[worker]", CPU_DIST: "icow[worker-cpu]"}

log = logging.getLogger("icow.runtime")


def installed() -> dict[str, str]:
    """{distribution: version} of the ONNX Runtime builds installed (none, one, or both)."""
    found = {}
    for name in (GPU_DIST, CPU_DIST):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def describe(builds: dict[str, str]) -> str:
    """One line for people: which build runs, and what it can run on."""
    if not builds:
        return "no onnxruntime installed (pip install 'icow[worker]' or 'icow[worker-cpu]')"
    if len(builds) > 1:
        return conflict(builds) or ""
    ((name, version),) = builds.items()
    what = "CUDA, TensorRT and the CPU" if name == GPU_DIST else "the CPU only"
    return f"{name} {version} ({EXTRA[name]}: {what})"


def conflict(builds: dict[str, str]) -> str | None:
    """Why two builds side by side are broken (None: at most one is installed)."""
    if len(builds) < 2:
        return None
    both = " and ".join(f"{n} {v}" for n, v in builds.items())
    return (
        f"{both} are both installed: they own the same onnxruntime/ folder, so one has overwritten "
        f"the other's files; uninstall both, then install one: pip install '{EXTRA[GPU_DIST]}' (GPU) "
        f"or '{EXTRA[CPU_DIST]}' (CPU only)"
    )


@functools.cache
def warn_if_conflict() -> None:
    """Log the conflict once per process (a worker calls it when it loads onnxruntime)."""
    why = conflict(installed())
    if why:
        log.warning("%s", why)
