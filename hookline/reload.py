"""``hookline dev --reload``: what to watch, and a watcher thread (watchfiles) that collects the
changes of the configuration file and of the handler modules for dev's loop, which restarts the
worker (and, for the configuration, the ingress and the console) as uvicorn and flask do.

Only what matters is watched: the configuration's folder without its subfolders (the
configuration itself, and the handler modules beside it, even one not written yet), and the
folder of each handler module found elsewhere (a package's, with its subfolders). A project's
``.venv`` or ``.git`` is never walked."""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from shared.config import Settings


@dataclass(frozen=True)
class Watched:
    """The files whose change restarts something, and the folders to watch for them."""

    config: Path
    #: handler module files (a module not written yet: where it would be, beside the
    #: configuration or in the current directory)
    files: frozenset[Path] = frozenset()
    #: handler packages: every ``.py`` under them
    packages: frozenset[Path] = frozenset()

    def folders(self) -> list[tuple[Path, bool]]:
        """(folder, recursive) pairs to watch."""
        flat = {self.config.parent, *(f.parent for f in self.files)}
        return [(f, False) for f in sorted(flat)] + [(p, True) for p in sorted(self.packages)]

    def matters(self, path: Path) -> bool:
        if path == self.config or path in self.files:
            return True
        return path.suffix == ".py" and any(p in path.parents for p in self.packages)


def watched(settings: Settings, config: Path) -> Watched:
    """What to watch for this configuration's handler modules."""
    config = config.resolve()
    folders = [config.parent, Path(os.getcwd()).resolve()]
    files: set[Path] = set()
    packages: set[Path] = set()
    for name in settings.worker.handlers:
        spec = None
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent package that does not import (yet)
            spec = None
        if spec is not None and spec.submodule_search_locations:
            packages |= {Path(p).resolve() for p in spec.submodule_search_locations}
        elif spec is not None and spec.origin and os.path.exists(spec.origin):
            files.add(Path(spec.origin).resolve())
        else:
            relative = Path(*name.split(".")).with_suffix(".py")
            files |= {folder / relative for folder in folders}
    return Watched(config, frozenset(files), frozenset(packages))


@dataclass
class Watcher:
    """A thread collecting the changes that matter until :meth:`take` takes them."""

    what: Watched
    _changed: set[Path] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if self.what.folders():
            self._thread = threading.Thread(target=self._run, name="dev-reload", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # one watcher per kind (watchfiles's recursive flag is per call); recursive folders
        # in a second thread
        flat = [str(f) for f, recursive in self.what.folders() if not recursive and f.is_dir()]
        deep = [str(f) for f, recursive in self.what.folders() if recursive and f.is_dir()]
        threads = [
            threading.Thread(target=self._watch, args=(paths, rec), daemon=True)
            for paths, rec in ((flat, False), (deep, True))
            if paths
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _watch(self, paths: list[str], recursive: bool) -> None:
        for changes in watchfiles.watch(
            *paths,
            watch_filter=None,
            debounce=300,
            stop_event=self._stop,
            recursive=recursive,
            raise_interrupt=False,
        ):
            found = {Path(p).resolve() for _, p in changes}
            with self._lock:
                self._changed |= {p for p in found if self.what.matters(p)}

    def take(self) -> set[Path]:
        """The changes that matter since the last call."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def watch(self, what: Watched) -> None:
        """Watch these from now on (the configuration named other handler modules)."""
        self.stop()
        self.what = what
        self._stop = threading.Event()
        self.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def describe(paths: set[Path]) -> str:
    shown = sorted(os.path.relpath(p) for p in paths)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
