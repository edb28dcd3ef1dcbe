"""Find input shards: files, directories and globs expanded into :class:`~hardfocus.readers.shard.Shard`\ s, each of
a format of the one table (:mod:`hardfocus.readers.formats`).

A shard is one Parquet, Arrow IPC (``.arrow``) or JSON Lines file (plain, ``.gz``, ``.zst``), local or any fsspec URL.
A row is a Parquet row, an Arrow row or a non-blank JSONL line; its index is stable across runs, so the
default sample id ``"<shard relative path>#<row index>"`` is stable too.

A Hugging Face ``datasets`` directory (``Dataset.save_to_disk``: ``data-*.arrow``, ``state.json``,
``dataset_info.json``; ``DatasetDict.save_to_disk``: ``dataset_dict.json`` and one such directory per split) is
an input directory like any other, except that in a directory holding ``state.json`` the shards are exactly the
data files its ``_data_files`` lists: the ``cache-*.arrow`` files ``.map()`` leaves there, and the JSON metadata,
are not data.
"""

from __future__ import annotations

import json
import logging
import posixpath

from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.readers.formats import FORMATS_TEXT, shard_format
from hardfocus.readers.shard import Shard, one_line
from hardfocus.storage import canonical, file_identity, file_version, fs_protocol, fs_url, redact

__all__ = ["find_shards"]

log = logging.getLogger(__name__)

_DATASET_STATE = "state.json"  # a datasets.save_to_disk directory's: `_data_files` names its data files
_DATASET_DICT = "dataset_dict.json"  # a DatasetDict.save_to_disk directory's: `splits` names its split directories
_DATASET_METADATA = (_DATASET_STATE, "dataset_info.json", _DATASET_DICT)  # never shards in such a directory


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def find_shards(inputs: list[str]) -> list[Shard]:
    """Expand files, directories and globs into shards, sorted by relative path.

    An input that exists is taken literally (``file[1].jsonl``, ``run[2024]/``); one that does not is a glob.
    Relative paths are taken from the directory given, or from the part of a glob before its first wildcard,
    or are the file name for a single file.
    """
    if not inputs:
        raise HardfocusError("no input given: pass one or more shard files, directories or globs")
    shards: dict[str, Shard] = {}
    for spec in inputs:
        for shard in _expand(spec):
            shards.setdefault(shard.url, shard)
    by_location: dict[str, Shard] = {}
    for shard in shards.values():  # one file by two names (a link): its rows would be scored twice
        location = file_identity(shard.url) or canonical(shard.url)
        if location in by_location:
            raise HardfocusError(redact(
                f"two inputs are the same file ({by_location[location].url} and {shard.url}, a link to it?): its rows "
                "would count twice; give each file once"
            ))
        by_location[location] = shard
    by_rel: dict[str, Shard] = {}
    for shard in shards.values():
        if shard.rel in by_rel:
            raise HardfocusError(redact(
                f"two input shards have the same relative path '{shard.rel}' ({by_rel[shard.rel].url} and "
                f"{shard.url}), so their sample ids would collide; pass their common parent directory instead"
            ))
        by_rel[shard.rel] = shard
    return sorted(by_rel.values(), key=lambda s: s.rel)


def _expand(spec: str) -> list[Shard]:
    fs, path = url_to_fs(spec)
    try:
        info = _info(fs, path)
        if info is not None and (info.get("type") == "directory" or _is_index_page(fs, path, info)):
            base = path
            listing = fs.find(path, detail=True)
            entries = _datasets_data_files(fs, spec, sorted((p, i) for p, i in listing.items() if shard_format(p) is not None))
            if not entries:
                raise HardfocusError(redact(f"directory '{spec}' holds no {FORMATS_TEXT} file"))
        elif info is not None:
            base, entries = posixpath.dirname(path), [(path, info)]
        elif has_magic(path):
            base = path[: min(i for i, c in enumerate(path) if c in "*?[")]
            base = base if base.endswith("/") else posixpath.dirname(base)
            matches = fs.glob(path, detail=True)
            entries = sorted((p, i) for p, i in matches.items() if i.get("type", "file") == "file")
            if not entries:
                raise HardfocusError(redact(f"the glob '{spec}' matches no file"))
        else:
            raise HardfocusError(redact(f"input '{spec}' does not exist"))
    except (OSError, ValueError) as exc:  # a store that refuses the listing, a malformed URL
        raise HardfocusError(redact(f"cannot list input '{spec}': {one_line(exc)}")) from None

    shards = []
    for p, i in entries:
        fmt = shard_format(p)
        if fmt is None:
            raise HardfocusError(redact(
                f"'{_url(fs, p)}' is not a shard format hardfocus reads ({FORMATS_TEXT})"
            ))
        rel = posixpath.relpath(p, base) if base else posixpath.basename(p)
        if i.get("size") is None:  # a listing without details (an HTTP index page): one request for them
            i = {**i, **_info_or_raise(fs, p, spec)}
        shards.append(Shard(url=_url(fs, p), rel=rel, format=fmt[0], compression=fmt[1], size=int(i.get("size") or 0),
                            modified=file_version(fs, p, i)))
    return shards


def _datasets_data_files(fs, spec: str, entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """``entries`` (a directory's shard-like files) less what is not data in the Hugging Face ``datasets`` directories
    among them: in a directory holding ``state.json`` (beside ``dataset_info.json`` or ``.arrow`` files), the files its
    ``_data_files`` lists, and no other file of that directory; a ``DatasetDict``'s ``dataset_dict.json``. What is
    left out is logged; a listed file that is not there is an error (an incomplete copy), never a smaller dataset."""
    by_dir: dict[str, list[str]] = {}
    for p, _ in entries:
        by_dir.setdefault(posixpath.dirname(p), []).append(posixpath.basename(p))
    datasets = {d: names for d, names in by_dir.items() if _DATASET_STATE in names
                and ("dataset_info.json" in names or any(shard_format(n) == ("arrow", None) for n in names))}
    dicts = [d for d, names in by_dir.items() if _DATASET_DICT in names]
    for d in dicts:  # a DatasetDict: each split it names must be there, whole; it is never a JSON Lines shard
        for split in _listed_splits(fs, spec, posixpath.join(d, _DATASET_DICT)):
            if posixpath.join(d, split) not in datasets:
                raise HardfocusError(redact(
                    f"'{_url(fs, d)}' (of input '{spec}') is a Hugging Face DatasetDict whose {_DATASET_DICT} lists the "
                    f"split '{split}', which is not there (no {split}/{_DATASET_STATE}): is the copy complete? Copy the "
                    "whole directory again"
                ))
    if not datasets and not dicts:
        return entries
    keep: dict[str, set[str]] = {}
    for d, names in datasets.items():
        listed = _listed_data_files(fs, spec, posixpath.join(d, _DATASET_STATE))
        missing = [n for n in listed if n not in names]
        if missing:
            raise HardfocusError(redact(
                f"'{_url(fs, d)}' (of input '{spec}') is a Hugging Face datasets directory whose {_DATASET_STATE} lists "
                f"{', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not there: is the copy complete? Copy the "
                "whole directory again"
            ))
        keep[d] = set(listed)
        left_out = [n for n in names if n not in keep[d] and n not in _DATASET_METADATA]
        if left_out:
            log.info("'%s' is a Hugging Face datasets directory: its shards are the %d data files its %s lists; left "
                     "out (not data, e.g. a .map() cache): %s", redact(_url(fs, d)), len(listed), _DATASET_STATE,
                     ", ".join(left_out))
    dataset_parents = {posixpath.dirname(d) for d in datasets}
    out = []
    for p, i in entries:
        d, name = posixpath.dirname(p), posixpath.basename(p)
        if d in keep and name not in keep[d]:
            continue
        if name == _DATASET_DICT and (d in dataset_parents or d in dicts):
            continue
        out.append((p, i))
    return out


def _listed_splits(fs, spec: str, path: str) -> list[str]:
    """The split names a DatasetDict's ``dataset_dict.json`` lists in ``splits``."""
    try:
        splits = json.loads(fs.cat_file(path))["splits"]
        if not isinstance(splits, list) or not all(isinstance(n, str) and n and "/" not in n for n in splits):
            raise ValueError("splits is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HardfocusError(redact(
            f"cannot read the splits in '{_url(fs, path)}' of input '{spec}', a Hugging Face DatasetDict: {one_line(exc)}; "
            "save the dataset again (DatasetDict.save_to_disk)"
        )) from None
    return splits


def _listed_data_files(fs, spec: str, state: str) -> list[str]:
    """The file names a datasets directory's ``state.json`` lists in ``_data_files``."""
    try:
        obj = json.loads(fs.cat_file(state))
        names = [f["filename"] for f in obj["_data_files"]]
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("a file name that is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HardfocusError(redact(
            f"cannot read the list of data files (_data_files) in '{_url(fs, state)}' of input '{spec}', a Hugging Face "
            f"datasets directory: {one_line(exc)}; save the dataset again (Dataset.save_to_disk)"
        )) from None
    return [posixpath.basename(n) for n in names]


def _info_or_raise(fs, path: str, spec: str) -> dict:
    try:
        return fs.info(path)
    except (OSError, ValueError) as exc:
        raise HardfocusError(redact(f"cannot list '{_url(fs, path)}' of input '{spec}': {one_line(exc)}")) from None


def _is_index_page(fs, path: str, info: dict) -> bool:
    """An HTTP page listing files (a server's directory index): its links are the files of the directory."""
    return _is_http(fs) and shard_format(path) is None and info.get("mimetype") == "text/html"


def _is_http(fs) -> bool:
    return fs_protocol(fs) in ("http", "https")


def _info(fs, path: str) -> dict | None:
    """What ``fs`` says about ``path`` (one request), or None when nothing is there."""
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _url(fs, path: str) -> str:
    """The URL that opens ``path`` again: fsspec's HTTP filesystem keeps the whole URL as the path."""
    return path if _is_http(fs) else fs_url(fs, path)


