"""Read one or more scores/ directories: refuse incomplete or mismatched ones, scan them lazily."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from scoring.errors import HardfocusError
from scoring.manifest import ScoreManifest
from scoring.output import MANIFEST_FILE
from scoring.schema import check_scores_schema


@dataclass(frozen=True)
class ScoreParts:
    """The part files of the score directories, in a fixed order, with their row counts."""

    urls: list[str]
    rows: list[int]
    manifests: list[ScoreManifest]
    has_input_ids: bool

    @property
    def offsets(self) -> list[int]:
        """Global row index of each part's first row (the order of :meth:`scan`)."""
        out, total = [], 0
        for n in self.rows:
            out.append(total)
            total += n
        return out

    def sample_ids(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of these global row indices, reading only the ``sample_id`` column of their parts."""
        offsets = np.asarray(self.offsets, dtype=np.int64)
        part_of = np.searchsorted(offsets, rows, side="right") - 1
        out = np.empty(len(rows), dtype=object)
        for index in np.unique(part_of):
            where = part_of == index
            fs, path = url_to_fs(self.urls[index])
            with fs.open(path, "rb") as f:
                ids = pq.read_table(f, columns=["sample_id"])["sample_id"]
            out[where] = ids.take(pa.array(rows[where] - offsets[index])).to_numpy(zero_copy_only=False)
        return out

    def scan(self, columns: list[str]) -> pl.LazyFrame:
        """All parts as one lazy frame, with ``_row``: the global row index (part order, then row order)."""
        return pl.scan_parquet(self.urls, row_index_name="_row").select(["_row", *columns])


def open_scores(dirs: list[str]) -> ScoreParts:
    """Check each directory is a complete scores/ (manifest present) and all were scored alike."""
    urls, rows, manifests, with_ids = [], [], [], []
    for d in dirs:
        fs, path = url_to_fs(d)
        manifest_path = posixpath.join(path, MANIFEST_FILE)
        if not fs.exists(path):
            raise HardfocusError(f"scores directory '{d}' does not exist")
        if not fs.exists(manifest_path):
            raise HardfocusError(
                f"'{d}' has no {MANIFEST_FILE}: it is not a finished scores/ directory; (re)run `hardfocus score` on it"
            )
        with fs.open(manifest_path, "rb") as f:
            manifest = ScoreManifest.model_validate(json.loads(f.read()))
        parts = sorted(fs.glob(posixpath.join(path, "part-*.parquet")))
        if len(parts) != manifest.parts:
            raise HardfocusError(f"'{d}' holds {len(parts)} part files but its manifest lists {manifest.parts}")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for p in parts:
            with fs.open(p, "rb") as f:
                meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
            check_scores_schema(schema, p)
            with_ids.append("input_ids" in schema.names)
            rows.append(meta.num_rows)
            urls.append(p if protocol in ("file", "local") else f"{protocol}://{p}")
        manifests.append(manifest)
    _check_same_model(dirs, manifests)
    if sum(rows) != sum(m.rows for m in manifests):
        raise HardfocusError(f"the part files hold {sum(rows)} rows but the manifests say {sum(m.rows for m in manifests)}")
    return ScoreParts(urls, rows, manifests, has_input_ids=bool(with_ids) and all(with_ids))


def _check_same_model(dirs: list[str], manifests: list[ScoreManifest]) -> None:
    first = manifests[0]
    for d, m in zip(dirs[1:], manifests[1:]):
        for key in ("model_fingerprint", "tokenizer_fingerprint"):
            if getattr(m, key) != getattr(first, key):
                raise HardfocusError(
                    f"'{d}' was scored with a different {key.split('_')[0]} than '{dirs[0]}' "
                    f"({m.model} {getattr(m, key)} vs {first.model} {getattr(first, key)}); losses of different "
                    "models or tokenizers do not rank against each other"
                )
