"""Soak: jobs from several client processes to two workers while one is SIGKILLed and restarted;
every job gets exactly one correct result and none is lost.

CI runs a short version (``ICOW_SOAK_JOBS``, default 300); ``bench/soak.py`` runs longer ones
and explains the report. A killed worker's jobs come back once its lease (``--lease``,
``ICOW_SOAK_LEASE_S``, 4 s here) runs out; ``ICOW_SOAK_TIMEOUT_S`` bounds the wait for results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_job_is_lost_or_answered_twice_while_a_worker_is_killed_and_restarted() -> None:
    jobs = int(os.environ.get("ICOW_SOAK_JOBS", "300"))
    args = [sys.executable, str(ROOT / "bench" / "soak.py"), "--jobs", str(jobs), "--clients", "3", "--kills", "3"]
    args += ["--timeout", os.environ.get("ICOW_SOAK_TIMEOUT_S", "120"), "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    assert report["kills"] == 3
    assert report["submitted"] == jobs
    assert report["lost"] == 0, report["examples"]
    assert report["wrong"] == 0 and report["failed"] == 0, report["examples"]
    assert report["succeeded"] == jobs  # exactly one result per job id, and the right one
    assert report["ok"] is True
