"""``select --by document``: on windowed scores, keep or drop whole documents rather than windows.

``score --long-documents windows`` writes a row per window. By document, a document's score is token-weighted over
its windows (sum of ``nll_sum`` over sum of ``n_tokens``, or of ``n_bytes`` ln 2 for bits per byte): the loss of
the document read as its windows, whatever the cut, so a long document is neither favoured nor punished for having
many windows. Documents are banded (ties by document id), every eligible window of a document gets its band and
rank, and the kept windows carry the document's score, so IR-DRO gives all windows of a document one weight.

A window counts when its status is ok and its loss finite. A ``too_short`` window (nothing to score, e.g. a
one-token tail) is excluded as a row but leaves its document whole; any other unscored window (an error, a
non-finite loss, ``empty``) excludes its document, its scored windows counted under :data:`SIBLING`. Every count
is of windows, so eligible + excluded == rows, as by window. Windows are read part by part; what stays is 12
bytes an eligible window (row, loss, document index) and a row per document.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from hardfocus.contracts.scores import DOCUMENT_ID, SCORES_SCHEMA, Status
from hardfocus.errors import HardfocusError
from hardfocus.storage import prefetched, redact
from selection.bands import NO_GROUP, rank_bands
from selection.config import SelectConfig
from selection.excluded import excluded_rows, merge_excluded, status_reason
from selection.score_terms import BITS_PER_BYTE, NATS, SCORE_COLUMN, bpb, check_same_inputs, require_column
from selection.scores import ScoreParts, open_scores

SIBLING = "another window of its document is not scored"
NEEDS_BYTES = "score it again with this version of hardfocus (bytes are what tokenizers share)"


@dataclass(frozen=True)
class Documents:
    """The documents of some score parts: ``docs`` (``_doc``, ``document_id``, ``group``, sums over the eligible
    windows, ``windows``: their count, ``bad``: a window not scored), ``windows`` (``_row``, ``loss``, ``_doc`` of
    each eligible window) and the windows excluded, with their reason (:mod:`selection.excluded`)."""

    docs: pl.DataFrame
    windows: pl.DataFrame
    excluded: pl.DataFrame


def read_documents(parts: ScoreParts, sums: tuple[str, ...], id_column: str = DOCUMENT_ID,
                   with_truncated: bool = False) -> Documents:
    """Aggregate the windows of ``parts`` per document (``id_column``: ``sample_id`` for truncated scores, a
    document per row). Sums are partial per part and added up after, so no layout of parts is assumed."""
    columns = [id_column, "group", "status", "loss", *sums, *(["truncated"] if with_truncated else [])]
    partials, windows, excluded, seen = [], [], [], 0
    tables = prefetched(lambda index: parts.read_part(index, columns), range(len(parts.urls)))
    if not parts.urls:  # nothing scored: the frames below, empty but typed
        tables = [SCORES_SCHEMA.empty_table().select(columns)]
    for offset, table in zip(parts.offsets or [0], tables):
        frame = pl.from_arrow(table).rename({id_column: "document_id"}).with_row_index("_row", offset=offset)
        ok = (pl.col("status") == Status.OK.value) & pl.col("loss").is_finite().fill_null(False)
        frame = frame.with_columns(_ok=ok, _bad=~ok & (pl.col("status") != Status.TOO_SHORT.value))
        excluded.append(excluded_rows(frame.filter(~pl.col("_ok")), status_reason()))
        part_docs = frame.group_by("document_id", maintain_order=True).agg(
            pl.col("group").first().fill_null(NO_GROUP),
            *(pl.col(c).filter(_counted(c)).cast(pl.Float64 if c == "nll_sum" else pl.Int64).sum() for c in sums),
            windows=pl.col("_ok").sum().cast(pl.Int64), bad=pl.col("_bad").any(),
            **({"truncated": pl.col("truncated").any()} if with_truncated else {}),
        ).with_row_index("_part", offset=seen)
        seen += part_docs.height
        eligible = frame.filter(pl.col("_ok")).join(part_docs.select("document_id", "_part"), on="document_id",
                                                    maintain_order="left")
        windows.append(eligible.select("_row", "loss", "_part"))
        partials.append(part_docs)
    partial = pl.concat(partials)
    docs = partial.group_by("document_id").agg(
        pl.col("group").first(), *(pl.col(c).sum() for c in (*sums, "windows")), pl.col("bad").any(),
        *([pl.col("truncated").any()] if with_truncated else []),
    ).sort("document_id").with_row_index("_doc")
    doc_of = partial.join(docs.select("document_id", "_doc"), on="document_id", maintain_order="left")["_doc"]
    window = pl.concat(windows)
    window = window.with_columns(_doc=pl.Series(doc_of.to_numpy()[window["_part"].to_numpy()], dtype=pl.UInt32))
    return Documents(docs, window.drop("_part"), merge_excluded(*excluded))


def _counted(column: str) -> pl.Expr:
    """The windows a document's sum of ``column`` is over: the scored ones; for bytes also a ``too_short`` one-token
    tail, whose text is the document's too (so a document's bytes are its UTF-8 size, whatever the tokenizer)."""
    return ~pl.col("_bad") if column == "n_bytes" else pl.col("_ok")


def check_by_document(parts: ScoreParts, cfg: SelectConfig, reference: ScoreParts | None = None) -> None:
    """Refuse ``--by document`` where it means nothing (or would merge two documents), before an output is begun."""
    if cfg.score == "ifd":
        raise HardfocusError("score ifd cannot rank by document: IFD is for conversations, windows are plain text")
    for dirs, p in ((cfg.scores, parts), (cfg.reference, reference)):
        if p is not None and any(m.duplicate_ids for m in p.manifests):
            raise HardfocusError(
                f"{', '.join(map(redact, dirs))} hold duplicate sample ids (see their manifests): --by document sums "
                "the windows of each document id, which must be unique; give each document a unique --id-column value"
            )
    if any(m.long_documents != "windows" for m in parts.manifests):
        raise HardfocusError(
            f"--by document ranks the documents of windowed scores, and {', '.join(map(redact, cfg.scores))} were "
            "scored with --long-documents truncate (a row per document already): select --by window, or score with "
            "--long-documents windows"
        )


def document_scores(parts: ScoreParts, cfg: SelectConfig, reference: ScoreParts | None = None
                    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, str]:
    """(the windows excluded, with their reason, the eligible windows: ``_row``, ``loss``, ``_doc``, ``group``,
    ``score``, the eligible documents: ``_doc``, ``document_id``, ``group``, ``score``, the score's units).
    A document left out leaves out its eligible windows, each with the document's reason."""
    if cfg.score == "excess" and reference is None:  # else the caller's, opened already
        reference = open_scores(cfg.reference)
    check_by_document(parts, cfg, reference)
    same_tokens = reference is None or parts.manifests[0].tokenizer_fingerprint == reference.manifests[0].tokenizer_fingerprint
    with_bytes = cfg.score == "bpb" or not same_tokens
    if with_bytes:
        require_column(parts, cfg.scores, "n_bytes", NEEDS_BYTES)
    sums = ("nll_sum", "n_tokens", *(("n_bytes",) if with_bytes else ()))
    found = read_documents(parts, sums)
    docs = found.docs.filter(pl.col("windows") > 0)
    left_out = [docs.filter(pl.col("bad")).select("_doc", reason=pl.lit(SIBLING))]
    docs = docs.filter(~pl.col("bad"))
    if reference is not None:
        docs, unmatched, score = _excess(parts, reference, cfg, docs, same_tokens)
        left_out.append(unmatched)
    else:
        score = (pl.col("nll_sum") / pl.col("n_tokens")) if cfg.score == "loss" else bpb("nll_sum", "n_bytes")
    docs = docs.with_columns(score.cast(pl.Float32).alias(SCORE_COLUMN))
    finite = pl.col(SCORE_COLUMN).is_finite().fill_null(False)
    left_out.append(docs.filter(~finite).select("_doc", reason=pl.lit(f"{cfg.score} not finite")))
    groups = pl.Enum(sorted(docs["group"].unique().to_list()))
    docs = docs.filter(finite).select("_doc", "document_id", pl.col("group").cast(groups), SCORE_COLUMN)
    windows = found.windows.join(docs.select("_doc", "group", SCORE_COLUMN), on="_doc").sort("_row")
    their_windows = found.windows.join(pl.concat(left_out), on="_doc")
    units = BITS_PER_BYTE if cfg.score == "bpb" or not same_tokens else NATS
    return merge_excluded(found.excluded, excluded_rows(their_windows, pl.col("reason"))), windows, docs, units


def _excess(parts: ScoreParts, reference: ScoreParts, cfg: SelectConfig, docs: pl.DataFrame, same_tokens: bool
            ) -> tuple[pl.DataFrame, pl.DataFrame, pl.Expr]:
    """``docs`` joined on ``document_id`` with the reference's documents (a truncated reference: a row each) that
    it scored alike, the documents left out (``_doc``, ``reason``), and the excess score: nats per token with one
    tokenizer, else bits per byte."""
    check_same_inputs(parts, reference, cfg, documents=True)
    if not same_tokens:
        require_column(reference, cfg.reference, "n_bytes", NEEDS_BYTES)
    sums = ("nll_sum", "n_tokens") if same_tokens else ("nll_sum", "n_bytes")
    id_column = DOCUMENT_ID if DOCUMENT_ID in reference.common_columns else "sample_id"
    ref = read_documents(reference, sums, id_column, with_truncated=True).docs.select(
        "document_id", *(pl.col(c).alias(f"ref_{c}") for c in (*sums, "bad", "truncated")), _found=pl.lit(True))
    joined = docs.join(ref, on="document_id", how="left", maintain_order="left")
    found, bad = pl.col("_found").fill_null(False), pl.col("ref_bad").fill_null(False)
    # one tokenizer: each side's mean over the tokens it scored (other windows leave a few first tokens of a window
    # unscored on one side); another: the same bytes, which only a reference that read the whole document has
    differ = pl.lit(False) if same_tokens else pl.col("n_bytes") != pl.col("ref_n_bytes")
    reason = (pl.when(~found).then(pl.lit("reference: no document with this document_id"))
              .when(bad).then(pl.lit("reference: a window of its document is not scored"))
              .when(pl.col("ref_truncated").fill_null(False)).then(pl.lit("reference: truncated the document (scored its prefix only)"))
              .when(differ).then(pl.lit("reference scored other bytes")))
    joined = joined.with_columns(reason=reason)
    if same_tokens:
        score = pl.col("nll_sum") / pl.col("n_tokens") - pl.col("ref_nll_sum") / pl.col("ref_n_tokens")
    else:
        score = bpb("nll_sum", "n_bytes").cast(pl.Float64) - bpb("ref_nll_sum", "ref_n_bytes").cast(pl.Float64)
    left_out = joined.filter(pl.col("reason").is_not_null()).select("_doc", "reason")
    return joined.filter(pl.col("reason").is_null()).drop("reason"), left_out, score


def rank_documents(parts: ScoreParts, cfg: SelectConfig, reference: ScoreParts | None = None
                   ) -> tuple[dict[str, int], pl.DataFrame, str, dict[str, int]]:
    """(the windows excluded, with their reason, the eligible windows with their document's ``score``, ``loss_rank`` and
    ``band``, the units, documents per band)."""
    excluded, windows, docs, units = document_scores(parts, cfg, reference)
    ids = docs["document_id"].to_numpy()
    frame = docs.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "group", SCORE_COLUMN)
    ranked_docs = rank_bands(frame, cfg.drop_top, cfg.keep, cfg.per_group, lambda rows: ids[rows], SCORE_COLUMN)
    ranked_docs = ranked_docs.with_columns(docs["_doc"])
    ranked = windows.join(ranked_docs.select("_doc", "loss_rank", "band"), on="_doc").sort("_row").drop("_doc")
    documents = {"scored": scored_documents(parts), "eligible": docs.height,
                 **{str(b): int(n) for b, n in ranked_docs.group_by("band").len().sort("band").iter_rows()}}
    return excluded, ranked, units, documents


def scored_documents(parts: ScoreParts) -> int:
    return sum(m.rows if m.documents is None else m.documents for m in parts.manifests)


def documents_per_band(parts: ScoreParts, ranked: pl.DataFrame) -> dict[str, int]:
    """By window on windowed scores: the documents with an eligible window, and with a window in each band (a
    document's windows may fall in several bands, so these overlap)."""
    ranked = ranked if ranked["_row"].is_sorted() else ranked.sort("_row")
    rows, bands = ranked["_row"].to_numpy(), ranked["band"]
    offsets = np.asarray(parts.offsets + [sum(parts.rows)], dtype=np.int64)
    bounds = np.searchsorted(rows, offsets)
    pairs = []
    tables = prefetched(lambda index: parts.read_part(index, [DOCUMENT_ID]), range(len(parts.urls)))
    for index, table in enumerate(tables):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        ids = pl.from_arrow(table[DOCUMENT_ID]).gather(pl.Series(rows[lo:hi] - offsets[index]))
        pairs.append(pl.DataFrame({"document_id": ids, "band": bands[lo:hi]}).unique())
    both = pl.concat(pairs).unique() if pairs else pl.DataFrame(schema={"document_id": pl.String, "band": bands.dtype})
    return {"scored": scored_documents(parts), "eligible": both["document_id"].n_unique(),
            **{str(b): int(n) for b, n in both.group_by("band").len().sort("band").iter_rows()}}
