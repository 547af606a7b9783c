"""`icow infer` over many inputs, with a progress bar, and resumable by job id.

Two ways to give many inputs:

* a folder of ``.npz`` files: one job per file, its outputs written to ``OUT/<file>.npz``;
* one ``.npz`` whose arrays share a leading sample axis, with ``--many`` (``--batch-axis``):
  one job per ``--chunk`` samples, the outputs concatenated back into ``OUT.npz``.

Before anything is submitted, the job ids are written to a manifest (JSON, next to the
outputs). If the run is interrupted (Ctrl-C, a timeout, a crash), ``icow infer --resume
MANIFEST`` re-attaches to the same jobs by id, submits again the ones with no record yet (never
sent, or still queued: a duplicate of an answered job is skipped by the worker), and finishes
writing the outputs; jobs already written are not fetched again.

A manifest is trusted no further than its own ``out``: :meth:`Manifest.load` refuses an entry
whose file is not a plain ``.npz`` name inside it (absolute, ``..``, a separator, or an existing
symlink there), so a manifest from elsewhere cannot make ``--resume`` write outside ``out``.
The job ids it holds are capabilities (whoever has them can read the results, or submit
under them first): it is written readable by its owner only (0600).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icow.envelope import new_job_id
from icow.errors import IcowError, InvalidInput, JobNotFound, JobTimeout, QueueFull, RemoteError

MANIFEST_VERSION = 1


@dataclass
class Manifest:
    model: str
    model_version: int | None
    mode: str  # "files" (a folder of .npz) or "split" (one .npz along axis 0)
    source: str
    out: str
    chunk: int = 1
    created: float = field(default_factory=time.time)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # {"id", "file"} or {"id", "start", "stop"}

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # job ids: owner only
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"manifest": MANIFEST_VERSION, **asdict(self)}, indent=1))
        os.replace(tmp, path)  # never a half-written manifest

    @staticmethod
    def load(path: Path) -> Manifest:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.pop("manifest", None) != MANIFEST_VERSION:
            raise InvalidInput(f"{path} is not an icow infer manifest")
        try:
            m = Manifest(**raw)
        except TypeError as exc:
            raise InvalidInput(f"{path} is not an icow infer manifest: {exc}") from exc
        m.check(path)
        return m

    def check(self, where: Path | str = "manifest") -> None:
        """Refuse a manifest that would read or write outside its ``source`` and ``out``."""
        if self.mode not in ("files", "split"):
            raise InvalidInput(f"{where}: mode must be 'files' or 'split', not {self.mode!r}")
        if not isinstance(self.out, str) or not self.out or not isinstance(self.source, str) or not self.source:
            raise InvalidInput(f"{where}: 'out' and 'source' must be paths")
        if not isinstance(self.jobs, list) or not all(isinstance(j, dict) for j in self.jobs):
            raise InvalidInput(f"{where}: 'jobs' must be a list of objects")
        out = Path(self.out).resolve()
        for j in self.jobs:
            if not isinstance(j.get("id"), str):
                raise InvalidInput(f"{where}: a job without a string 'id': {j!r}")
            if self.mode == "split":
                start, stop = j.get("start"), j.get("stop")
                if not (type(start) is int and type(stop) is int and 0 <= start < stop):
                    raise InvalidInput(f"{where}: job {j['id']}: needs integers 0 <= start < stop")
                continue
            name = j.get("file")
            target = Path(self.out) / name if isinstance(name, str) else None
            if target is None or not _plain_npz_name(name) or target.is_symlink() or target.resolve().parent != out:
                raise InvalidInput(
                    f"{where}: job {j['id']}: file {name!r} escapes the output folder {self.out} "
                    "(a manifest names plain .npz files inside it: no path, no '..', no symlink)"
                )


def _plain_npz_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name.endswith(".npz")
        and not {"/", "\\", "\x00"} & set(name)
        and Path(name).name == name
    )


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write a .npz whole or not at all (a resume skips outputs already there), replacing
    whatever is at ``path`` (a symlink is replaced, never followed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def plan(model: str, version: int | None, source: Path, out: Path, *, many: bool, chunk: int = 1) -> Manifest:
    """Decide the jobs (ids included) for a folder of .npz files or one .npz split by samples."""
    if chunk < 1:
        raise InvalidInput("--chunk must be at least 1")
    if source.is_dir():
        files = sorted(p.name for p in source.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise InvalidInput(f"no .npz files in {source}")
        jobs = [{"id": new_job_id(), "file": f} for f in files]
        return Manifest(model, version, "files", str(source.resolve()), str(out.resolve()), 1, jobs=jobs)
    if not many or source.suffix != ".npz":
        raise InvalidInput("give a folder of .npz files, or one .npz with --many (--batch-axis)")
    with np.load(source, allow_pickle=False) as z:
        lengths = {k: z[k].shape[0] if z[k].ndim else -1 for k in z.files}
    if not lengths or len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise InvalidInput(f"every array in {source} needs the same leading sample axis; got {lengths}")
    n = next(iter(lengths.values()))
    spans: list[dict[str, Any]] = [
        {"id": new_job_id(), "start": i, "stop": min(n, i + chunk)} for i in range(0, n, chunk)
    ]
    return Manifest(model, version, "split", str(source.resolve()), str(out.resolve()), chunk, jobs=spans)


class _Inputs:
    """The inputs of each job of a manifest (the split source is loaded once)."""

    def __init__(self, m: Manifest):
        self.m = m
        self._arrays: dict[str, np.ndarray] | None = None

    def __call__(self, job: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.m.mode == "files":
            with np.load(Path(self.m.source) / job["file"], allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if self._arrays is None:
            with np.load(self.m.source, allow_pickle=False) as z:
                self._arrays = {k: z[k] for k in z.files}
        return {k: np.ascontiguousarray(a[job["start"] : job["stop"]]) for k, a in self._arrays.items()}


@contextmanager
def _progress() -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield bar


def run(client: Any, m: Manifest, manifest_path: Path, *, timeout_s: float | None, resume: bool) -> int:
    """Submit (or re-attach to) the manifest's jobs, write outputs as they finish. Exit code."""
    out = Path(m.out)
    if m.mode == "files":
        out.mkdir(parents=True, exist_ok=True)
    inputs = _Inputs(m)
    todo = [j for j in m.jobs if not (m.mode == "files" and (out / j["file"]).is_file())]
    handles: dict[str, Any] = {}
    with _progress() as bar:
        task = bar.add_task("submitting" if not resume else "re-attaching", total=len(todo))
        for j in todo:
            handle = client.job(j["id"]) if resume else None
            if handle is not None:
                try:
                    # No record yet: it never reached Redis, or it still waits in its queue (a
                    # client cannot tell which). Submit it again under the same id: whichever copy
                    # is answered first wins, and a worker skips the other at its claim.
                    if handle.status() == "queued":
                        handle = None
                except JobNotFound:  # its result expired: run it again
                    handle = None
            while handle is None:
                try:
                    handle = client.submit(m.model, inputs(j), version=m.model_version, job_id=j["id"])
                except QueueFull:  # backpressure: wait for the fleet to drain the queue a little
                    time.sleep(0.2)
            handles[j["id"]] = handle
            bar.advance(task)
        by_id = {j["id"]: j for j in m.jobs}
        done = bar.add_task("running", total=len(m.jobs), completed=len(m.jobs) - len(todo))
        results: dict[str, dict[str, np.ndarray]] = {}
        failures: dict[str, str] = {}
        try:
            for h in client.as_completed(list(handles.values()), timeout_s=timeout_s):
                try:
                    outputs = h.result()  # already arrived
                except RemoteError as exc:
                    failures[h.id] = f"{exc.remote_type}: {exc.message}"
                else:
                    if m.mode == "files":
                        _save_npz(out / by_id[h.id]["file"], dict(outputs))
                    else:
                        results[h.id] = outputs
                bar.advance(done)
        except JobTimeout:
            bar.stop()
            print(f"timed out: {len(handles) - len(results) - len(failures)} jobs still running; ", end="")
            print(f"collect them later with: icow infer --resume {manifest_path}")
            return 3
    if failures:
        for job_id, why in list(failures.items())[:20]:
            print(f"failed: {job_id}: {why}")
        print(f"{len(failures)} of {len(m.jobs)} jobs failed")
        return 1
    if m.mode == "split":
        if len(results) != len(m.jobs):  # re-attached jobs are all fetched again; this is a bug guard
            raise IcowError(f"only {len(results)} of {len(m.jobs)} results collected")
        names = list(results[m.jobs[0]["id"]])
        merged: dict[str, Any] = {n: np.concatenate([results[j["id"]][n] for j in m.jobs], axis=0) for n in names}
        _save_npz(out, merged)
        for n, a in merged.items():
            print(f"{n}: {a.dtype} {list(a.shape)}")
    print(f"wrote {out} ({len(m.jobs)} jobs)")
    return 0


def default_manifest(out: Path) -> Path:
    return out / "manifest.json" if out.suffix != ".npz" else out.with_name(out.name + ".manifest.json")
