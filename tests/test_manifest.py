"""`icow infer --resume MANIFEST` trusts a manifest no further than its own output folder: an
entry naming a path outside it (absolute, ``..``, a sub-path, a symlink already there) is
refused with a clear error before anything is read, submitted or written. The manifest holds
job ids, which are capabilities: it is written readable by its owner only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icow.cli import bulk
from icow.errors import InvalidInput

ICOW = [sys.executable, "-m", "icow.cli"]


def manifest(tmp_path: Path, files: list[object], **over: object) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    doc = {
        "manifest": bulk.MANIFEST_VERSION,
        "model": "mlp",
        "model_version": None,
        "mode": "files",
        "source": str(tmp_path / "in"),
        "out": str(tmp_path / "out"),
        "chunk": 1,
        "created": 0.0,
        "jobs": [{"id": f"job-{i}", "file": f} for i, f in enumerate(files)],
        **over,
    }
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "name",
    ["../../a.npz", "../a.npz", "sub/a.npz", "/tmp/a.npz", "a.npy", "", ".", "..", 7, None, "a\\..\\b.npz"],
)
def test_a_manifest_entry_outside_the_output_folder_is_refused(tmp_path: Path, name: object) -> None:
    path = manifest(tmp_path, ["fine.npz", name])
    with pytest.raises(InvalidInput, match="escapes the output folder"):
        bulk.Manifest.load(path)


def test_a_symlink_in_the_output_folder_is_refused(tmp_path: Path) -> None:
    path = manifest(tmp_path, ["a.npz"])
    outside = tmp_path / "elsewhere.npz"
    outside.write_bytes(b"precious")
    (tmp_path / "out" / "a.npz").symlink_to(outside)
    with pytest.raises(InvalidInput, match="no symlink"):
        bulk.Manifest.load(path)
    assert outside.read_bytes() == b"precious"


def test_malformed_manifests_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    for over in (
        {"mode": "other"},
        {"jobs": [{"file": "a.npz"}]},  # no id
        {"jobs": "x"},
        {"mode": "split", "jobs": [{"id": "j", "start": 3, "stop": 1}]},
        {"mode": "split", "jobs": [{"id": "j", "start": "0", "stop": 1}]},
        {"unknown": 1},
    ):
        with pytest.raises(InvalidInput):
            bulk.Manifest.load(manifest(tmp_path, ["a.npz"], **over))
    assert bulk.Manifest.load(manifest(tmp_path, ["a.npz", "b c.npz"])).jobs[1]["file"] == "b c.npz"


def test_icow_infer_resume_refuses_the_manifest_and_writes_nothing(tmp_path: Path) -> None:
    path = manifest(tmp_path, ["../../a.npz"])
    np.savez(tmp_path / "in" / "x.npz", x=np.ones((1, 4), np.float32))
    escaped = (tmp_path / "out" / "../../a.npz").resolve()
    assert not escaped.exists()
    # Refused before any connection: the Redis URL leads nowhere.
    proc = subprocess.run(
        [*ICOW, "infer", "--resume", str(path), "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("icow: error: ") and "escapes the output folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not escaped.exists() and list((tmp_path / "out").iterdir()) == []


def test_a_saved_manifest_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.ones((4, 2), np.float32))
    m = bulk.plan("mlp", None, tmp_path / "x.npz", tmp_path / "y.npz", many=True, chunk=2)
    m.save(tmp_path / "m.json")
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o600
    assert bulk.Manifest.load(tmp_path / "m.json") == m


def test_outputs_replace_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.npz"
    outside.write_bytes(b"precious")
    (tmp_path / "y.npz").symlink_to(outside)
    bulk._save_npz(tmp_path / "y.npz", {"y": np.arange(3)})
    assert outside.read_bytes() == b"precious" and not (tmp_path / "y.npz").is_symlink()
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["y"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
