"""The input shards an export reads must be the ones that were scored: each is found where its scores manifest says
(or under ``--input-root``, by its relative path) and compared with what the manifest recorded of it, its size and
its modification stamp, as scoring took them from the filesystem (:attr:`hardfocus.readers.shard.Shard.modified`)."""

from __future__ import annotations

import posixpath

from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.storage import canonical, file_version, fs_url, overlaps, redact


def located(url: str, rel: str, input_root: str | None) -> str:
    """Where to read a shard scored at ``url`` as ``rel``: there, or ``<input_root>/<rel>`` for a corpus that moved."""
    if input_root is None:
        return url
    fs, root = url_to_fs(input_root)
    return fs_url(fs, posixpath.join(root.rstrip("/"), rel))


def scored_roots(shards, input_root: str | None) -> list[str]:
    """The directories the shards were scored from (each URL less its relative path; ``input_root`` for a corpus that
    moved): a rescore of them would read an export written there as input."""
    if input_root is not None:
        return [input_root]
    roots = {shard.url[: -len(shard.rel) - 1] if shard.url.endswith("/" + shard.rel) else posixpath.dirname(shard.url)
             for shard in shards}
    return sorted(r for r in roots if r)


def refuse_scored_overlap(output: str, roots: list[str]) -> None:
    """An output inside a directory that was scored (or holding one) is refused: the next round of scoring of that
    directory would read the exported rows as input, and train on them twice."""
    out = canonical(output)
    for root in roots:
        if overlaps(out, canonical(root)):
            raise HardfocusError(f"the output '{redact(output)}' overlaps the scored input directory '{redact(root)}': a "
                                 "rescore of it would read the export as input; choose an --output outside it")


def check_unchanged(url: str, rel: str, size: int, modified: str | None, moved: bool) -> None:
    """Refuse, in one line naming it, a shard that is gone or is not the file that was scored: another size, or
    (unless it ``moved``: a copy has a stamp of its own) another modification stamp."""
    fs, path = url_to_fs(url)
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        hint = "check --input-root" if moved else "if the corpus moved, pass --input-root (where its shards are now)"
        raise HardfocusError(f"the input shard {redact(url)} (scored as '{rel}') is missing: {hint}") from None
    except OSError as exc:
        raise HardfocusError(f"cannot look at the input shard {redact(url)}: {' '.join(str(exc).split())}") from None
    now = int(info.get("size") or 0)
    stamp = None if moved else file_version(fs, path, info)
    if now != size or (modified is not None and stamp is not None and stamp != modified):
        what = f"size {now} bytes, scored at {size}" if now != size else f"modified since it was scored ({stamp} vs {modified})"
        raise HardfocusError(f"the input shard {redact(url)} changed since it was scored ({what}): its rows may no longer "
                             "be the ones the selection decided on; export from the inputs that were scored, or score and "
                             "select again")
