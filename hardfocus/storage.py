"""Files on any fsspec filesystem: URLs, fresh listings, durable writes, concurrent reads, redaction.

A *commit* is a write that appears whole or not at all and survives a power cut once it returns:
locally a temporary file in the same directory, fsynced, renamed into place, and the directory fsynced
(without the fsyncs a crash can leave the renamed file empty); on an object store one PUT, which the
store applies atomically. Every small state file (markers, job files, manifests) is written this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, TypeVar

from fsspec.core import url_to_fs

T = TypeVar("T")
R = TypeVar("R")

TMP_PREFIX = ".tmp-"  # a file being written: never a result, removed by the next holder of the output's lock
_PREFETCH = 8  # files read at once: an object store answers each request slowly, not rarely


def fs_protocol(fs) -> str:
    """The filesystem's main protocol name (``file``, ``s3``, ...)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs) -> bool:
    return fs_protocol(fs) in ("file", "local")


def absolute(url: str) -> str:
    """A local path made absolute (``~`` expanded), a URL (``s3://...``, ``file://...``) as it is: what a Ray worker,
    whose working directory is the one its Ray was started in, not the caller's, reads as the caller meant it."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def fs_url(fs, path: str) -> str:
    """The URL that names ``path`` on ``fs`` again: the bare path locally, ``<protocol>://path`` elsewhere."""
    return path if is_local(fs) else f"{fs_protocol(fs)}://{path}"


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)")
# query parameters that carry secrets: presigned URLs (X-Amz-Signature, X-Goog-Credential, sig), tokens, keys
_SECRET_QUERY = re.compile(r"(?P<key>[?&][^=&\s]*(?:sig|token|key|secret|password|credential|auth)[^=&\s]*=)[^&\s'\"]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: the user and password (``https://***@host/x``)
    and the values of query parameters that carry secrets (``?X-Amz-Signature=***``).

    Every message and manifest that names an input goes through this, so a credential given in a URL never
    reaches a log, an error or a file.
    """
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", _CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text))


# where a listing has no mtime: the store's version keys, in the order they are trusted
_VERSION_KEYS = ("ETag", "etag", "generation", "LastModified", "last_modified", "Last-Modified", "updated", "mtime")


def file_version(fs, path: str, info: dict) -> str | None:
    """A file's version, an opaque string compared for equality only: ``st_mtime_ns`` locally, else the store's ETag
    (or generation, or last-modified time) from the listing's ``info``; None when it gives none. Scoring records it
    of every shard, and export compares it with the shard it reads."""
    if is_local(fs):
        try:
            return str(os.stat(path).st_mtime_ns)
        except OSError:
            return None
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value is not None and value != "":
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return None


def fresh(fs, path: str) -> None:
    """Forget cached listings of ``path`` and below (s3fs caches them): other processes write there."""
    fs.invalidate_cache(path)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = path.rstrip("/") + "/"
        for key in [k for k in list(cache) if k.startswith(prefix)]:
            cache.pop(key, None)


def list_names(fs, path: str) -> list[str]:
    """Names of the entries of directory ``path``, fresh, without their details ([] if it does not exist).

    A plain listing: ``glob`` asks for every entry's details (a ``stat`` each locally, a dict each everywhere)
    and then matches them, 6x the time and 900 MB more for a million parts (``benchmarks/scoring_units.py``).
    """
    if is_local(fs):
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
    fresh(fs, path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    finally:
        fresh(fs, path)  # s3fs keeps what it listed, with details: a million parts' worth
    return [posixpath.basename(p.rstrip("/")) for p in entries]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(fs, path: str, write: Callable[[IO[bytes]], object]) -> None:
    """``write(file)`` to ``path`` as a commit (see the module docstring); an exception inside ``write`` leaves
    nothing behind and the previous content, if any, in place.

    On an object store the bytes are collected first: closing an fsspec file commits what was written so far.
    """
    if not is_local(fs):
        import io

        buffer = io.BytesIO()
        write(buffer)
        fs.pipe_file(path, buffer.getvalue())
        return
    folder, base = posixpath.split(path)
    tmp = posixpath.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder or ".")


def commit_bytes(fs, path: str, data: bytes) -> None:
    commit(fs, path, lambda f: f.write(data))


def commit_json(fs, path: str, obj) -> None:
    commit_bytes(fs, path, json.dumps(obj, indent=2, default=str).encode())


def read_json(fs, path: str, what: str | None = None, kind: type = object):
    """The JSON value at ``path`` (of type ``kind``: ``dict`` for a record), or None if there is none. A file that
    is not JSON, a value of another type, or a directory in the file's place is an error naming it: every JSON
    file hardfocus writes is a commit, so a damaged one was changed by something else."""
    from hardfocus.errors import HardfocusError

    name = f"{what or 'the file'} {redact(fs_url(fs, path))}"
    fs.invalidate_cache(path)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise HardfocusError(f"{name} is not a file ({exc}): remove what is there, or restore the file") from None
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise HardfocusError(
            f"{name} is damaged ({len(data)} bytes, not JSON: {exc}); hardfocus writes it whole or not at all, so "
            "something else changed it: restore it, or delete it (the stage then treats its output as unfinished)"
        ) from None
    if not isinstance(value, kind):
        raise HardfocusError(f"{name} holds a JSON {type(value).__name__}, not the {kind.__name__} hardfocus wrote: "
                             "restore it, or delete it (the stage then treats its output as unfinished)")
    return value


def read_record(fs, path: str, model, what: str):
    """The JSON object at ``path`` validated as the pydantic ``model`` (None if absent); a record that is JSON but
    not such a record (a field of the wrong type, a missing one) is an error naming the file and the field."""
    from pydantic import ValidationError

    from hardfocus.errors import HardfocusError

    obj = read_json(fs, path, what, kind=dict)
    if obj is None:
        return None
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:3])
        raise HardfocusError(
            f"{what} {redact(fs_url(fs, path))} is not a record hardfocus wrote ({problems}): restore it, or rerun the "
            "stage that wrote it with --overwrite"
        ) from None


def fsync_tree(path: str) -> None:
    """fsync every file and directory under a local ``path`` (what a library wrote without syncing)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def rename_durably(src: str, dst: str) -> None:
    """Rename a local file or directory and make the rename survive a power cut."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def normalized(fs, path: str) -> str:
    """One spelling of a path: symlinks resolved and ``.``/``..`` folded locally, ``.`` segments and a trailing
    slash dropped elsewhere; so ``out``, ``out/``, ``out/.`` and a link to it are one output with one lock."""
    if is_local(fs):
        resolved = os.path.realpath(path)
        if os.path.islink(resolved):  # realpath stops where links loop
            from hardfocus.errors import HardfocusError

            raise HardfocusError(f"'{redact(path)}' is a loop of symbolic links: point it at a directory")
        return resolved
    return posixpath.normpath(path).rstrip("/") if path not in ("", "/") else path


def canonical(url: str) -> str:
    """One spelling per location (:func:`normalized`, as a URL): two inputs with the same canonical form are the
    same directory."""
    fs, path = url_to_fs(url)
    if fs_protocol(fs) in ("http", "https"):  # fsspec keeps a web address whole as the path: it is its own spelling
        return url
    return fs_url(fs, normalized(fs, path))


def file_identity(url: str) -> str | None:
    """A local file's identity, ``<device>:<inode>``: the same for every name of the file (a symbolic or a hard link),
    where a path is one name; None elsewhere (a store's object has one name) or where it cannot be read."""
    fs, path = url_to_fs(url)
    if not is_local(fs):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def overlaps(a: str, b: str) -> bool:
    """Whether two canonical locations are the same, or one lies inside the other."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def prefetched(read: Callable[[T], R], items: Iterable[T], depth: int = _PREFETCH) -> Iterator[R]:
    """``read(item)`` for each item, in order, with up to ``depth`` reads in flight on threads."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_footer(fs, path: str):
    """A Parquet file's footer (``pyarrow.parquet.FileMetaData``: rows, schema, key-value metadata, statistics), or
    the error that stopped it being read (cut short, not Parquet, gone): each stage that checks parts says why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            return pq.read_metadata(f)
    except (OSError, pa.ArrowException) as exc:
        return exc
