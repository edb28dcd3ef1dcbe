"""A training output on an object store (``s3://...``): train in a local staging directory, then publish.

``save_pretrained``, the Trainer's checkpoints and Ray Train's storage write local files, so a run whose output
is a URL trains into ``<cache>/train-staging/<hash of the URL>`` (a kill resumes there, on the same machine),
while the output on the store holds the run's identity and lock (:mod:`hardfocus.stagedir`). Publishing
removes the store's marker, uploads the model and its records (each object one PUT, each after checking the lock
is still this run's), and writes ``train_manifest.json`` last: on the store that object is the completion marker,
so a killed upload is never read as a finished model. :func:`fetch_model` brings a published model back into a
local cache directory (for eval).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import shutil
from pathlib import Path

from fsspec.core import url_to_fs

from hardfocus.cache import cache_dir
from hardfocus.errors import HardfocusError
from hardfocus.lock import waiting_lock
from hardfocus.stagedir import StageDir
from hardfocus.storage import commit_json, fresh, fsync_tree, read_json, redact, rename_durably
from training.output import RESUME_STATE, TRAIN_JOB_FILE, TRAIN_MANIFEST_FILE

log = logging.getLogger(__name__)


def is_url(path: str) -> bool:
    return "://" in path


def _hash(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def staging_dir(url: str, identity: dict) -> Path:
    """The local directory a run publishing to ``url`` trains in; emptied when it holds another run's state."""
    import fsspec

    staging = cache_dir() / "train-staging" / _hash(url)
    job = staging / TRAIN_JOB_FILE
    if job.exists() and (read_json(fsspec.filesystem("file"), str(job)) or {}).get("identity") != identity:
        log.info("staging directory %s holds another run: starting afresh", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    commit_json(fsspec.filesystem("file"), str(job), {"identity": identity})
    return staging


def publish(staging: Path, out: StageDir, manifest: dict) -> None:
    """Upload a finished run: the store's marker removed first, then every file, the manifest last."""
    out.unmark()  # from here until the end, whatever the store held reads as unfinished
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.relative_to(staging).parts[0] not in RESUME_STATE
                   and p.name not in (TRAIN_JOB_FILE, TRAIN_MANIFEST_FILE))
    for path in files:
        out.check_lock()
        out.fs.put_file(str(path), out.join(path.relative_to(staging).as_posix()))
    out.mark(manifest)
    log.info("published %d files of %s to %s", len(files) + 1, staging, redact(out.url))


def fetch_model(url: str) -> str:
    """A local copy of the model published at ``url`` (downloaded once per finished run); refuses an unfinished one.

    Two runs that need the same model wait for one download; a model republished during the download is refused
    (the marker read before and after must agree), never a mix of two runs' files.
    """
    fs, root = url_to_fs(url)
    local = cache_dir() / "models" / _hash(url)
    with waiting_lock(local.with_name(f".{local.name}.lock")):
        stamp = _marker(fs, root, url)
        if (local / TRAIN_MANIFEST_FILE).exists() and (local / TRAIN_MANIFEST_FILE).read_bytes() == stamp:
            return str(local)
        partial = local.with_name(f".{local.name}.partial")
        fresh(fs, root)
        targets = _download_targets(url, root, fs.find(root), partial)  # every key checked before anything is written
        shutil.rmtree(partial, ignore_errors=True)
        for key, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(key, str(target))
        if _marker(fs, root, url) != stamp:
            shutil.rmtree(partial, ignore_errors=True)
            raise HardfocusError(f"'{redact(url)}' was published again while it was downloaded; run again to fetch the new model")
        fsync_tree(str(partial))
        shutil.rmtree(local, ignore_errors=True)
        rename_durably(str(partial), str(local))
    log.info("downloaded %s to %s", redact(url), local)
    return str(local)


def _marker(fs, root: str, url: str) -> bytes:
    path = posixpath.join(root, TRAIN_MANIFEST_FILE)
    fs.invalidate_cache(path)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise HardfocusError(f"'{redact(url)}' holds no finished training run (no {TRAIN_MANIFEST_FILE}): train it first") from None


def _download_targets(url: str, root: str, keys: list[str], into: Path) -> list[tuple[str, Path]]:
    """(key, local file) for each key under ``root``; a key that would land outside ``into`` (a ``..`` segment, an
    absolute name) is refused: object names are data, and data never chooses where a file is written."""
    base, prefix = into.resolve(), root.rstrip("/") + "/"
    targets = []
    for key in keys:
        relative = key[len(prefix):] if key.startswith(prefix) else None
        if relative is not None and (relative == "" or relative.endswith("/")):
            continue  # a directory marker: nothing to write
        target = (base / relative).resolve() if relative is not None else None
        if target is None or ".." in relative.split("/") or base not in target.parents:
            raise HardfocusError(
                f"'{url}' holds an object '{key}' whose name leads outside the model's directory: refusing to "
                "download the model; remove that object, or publish the model again"
            )
        targets.append((key, target))
    return targets
