"""A unit's rows as the Arrow table the scorer reads: tokenised once on the reading side, one row per input row
(``--long-documents truncate``) or per window of it (``windows``, :mod:`scoring.windows`), with a status where a row
cannot be scored; and that table as bytes, as a record carries it through Ray Data."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from hardfocus.contracts.scores import (
    DOCUMENT_ID,
    LOSS_SPANS_TYPE,
    SOURCE_DIGEST,
    WINDOW,
    WINDOWS,
    is_input_error,
    loss_spans_array,
)
from hardfocus.errors import HardfocusError
from hardfocus.readers import RowBlock, Shard
from hardfocus.readers.shard import sample_digest
from hardfocus.storage import redact
from hardfocus.tokenize import tokenize_block
from scoring.config import ScoreConfig
from scoring.ifd import IFD_TURNS_COLUMN, ifd_turns_array
from scoring.windows import special_layout, window_texts


def tokenize_unit(shard: Shard, start: int, block: RowBlock, cfg: ScoreConfig, tokenizer) -> pa.Table:
    """A unit's rows tokenised: one row per input row (or per window of it), with a status where unscoreable."""
    if cfg.long_documents == "windows":
        return tokenize_windows(shard, start, block, cfg, tokenizer)
    tok = tokenize_block(tokenizer, block, cfg.format, cfg.max_tokens, cfg.add_special_tokens, cfg.chat_template,
                         cfg.ifd)
    rows = np.arange(start, start + len(block), dtype=np.int64)
    _stop_at_input_errors(shard, rows, tok.status, cfg)
    sample_ids = [i if i is not None else f"{shard.rel}#{r}" for i, r in zip(block.ids, rows)]
    return pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "shard": pa.array([shard.rel] * len(rows), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "group": pa.array(block.groups, pa.string()),
            "truncated": pa.array(tok.truncated, pa.bool_()),
            "status": pa.array(tok.status, pa.string()),
            "input_ids": pa.array(tok.input_ids, pa.list_(pa.int32())),
            "n_bytes": pa.array(tok.n_bytes, pa.int64()),
            SOURCE_DIGEST: source_digests(block),
            **({} if tok.targets is None else {"loss_spans": loss_spans_array(tok.targets)}),
            **({} if tok.ifd_turns is None else {IFD_TURNS_COLUMN: ifd_turns_array(tok.ifd_turns)}),
        }
    )


def _stop_at_input_errors(shard: Shard, rows, statuses: list[str | None], cfg: ScoreConfig) -> None:
    """``--on-error stop``: the first row that could not be read as text stops the job, named."""
    if cfg.on_error != "stop":
        return
    for row, status in zip(rows, statuses):
        if status is not None and is_input_error(status):
            raise HardfocusError(redact(
                f"{shard.url} row {row}: {status}; fix the input, or pass --on-error record to score the "
                "other rows and record this one's status"
            ))


def tokenize_windows(shard: Shard, start: int, block: RowBlock, cfg: ScoreConfig, tokenizer) -> pa.Table:
    """A unit's texts cut into windows (:mod:`scoring.windows`): one row per window, ``sample_id`` '<id>#w<k>'."""
    w = window_texts(tokenizer, block.values, block.status, cfg.max_tokens, cfg.window_context, cfg.add_special_tokens)
    doc = np.asarray(w.doc, dtype=np.int64)
    _stop_at_input_errors(shard, start + doc, w.status, cfg)
    ids = [i if i is not None else f"{shard.rel}#{start + r}" for r, i in enumerate(block.ids)]
    document_ids = pa.array(ids, pa.string()).take(pa.array(doc))
    columns = {
        "sample_id": pa.array([f"{ids[d]}#w{k}" for d, k in zip(w.doc, w.window)], pa.string()),
        "shard": pa.array([shard.rel] * len(doc), pa.string()),
        "row": pa.array(start + doc, pa.int64()),
        "group": pa.array(block.groups, pa.string()).take(pa.array(doc)),
        "truncated": pa.array(np.zeros(len(doc), dtype=bool)),
        "status": pa.array(w.status, pa.string()),
        "input_ids": pa.array(w.input_ids, pa.list_(pa.int32())),
        "n_bytes": pa.array(w.n_bytes, pa.int64()),
        SOURCE_DIGEST: source_digests(block).take(pa.array(doc)),
        DOCUMENT_ID: document_ids,
        WINDOW: pa.array(w.window, pa.int32()),
        WINDOWS: pa.array(w.windows, pa.int32()),
        "prefix_tokens": pa.array(w.prefix_tokens, pa.int32()),
        "char_start": pa.array(w.char_start, pa.int64()),
        "char_stop": pa.array(w.char_stop, pa.int64()),
    }
    if windows_need_spans(cfg, tokenizer):  # targets other than "every token but the first": the window's own
        columns["loss_spans"] = pa.array(
            [None if lead <= 1 else [{"start": lead, "stop": len(seq)}] for lead, seq in zip(w.prefix_tokens, w.input_ids)],
            LOSS_SPANS_TYPE,
        )
    return pa.table(columns)


def source_digests(block: RowBlock) -> pa.Array:
    """Each row's ``source_digest``: its sample's digest, null where it could not be read (export checks each
    exported row's source against it)."""
    return pa.array([None if status is not None else sample_digest(value) for value, status in zip(block.values, block.status)],
                    pa.uint64())


def windows_need_spans(cfg: ScoreConfig, tokenizer) -> bool:
    """Whether windows' parts carry ``loss_spans``: where a window reads more than one token before its own (a
    context, or several leading special tokens), as every part of one job must, or none."""
    return cfg.window_context > 0 or len(special_layout(tokenizer, cfg.add_special_tokens)[0]) > 1


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()
