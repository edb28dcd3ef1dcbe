"""Raw text shards as training data: tokenised once into the cache (``tokenized/<identity>``), a stage directory of
their own, for an ERM baseline on data that was never scored.

The shards are read and tokenised by the foundation's readers and tokeniser, the ones scoring uses, so a raw shard
trains on the same token ids, with the same statuses, as its scores/ would hold. The entry's part is stamped
(:mod:`hardfocus.parts`) with the digest of the entry's identity."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hardfocus.cache import cache_dir
from hardfocus.chat import check_chat_tokenizer, load_chat_template, template_sha256
from hardfocus.contracts.scores import Status, loss_spans_array
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest, tokenizer_fingerprint
from hardfocus.kinds import TOKENS
from hardfocus.parts import stamped
from hardfocus.readers import find_shards, read_shard
from hardfocus.sample_format import Columns
from hardfocus.stagedir import Opening, StageDir
from hardfocus.storage import canonical, file_identity, redact
from hardfocus.tokenize import tokenize_block
from hardfocus.tokenizers import load_tokenizer
from training.config import TrainConfig
from training.sources import open_source

log = logging.getLogger(__name__)


def as_token_dir(path: str, cfg: TrainConfig, model_path: str, role: str) -> str:
    """Raw text shards tokenised once into the cache (:func:`training.sources.find_sources` calls it for a path that is
    no stage's output): keyed by the shards as listed (where each is, its size and modification stamp), the tokenizer
    and the settings, so other shards, changed ones or another tokenizer are tokenised again, and a finished entry is
    reused."""
    tokenizer = load_tokenizer(model_path)
    template = load_chat_template(cfg.chat_template)
    identity = {"parts": 1, "shards": [[s.url, s.size, s.modified] for s in find_shards([path])],
                "group_column": cfg.group_column, "tokenizer": tokenizer_fingerprint(tokenizer),
                "max_tokens": cfg.max_seq_len, **_format_identity(cfg, template, tokenizer)}
    out = StageDir(str(cache_dir() / "tokenized" / digest(identity)), TOKENS)
    with out.locked(wait=True):  # a shared cache entry: runs that need it wait for whichever makes it, never refuse
        if out.open(identity, overwrite=True, inputs=[path]) is Opening.COMPLETE:
            try:
                open_source(out.url)  # whole: its part's stamp and rows as tokenized.json counts them
                return out.url
            except HardfocusError as exc:
                log.warning("the tokenisation cache entry %s is damaged (%s): tokenising again", out.url, exc)
        if cfg.format != "text":
            check_chat_tokenizer(tokenizer, template)
        log.info("tokenising %s (%s) into %s", redact(path), role, out.url)
        with out.staged(identity) as stage:
            tokenize_shards(path, stage, identity, tokenizer, cfg.columns(None, cfg.group_column), cfg.max_seq_len,
                            template)
    return out.url


def _format_identity(cfg: TrainConfig, template: str | None, tokenizer) -> dict:
    """The sample format's keys (only text_column for plain text), with the chat template as its text's digest: a
    template file edited in place renders other token ids."""
    if cfg.format == "text":
        return {"text_column": cfg.text_column}
    return cfg.sample_format() | {"chat_template": template_sha256(template, tokenizer)}


def tokenize_shards(inputs: str, out: StageDir, identity: dict, tokenizer, columns: Columns, max_tokens: int,
                    chat_template: str | None = None) -> None:
    """Every row of the shards tokenised (conversations with their loss spans) into one part; rows with a status
    other than ok are counted in tokenized.json, written last."""
    tables, counts, files = [], {}, []
    for shard in find_shards([inputs]):
        files.append([canonical(shard.url), file_identity(shard.url), shard.rel])
        block = read_shard(shard, columns)
        tok = tokenize_block(tokenizer, block, columns.format, max_tokens, chat_template=chat_template)
        for s in tok.status:
            counts[s or Status.OK.value] = counts.get(s or Status.OK.value, 0) + 1
        ok = [i for i, s in enumerate(tok.status) if s is None]
        tables.append(
            pa.table(
                {
                    "sample_id": pa.array([block.ids[i] or f"{shard.rel}#{i}" for i in ok], pa.string()),
                    "group": pa.array([block.groups[i] for i in ok], pa.string()),
                    "weight": pa.array(np.ones(len(ok), np.float32)),
                    "input_ids": pa.array([tok.input_ids[i] for i in ok], pa.list_(pa.int32())),
                    **({} if tok.targets is None else
                       {"loss_spans": loss_spans_array(tok.targets[i] for i in ok)}),
                }
            )
        )
    if not tables:
        raise HardfocusError(f"no shards found in '{redact(inputs)}'")
    table = stamped(pa.concat_tables(tables), "tokens", digest(identity), {"index": 0})
    out.commit("part-00000.parquet", lambda f: pq.write_table(table, f))
    out.mark({"identity": identity, "rows_per_status": counts, "parts": 1, "rows": table.num_rows,
              "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "inputs": files})
    if set(counts) - {Status.OK.value}:
        log.warning("%s: rows not trained on, by status: %s", redact(inputs),
                    {k: v for k, v in counts.items() if k != "ok"})
