"""The stage-directory protocol: how every stage (score, select, train, eval, tokenise) writes its output.

A stage directory ``D`` holds
- ``D/<job file>``: the run's *identity* (its parameters and the identity of its inputs), a commit, written
  before anything else;
- the stage's data;
- ``D/<marker>``: written last, a commit; ``D`` is complete iff the marker exists.
Beside it, in ``D``'s parent: ``.<name>.lock`` (held while a run writes ``D``: a ``flock`` locally, a lock
object with fencing on object stores, :mod:`hardfocus.lock`) and, for stages that replace their
output whole, ``.<name>.tmp-<id>/`` (the staging directory, renamed into place at the end; local disks only).

:meth:`StageDir.open` decides, in one place, what a run does with what it finds:

| found at ``D``                                 | without ``--overwrite``       | with ``--overwrite``  |
|------------------------------------------------|-------------------------------|-----------------------|
| nothing, or an empty directory                 | new                           | new                   |
| this stage's output, same identity, complete   | complete (nothing to do)      | complete              |
| this stage's output, same identity, unfinished | resume (or redo, if staged)   | resume                |
| this stage's output, other identity            | refused, naming the keys      | replace               |
| another stage's output, or anything else       | refused                       | refused               |
| an input of the run, or a directory holding one / held by one | refused        | refused               |

Staging directories and temporary files belong to the holder of the lock: the next holder removes them,
since the lock is free only once their writer is gone.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import IO

from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.kinds import PathInfo, StageKind, identify, visible
from hardfocus.lock import OutputLock
from hardfocus.storage import (
    TMP_PREFIX,
    canonical,
    commit,
    fresh,
    fs_url,
    fsync_tree,
    is_local,
    list_names,
    normalized,
    overlaps,
    read_json,
    read_record,
    redact,
    rename_durably,
)

log = logging.getLogger(__name__)


# ---- identities -----------------------------------------------------------------------------------------------


def differing_keys(before: dict | None, now: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ, dotted into nested tables (``config.learning_rate``) and indexed into lists of
    the same length (``scores[1]``)."""
    if not isinstance(before, dict):
        return ["(no recorded identity: written by an older hardfocus or damaged)"]
    keys = []
    for k in sorted(set(before) | set(now)):
        a, b = before.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{prefix}{k}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
            keys += [f"{prefix}{k}[{i}]" for i, (x, y) in enumerate(zip(a, b)) if x != y]
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


LAYOUT_KEYS = ("parts", "decisions")  # the identity keys that say which layout of its files an output has


def what_changed(before: dict | None, now: dict, named: Mapping[str, Sequence[str]] | None = None) -> str:
    """Why a run is not the one an output holds, in words ("made from other inputs (its input 'work/scores' changed
    since) and with other settings (differs in: parameters.keep)"): an output of an earlier version's layout, the inputs
    that changed (``named``: the identity's keys that identify inputs, each with the names of its inputs, in order:
    an input is named when what identifies it is not among the ones the output was made from), then the settings that
    differ."""
    if isinstance(before, dict) and any(before.get(k) != now.get(k) for k in LAYOUT_KEYS if k in now):
        return "made by an earlier version of hardfocus (its files lack what this version checks)"
    inputs: list[str] = []
    settings: list[str] = []
    named = named or {}
    for key in differing_keys(before, now):
        top = key.partition("[")[0]
        if top not in named or not isinstance(before, dict):
            settings.append(key)
            continue
        was, now_list, names = before.get(top), now.get(top), list(named[top])
        if not isinstance(was, list) or not isinstance(now_list, list):
            inputs += [f"'{redact(n)}' changed since" for n in names]
            continue
        old = [json.dumps(x, sort_keys=True) for x in was]
        new = [json.dumps(x, sort_keys=True) for x in now_list]
        fresh_inputs = [f"'{redact(names[i])}' is new or changed since" for i, x in enumerate(new)
                        if x not in old and i < len(names)]
        if not fresh_inputs and sorted(old) == sorted(new):
            fresh_inputs = ["are given in another order"]
        elif not fresh_inputs:
            fresh_inputs = [f"are {len(new)} of the {len(old)} it was made from"]
        inputs += [x for x in fresh_inputs if x not in inputs]
    parts = []
    if inputs:
        parts.append("from other inputs (" + "; ".join(f"its input{'s' if x.startswith('are') else ''} {x}"
                                                      for x in inputs) + ")")
    if settings:
        parts.append(f"with other settings (differs in: {', '.join(settings)})")
    return "made " + " and ".join(parts) if parts else "made with other settings"


class Opening(Enum):
    NEW = "new"  # nothing there: write it
    COMPLETE = "complete"  # the same run finished: nothing to do (a resumable stage may still find work)
    RESUME = "resume"  # the same run, unfinished: continue it (a staged stage redoes it)
    REPLACE = "replace"  # another run of this stage, and --overwrite: replace it


@dataclass
class StageDir:
    """A stage's output directory on any fsspec filesystem, and the protocol of writing it."""

    url: str
    kind: StageKind
    fenced_by: object = field(default=None, repr=False)  # in a process that does not hold the lock (an actor, a
    # Ray task): the lock's fence (:meth:`fence`), checked before each commit
    _lock: OutputLock | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.fs, path = url_to_fs(self.url)
        self.path = normalized(self.fs, path)
        parent, name = posixpath.split(self.path)
        if not name or not parent:
            raise HardfocusError(f"'{redact(self.url)}' cannot be an output: give a directory below a bucket or a root")
        self.parent, self.name = parent, name

    # -- files ----------------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def join(self, name: str) -> str:
        return posixpath.join(self.path, name)

    def names(self, folder: str = "") -> list[str]:
        return list_names(self.fs, self.join(folder) if folder else self.path)

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache(self.join(name))
        return self.fs.exists(self.join(name))

    def read_json(self, name: str):
        return read_json(self.fs, self.join(name), what=f"{self.kind.name}/ file")

    def read_record(self, name: str, model):
        """``name`` validated as the pydantic ``model`` (None if absent), or an error naming the file."""
        return read_record(self.fs, self.join(name), model, what=f"{self.kind.name}/ file")

    def commit(self, name: str, write: Callable[[IO[bytes]], object]) -> None:
        """Write ``name`` whole or not at all, durably, after checking this run still holds the lock."""
        self.check_lock()
        try:
            commit(self.fs, self.join(name), write)
        except OSError as exc:  # a full disk, a quota, a file-size limit, a vanished mount
            raise HardfocusError(
                f"cannot write {name} to {redact(self.url)}: {exc}; free space (or fix the storage) and rerun: "
                "what was committed is kept"
            ) from exc

    def commit_json(self, name: str, obj) -> None:
        data = json.dumps(obj, indent=2, default=str).encode()
        self.commit(name, lambda f: f.write(data))

    def remove(self, names: Sequence[str]) -> None:
        """Delete these files; names that do not exist are ignored."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.join(name))
        fresh(self.fs, self.path)

    def url_of(self, name: str) -> str:
        return self.url.rstrip("/") + "/" + name

    # -- the lock -------------------------------------------------------------------------------------------

    @property
    def lock_path(self) -> str:
        return posixpath.join(self.parent, f".{self.name}.lock")

    def lock(self, wait: bool = False) -> None:
        """Hold the output's lock for this run; a second run on the same output refuses, naming the owner (with
        ``wait``, on a local disk, it waits: for a shared cache entry that whichever run comes first makes)."""
        if self._lock is not None:
            return
        lock = OutputLock(self.fs, self.lock_path, redact(self.url))
        try:
            self.fs.makedirs(self.parent, exist_ok=True)
            lock.acquire(wait=wait and self.is_local)
        except OSError as exc:
            raise HardfocusError(f"cannot write to output directory {redact(self.url)}: {exc}") from exc
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_lock(self) -> None:
        if self._lock is not None:
            self._lock.check()
        if self.fenced_by is not None:
            self.fenced_by.check()

    def fence(self):
        """What another process (an actor) checks before each commit: that this run still holds the lock."""
        return None if self._lock is None else self._lock.fence()

    @contextlib.contextmanager
    def locked(self, wait: bool = False) -> Iterator[StageDir]:
        self.lock(wait)
        try:
            yield self
        finally:
            self.unlock()

    # -- the protocol ---------------------------------------------------------------------------------------

    def open(self, identity: dict, overwrite: bool, inputs: Sequence[str] = (), fresh: dict | None = None,
             named: Mapping[str, Sequence[str]] | None = None) -> Opening:
        """Lock the output, clear what dead writers left, and decide what this run does (see the module docstring).
        ``named``: the keys of ``identity`` that identify inputs, each with the names of those inputs, so that an
        output replaced or refused because an input changed says which (:func:`what_changed`).

        Writes the job file (``{"stage": ..., "identity": ...}``, plus ``fresh`` for an output begun now, plus what
        a resumed one's job file held) for a run that goes on, unless the stage is staged (its job file goes into
        the staging directory). Raises a :class:`HardfocusError` for a refusal.
        """
        refuse_overlap(self.url, inputs)
        self.lock()
        try:
            self._remove_leftovers()
            found = identify(self.url)
            opening = self._decide(found, identity, overwrite, named)
            if opening is Opening.REPLACE and not self.kind.staged:
                self.clear() if self.kind.replace_clears else self.unmark()
            if opening is not Opening.COMPLETE and not self.kind.staged:
                self.fs.makedirs(self.path, exist_ok=True)
                previous = self.read_json(self.kind.job) if opening is Opening.RESUME else None
                kept = {k: v for k, v in (previous or {}).items() if k not in ("stage", "identity")}
                begun = (fresh or {}) if opening in (Opening.NEW, Opening.REPLACE) else {}
                self.commit_json(self.kind.job, {"stage": self.kind.name, "identity": identity, **begun, **kept})
        except BaseException:
            self.unlock()
            raise
        return opening

    def _decide(self, found: PathInfo, identity: dict, overwrite: bool,
                named: Mapping[str, Sequence[str]] | None = None) -> Opening:
        if found.kind in ("absent", "empty"):
            return Opening.NEW
        if found.kind != self.kind.name:
            raise HardfocusError(
                f"'{redact(self.url)}' is {found.describe()}, not a {self.kind.name}/ output; hardfocus writes (and "
                f"--overwrite replaces) only a {self.kind.name}/ directory there: choose another --output"
            )
        job = self.read_json(self.kind.job)
        before = job.get("identity") if isinstance(job, dict) else None
        if before == identity:
            return Opening.COMPLETE if found.complete else Opening.RESUME
        if not found.complete and not self.holds_data():
            return Opening.REPLACE  # a run with other settings that failed before writing anything: nothing to keep
        why = what_changed(before, identity, named)
        if overwrite:
            log.info("replacing %s (%s %s)", redact(self.url), self.kind.noun, why)
            return Opening.REPLACE
        noun = self.kind.noun
        plural = noun.endswith("s")
        what = ("unfinished " if not found.complete else "") + noun if plural else f"{'an unfinished' if not found.complete else 'a'} {noun}"
        raise HardfocusError(
            f"'{redact(self.url)}' holds {what} {why}; pass --overwrite to replace it, or choose another --output"
        )

    def holds_data(self) -> bool:
        """Whether the directory holds anything but its job file (an unfinished run that wrote nothing does not)."""
        return bool(set(visible(self.names())) - {self.kind.job})

    def clear(self) -> None:
        """Empty the directory, the marker first: from its removal on, the old output reads as unfinished. Only the
        names the stage writes are removed: anything else there is refused, never deleted."""
        names = self.names()
        foreign = sorted(n for n in visible(names) if not any(fnmatch.fnmatchcase(n, w) for w in self.kind.writes))
        if foreign:
            raise HardfocusError(
                f"'{redact(self.url)}' holds files a {self.kind.name}/ stage does not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): move them away, or choose another --output; nothing was removed"
            )
        self.unmark()
        for name in names:
            target = self.join(name)
            if name == self.kind.marker:
                continue  # removed first
            if self.fs.isdir(target):
                self.fs.rm(target, recursive=True)
            else:
                self.fs.rm_file(target)
        fresh(self.fs, self.path)

    def unmark(self) -> None:
        """Remove the marker before changing a complete output."""
        self.check_lock()
        self.remove([self.kind.marker])

    def mark(self, obj, sync_tree: bool = False) -> None:
        """Write the marker: the last write of a run, after which the output is complete. ``sync_tree``: first
        fsync every file under the directory (what a library wrote without syncing, e.g. ``save_pretrained``)."""
        if sync_tree and self.is_local:
            fsync_tree(self.path)
        self.commit_json(self.kind.marker, obj)

    def is_complete(self) -> bool:
        return self.exists(self.kind.marker)

    def _remove_leftovers(self) -> None:
        """Staging directories and temporary files of runs that held this lock before (they are gone)."""
        if self.is_local:
            for name in list_names(self.fs, self.parent):
                if name.startswith((f".{self.name}.tmp-", f".{self.name}.old-")):
                    log.warning("removing %s, left by an interrupted run", posixpath.join(self.parent, name))
                    shutil.rmtree(posixpath.join(self.parent, name), ignore_errors=True)
        for name in list_names(self.fs, self.path):
            if name.startswith(TMP_PREFIX):
                self.remove([name])

    @contextlib.contextmanager
    def staged(self, identity: dict, record: dict | None = None) -> Iterator[StageDir]:
        """A directory to write the whole output into (its marker last, with :meth:`mark`); on success it
        replaces this one. Locally a sibling staging directory, renamed into place; on an object store the output
        itself, emptied first (its marker before the rest), so an interrupted write never reads as complete."""
        if not self.kind.staged:
            raise TypeError(f"{self.kind.name}/ is written in place")
        if self.is_local:
            tmp = posixpath.join(self.parent, f".{self.name}.tmp-{uuid.uuid4().hex[:8]}")
            self.fs.makedirs(tmp, exist_ok=False)
            stage = StageDir(fs_url(self.fs, tmp), self.kind)
            stage._lock = self._lock
        else:
            if identify(self.url).kind != "absent":
                self.clear()
            stage = self
        stage.fs.makedirs(stage.path, exist_ok=True)
        stage.commit_json(self.kind.job, {"stage": self.kind.name, "identity": identity, **(record or {})})
        try:
            yield stage
        except BaseException:
            if stage is not self:
                shutil.rmtree(stage.path, ignore_errors=True)
            raise
        if stage is not self:
            if not stage.is_complete():
                raise RuntimeError(f"{stage.url} was staged without its marker")
            self._swap_in(stage.path)

    def _swap_in(self, tmp: str) -> None:
        self.check_lock()
        old = None
        if self.fs.exists(self.path):
            old = posixpath.join(self.parent, f".{self.name}.old-{uuid.uuid4().hex[:8]}")
            rename_durably(self.path, old)
        rename_durably(tmp, self.path)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def refuse_overlap(output: str, inputs: Sequence[str]) -> None:
    """An output may not be an input, nor hold one, nor lie inside one: writing it would change what is read.

    A glob is checked on the files it matches (:func:`refuse_inside`): ``data/*.jsonl`` never reads ``data/scores/``.
    """
    out = canonical(output)
    for spec in inputs:
        if _is_glob(spec):
            continue
        base = canonical(spec)
        if overlaps(out, base):
            where = "is" if base == out else "overlaps"
            raise HardfocusError(
                f"the output '{redact(output)}' {where} the input '{redact(spec)}': a stage never writes where it reads; "
                "choose another --output"
            )


def refuse_inside(output: str, files: Sequence[str]) -> None:
    """No input file may lie inside the output (a glob that matches what the stage writes)."""
    out = canonical(output)
    for url in files:
        if overlaps(out, canonical(url)):
            raise HardfocusError(
                f"the input '{redact(url)}' lies inside the output '{redact(output)}': a stage never reads what it "
                "writes; choose another --output, or an input that leaves it out"
            )


def _is_glob(spec: str) -> bool:
    """A spec that names no existing path and has wildcards (an existing path with ``[`` in its name is literal)."""
    fs, path = url_to_fs(spec)
    return any(c in path for c in "*?[") and not fs.exists(path)


def refuse_repeated(dirs: Sequence[str], what: str = "directory") -> None:
    """The same directory twice (``sel`` and ``sel/``, or a link to it) would read every row twice."""
    seen: dict[str, str] = {}
    for d in dirs:
        key = canonical(d)
        if key in seen:
            raise HardfocusError(
                f"the {what} '{redact(d)}' is given twice ({redact(seen[key])} and {redact(d)}): every row would "
                "count twice; give each directory once"
            )
        seen[key] = d
