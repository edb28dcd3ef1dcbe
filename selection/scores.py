"""Read one or more scores/ directories: refuse incomplete or mismatched ones, load what ranking needs."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from hardfocus.contracts.scores import (
    OPTIONAL_COLUMNS,
    SCORES_SCHEMA,
    ScoreManifest,
    check_scores_schema,
    open_scores_dir,
    refuse_shared_shards,
)
from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected, read_footer, read_part
from hardfocus.stagedir import refuse_repeated
from hardfocus.storage import prefetched, redact
from selection.bands import NO_GROUP
from selection.excluded import excluded_rows, merge_excluded, status_reason


@dataclass(frozen=True)
class ScoreParts:
    """The part files of the score directories, in a fixed order, with their row counts."""

    urls: list[str]
    rows: list[int]
    manifests: list[ScoreManifest]
    has_input_ids: bool
    expected: list[Expected]  # per part: what the verified reader checks it against (hardfocus.parts)
    part_has_loss_spans: list[bool] | None = None  # per part; None = no part has the column (plain text)
    common_columns: frozenset[str] = frozenset()  # optional columns (n_bytes, ifd, ...) that every part has

    @property
    def has_loss_spans(self) -> bool:
        """Whether the selected/ parts carry ``loss_spans`` (null for rows of parts without the column)."""
        return any(self.part_has_loss_spans or ())

    @property
    def offsets(self) -> list[int]:
        """Global row index of each part's first row (parts in order, then rows in order)."""
        out, total = [], 0
        for n in self.rows:
            out.append(total)
            total += n
        return out

    def read_part(self, index: int, columns: list[str]) -> pa.Table:
        """Some columns of one part file, through the verified reader: its stamp, rows and the digest of each column
        read checked; a part that fails is named, with how to repair it."""
        return read_part(self.urls[index], self.expected[index], columns)

    def sample_ids(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of these global row indices, reading only the ``sample_id`` column of their parts."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        part_of = np.searchsorted(offsets, rows, side="right") - 1
        out = np.empty(len(rows), dtype=object)
        for index in np.unique(part_of):
            where = part_of == index
            ids = self.read_part(index, ["sample_id"])["sample_id"]
            out[where] = ids.take(pa.array(rows[where] - offsets[index])).to_numpy(zero_copy_only=False)
        return out

    def eligible(self, extra: tuple[str, ...] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The rows excluded (``_row``, ``reason``: :mod:`selection.excluded`), and the eligible rows as ``_row``
        (global index), ``group`` (Enum), ``loss`` and the ``extra`` columns (what a score other than the loss is
        computed from).

        A row is eligible when its status is ``ok`` and its loss finite. Read part by part into
        preallocated arrays: 12 bytes per eligible row, whatever the number of parts (plus the extras).
        """
        total = sum(self.rows)
        loss = np.empty(total, dtype=np.float32)
        rows = np.empty(total, dtype=np.uint32 if total < 2**32 else np.uint64)
        codes = np.empty(total, dtype=np.uint32)
        group_code: dict[str, int] = {}
        excluded: list[pl.DataFrame] = []
        filled = 0
        extras: dict[str, list[pa.Array]] = {name: [] for name in extra}
        columns = ["group", "loss", "status", *extra]
        tables = prefetched(lambda index: self.read_part(index, columns), range(len(self.urls)))
        for offset, table in zip(self.offsets, tables):
            part_loss = table["loss"].to_numpy(zero_copy_only=False).astype(np.float32)  # null -> NaN
            ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False) & np.isfinite(part_loss)
            if len(bad := np.flatnonzero(~ok)):
                status = pl.from_arrow(table["status"].take(pa.array(bad))).alias("status")
                excluded.append(excluded_rows(pl.DataFrame({"_row": offset + bad, "status": status}), status_reason()))
            keep = np.flatnonzero(ok)
            for name in extra:
                extras[name].append(table[name].take(pa.array(keep)))
            end = filled + len(keep)
            loss[filled:end] = part_loss[keep]
            rows[filled:end] = offset + keep
            encoded = table["group"].fill_null(NO_GROUP).combine_chunks().dictionary_encode()
            to_global = np.array([group_code.setdefault(g, len(group_code)) for g in encoded.dictionary.to_pylist()], np.uint32)
            codes[filled:end] = to_global[encoded.indices.to_numpy(zero_copy_only=False)[keep]]
            filled = end
        names = pl.Series(list(group_code), dtype=pl.String)
        enum = pl.Enum(names.to_list())
        frame = pl.DataFrame({"_row": rows[:filled], "group": names.cast(enum).gather(codes[:filled]), "loss": loss[:filled]})
        if extra:
            frame = frame.with_columns(
                pl.from_arrow(pa.chunked_array(chunks, type=SCORES_SCHEMA.field(name).type)).alias(name)
                for name, chunks in extras.items()
            )
        return merge_excluded(*excluded), frame


def open_scores(dirs: list[str]) -> ScoreParts:
    """Check each directory is a complete scores/ (manifest present, every part whole) and all were scored alike."""
    refuse_repeated(dirs, "scores directory")
    urls, rows, manifests, with_ids, with_spans, expected = [], [], [], [], [], []
    common = set(OPTIONAL_COLUMNS)
    for d in dirs:
        opened = open_scores_dir(d)
        dir_spans = []
        for (url, want), (meta, _) in zip(opened.parts, prefetched(lambda item: read_footer(*item), opened.parts)):
            expected.append(want)
            schema = meta.schema.to_arrow_schema()
            check_scores_schema(schema, redact(url))
            with_ids.append("input_ids" in schema.names)
            common &= set(schema.names)
            dir_spans.append("loss_spans" in schema.names)
            rows.append(meta.num_rows)
            urls.append(url)
        _check_spans_alike(d, [url for url, _ in opened.parts], dir_spans)
        with_spans.extend(dir_spans)
        manifests.append(opened.manifest)
    check_scored_alike(dirs, manifests)
    refuse_shared_shards(dirs, manifests)
    if sum(rows) != sum(m.rows for m in manifests):
        raise HardfocusError(f"the part files hold {sum(rows)} rows but the manifests say {sum(m.rows for m in manifests)}")
    parts = ScoreParts(
        urls, rows, manifests, has_input_ids=bool(with_ids) and all(with_ids), expected=expected,
        part_has_loss_spans=with_spans if any(with_spans) else None, common_columns=frozenset(common),
    )
    _check_unique_ids(dirs, parts)
    return parts



def _check_unique_ids(dirs: list[str], parts: ScoreParts) -> None:
    """Sample ids must be unique across the directories of one selection: ranks, joins and exports go by them.

    Default ids (``<shard>#<row>``) collide exactly when two directories scored shards of the same relative path,
    which their manifests say; ids from an id column are read (the ``sample_id`` column of every part).
    """
    if len(dirs) < 2:
        return
    owner: dict[str, str] = {}
    for d, m in zip(dirs, parts.manifests):
        if m.id_column is None:
            for shard in m.shards:
                if shard.rel in owner:
                    raise HardfocusError(
                        f"'{redact(owner[shard.rel])}' and '{redact(d)}' both scored a shard '{shard.rel}', so their default "
                        f"sample ids ('{shard.rel}#<row>') collide: score both inputs into one scores/ directory (their "
                        "common parent as the input), or score with an --id-column of unique ids"
                    )
                owner[shard.rel] = d
    if all(m.id_column is None for m in parts.manifests):
        return
    tables = prefetched(lambda index: parts.read_part(index, ["sample_id"]), range(len(parts.urls)))
    ids = pl.from_arrow(pa.concat_tables(tables)).group_by("sample_id").agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    ids = ids.sort("sample_id").head(3)
    if ids.height:
        raise HardfocusError(
            f"sample ids repeat across {', '.join(redact(d) for d in dirs)} (e.g. {', '.join(ids['sample_id'].to_list())}): "
            "ids must be unique across the directories of one selection; give each sample a unique id"
        )


def _check_spans_alike(d: str, parts: list[str], with_spans: list[bool]) -> None:
    """One scoring run writes ``loss_spans`` in every part or in none: a mix means parts of different runs."""
    if any(with_spans) and not all(with_spans):
        have = [posixpath.basename(p) for p, w in zip(parts, with_spans) if w]
        lack = [posixpath.basename(p) for p, w in zip(parts, with_spans) if not w]
        raise HardfocusError(
            f"'{redact(d)}' mixes part files with a loss_spans column ({', '.join(have[:3])}{', ...' if len(have) > 3 else ''}) "
            f"and without one ({', '.join(lack[:3])}{', ...' if len(lack) > 3 else ''}): they were not written by one "
            "scoring run of one input format; rescore the directory"
        )


# what two scores/ directories must share for their scores to rank against each other
ALIKE_KEYS = ("model_fingerprint", "tokenizer_fingerprint", "max_tokens", "dtype", "format", "add_special_tokens",
              "chat_template_sha256", "long_documents", "window_context")


def check_scored_alike(dirs: list[str], manifests: list[ScoreManifest]) -> None:
    """Losses of different models, tokenizers, truncations, dtypes or formats do not rank against each other."""
    first = manifests[0]
    for d, m in zip(dirs[1:], manifests[1:]):
        if key := differing_key(m, first, ALIKE_KEYS):
            raise HardfocusError(
                f"'{redact(d)}' was scored with another {key} than '{redact(dirs[0])}' ({getattr(m, key)!r} vs "
                f"{getattr(first, key)!r}; models {m.model} and {first.model}): scores of different settings do "
                "not rank against each other; score both alike"
            )


def differing_key(a: ScoreManifest, b: ScoreManifest, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` whose value differs between two manifests, or None."""
    return next((key for key in keys if getattr(a, key) != getattr(b, key)), None)
