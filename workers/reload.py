"""Model updates without restarts: rescan the repository, load what is new, drop what went.

A background thread rescans ``<repo>`` every few seconds (``icow worker --rescan S``). A new
version (or model) is loaded first if its config says ``preload`` (a file that does not load
yet, e.g. still being copied, is retried at the next scan), then served and published; a
version the policy no longer serves (``versions = "latest"`` and a newer one arrived, or its
folder was deleted) is unpublished and its session dropped. A changed config.toml takes effect at
the rescan for what needs no new session (latest, max_batch, max_wait_ms, max_queue, shadow,
keep_inputs); session settings of a version already served (providers, threads, GPU options)
take a worker restart.

A version that does not load stays marked failed (``ModelManager.failed``: heartbeat, `icow
status`, the ``icow_model_failed`` metric, ``icow:failed:<m>``) and is retried at every rescan;
a model whose config.toml is refused (workers/config_bounds.py) is failed the same way, alone.
A repository that cannot be read at all (a missing bucket) is logged once, then again only
when the problem changes or ends. The intake takes from
the queues of whatever is served at each take, so new models and versions need nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from icow import keys
from icow.workers.models import ModelManager
from icow.workers.repository import ModelEntry
from icow.workers.runtime import OnnxModel

log = logging.getLogger("icow.reload")


@dataclass
class Changes:
    added: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    new_models: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def _versions(entries: dict[str, ModelEntry]) -> set[tuple[str, int]]:
    return {(m, v) for m, e in entries.items() for v in e.versions}


class RepositoryWatcher:
    """Keeps a :class:`ModelManager` in step with its repository folder."""

    def __init__(
        self,
        manager: ModelManager,
        r: redis.Redis,
        *,
        interval_s: float = keys.RESCAN_INTERVAL_S,
        on_new_models: Callable[[list[str]], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.manager = manager
        self.r = r
        self.interval_s = interval_s
        self.on_new_models = on_new_models
        self.on_change = on_change  # renews liveness at once (before the metadata is published)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scan_problem: str | None = None  # the rescan failure last logged (None: scans work)

    def refresh(self) -> Changes:
        """Rescan once; load, serve and publish what is new, unpublish and drop what went."""
        mgr = self.manager
        try:
            new = mgr.repo.scan(mgr.only)
        except Exception as exc:  # an unreadable folder, a missing bucket: keep serving
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._scan_problem:  # once, then again only when it changes
                log.warning("model repository rescan failed, keeping the models served: %s", problem)
            self._scan_problem = problem
            return Changes()
        if self._scan_problem is not None:
            log.info("model repository readable again (was: %s)", self._scan_problem)
            self._scan_problem = None
        old = mgr.entries
        for key in [k for k in mgr.failed if k not in _versions(new)]:
            del mgr.failed[key]  # gone from the repository (or no longer in its policy)
        ch = Changes()
        for m, v in sorted(_versions(new) - _versions(old)):
            if self._try_load(new[m], v):
                ch.added.append((m, v))
                mgr.failed.pop((m, v), None)
            else:
                ch.failed.append((m, v))
        for m, v in ch.failed:  # serve it once it loads; until then what was served before
            keep = tuple(x for x in new[m].versions if x != v) or (old[m].versions if m in old else ())
            if keep:
                new[m] = dataclasses.replace(new[m], versions=keep)
            else:
                del new[m]
        ch.removed = sorted(_versions(old) - _versions(new))
        ch.new_models = sorted(set(new) - set(old))
        if not ch:
            # Same versions; settings that need no new session (latest, max_batch, max_wait_ms,
            # max_queue, shadow, keep_inputs) take effect now; session settings (providers,
            # threads, GPU options) at the next restart.
            if any(m in old and new[m].config != old[m].config for m in new):
                mgr.set_entries(new)
                if self.on_change is not None:
                    self.on_change()  # the version offered as latest may have changed
                mgr.publish(self.r)  # limits
                log.info(
                    "model settings changed: %s", sorted(m for m in new if m in old and new[m].config != old[m].config)
                )
            return ch
        mgr.set_entries(new)
        if self.on_change is not None:
            self.on_change()  # new versions live, dropped ones withdrawn, before clients see them
        for m, v in ch.removed:
            mgr.unload(m, v)
        if ch.added:
            mgr.publish(self.r)
        gone: dict[str, list[int]] = {}
        for m, v in ch.removed:
            gone.setdefault(m, []).append(v)
        for m, vs in gone.items():
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(keys.model(m), *[str(v) for v in vs])
            pipe.hlen(keys.model(m))
            if not pipe.execute()[1]:
                self.r.srem(keys.MODELS, m)
        log.info("model repository changed: serving %s, dropped %s", ch.added, ch.removed)
        if ch.new_models and self.on_new_models is not None:
            self.on_new_models(ch.new_models)
        return ch

    def _try_load(self, entry: ModelEntry, v: int) -> bool:
        try:
            if entry.config.preload:
                self.manager.load(entry, v)
            else:  # check that the file loads at all (and is completely copied)
                OnnxModel(entry.name, v, entry.file(v), providers=("cpu",), threads=1).unload()
            return True
        except Exception as exc:
            if (entry.name, v) not in self.manager.failed:
                self.manager.mark_failed(entry.name, v, exc)
            return False

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="icow-rescan", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:
                log.exception("model repository refresh failed")

    def stop(self) -> None:
        self._stop.set()
