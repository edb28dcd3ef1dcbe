"""The scoring-speed benchmark's arms: each computes per-document loss its own way and times it.

(a) the fp32 one-document reference, (b) padded batches of a fixed size, (plain) the loop a user would write,
(c1)/(c1c) hardfocus's ``Scorer`` in-process, eager and compiled, (c2) the whole ``scoring.score`` call through
Ray. Each returns an :class:`ArmResult`; the benchmark (``scoring_speed``) runs them and compares.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from benchmarks.harness import timed, timed_with_load
from benchmarks.speed_corpus import Doc
from benchmarks.speed_profile import forward_shapes, profile_scorer

log = logging.getLogger("scoring_speed")

MODEL_SPEC = "smollm2-135m"
PADDED_BATCH_SIZE = 8
# the plain loop's batches: full (B, T, 49,152) logits in bf16 plus their fp32 copy, about 2.4 GB at 8,192 tokens
PLAIN_TOKEN_BUDGET = 8192


@dataclass
class ArmResult:
    """What one approach did: per-document NLL sums over ``indices`` of the corpus, and how long it took."""

    key: str
    title: str
    indices: list[int]
    nll_sum: np.ndarray  # float64, one per index
    n_tokens: np.ndarray  # int64, predicted positions per index
    seconds: float
    setup_s: float | None = None  # load (and compile) time, excluded from seconds (None: included in it)
    other_load: float | None = None  # CPU-seconds per second other processes used while ``seconds`` ran
    positions: int | None = None  # forward positions computed, padding included (None: not known)
    extra: dict = field(default_factory=dict)

    @property
    def scored_tokens(self) -> int:
        return int(self.n_tokens.sum())

    @property
    def tokens_per_s(self) -> float:
        return self.scored_tokens / self.seconds

    @property
    def mean_loss(self) -> np.ndarray:
        return self.nll_sum / np.maximum(self.n_tokens, 1)


def inductor_cache() -> dict:
    """Where torch.compile keeps its compiled kernels, and whether anything is there yet (a warm cache
    makes compiling much faster)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        path = Path(cache_dir())
    except Exception:  # a private torch API: tolerate its moving
        return {"path": None, "warm": None}
    return {"path": str(path), "warm": path.is_dir() and any(path.iterdir())}



def load_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def count_params(model: torch.nn.Module) -> int:
    """Parameters, shared (tied) tensors counted once: ``parameters()`` yields each tensor once."""
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def reference_nll(model: torch.nn.Module, ids: np.ndarray) -> float:
    """The model's own mean loss of one unpadded document, times its predicted positions."""
    t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(0)
    return float(model(input_ids=t, labels=t).loss) * (len(ids) - 1)


def run_reference(path: str, docs: list[Doc], indices: list[int]) -> ArmResult:
    model, load_s = timed(lambda: load_model(path, torch.float32))
    reference_nll(model, docs[indices[0]].ids)  # warm-up
    log.info("(a) reference: %d docs one at a time, fp32", len(indices))
    sums, seconds, other = timed_with_load(lambda: [reference_nll(model, docs[i].ids) for i in indices])
    n_tokens = np.array([len(docs[i].ids) - 1 for i in indices], dtype=np.int64)
    return ArmResult(
        key="a", title="(a) reference: 1 doc at a time, fp32, model(labels=ids).loss",
        indices=indices, nll_sum=np.array(sums, dtype=np.float64), n_tokens=n_tokens, seconds=seconds,
        setup_s=load_s, other_load=other, positions=int(sum(len(docs[i].ids) for i in indices)),
    )


@torch.inference_mode()
def padded_batch_nll(model: torch.nn.Module, batch: list[np.ndarray], pad_id: int) -> np.ndarray:
    """Right-pad, full (B, T, V) logits in the model's dtype, fp32 cross entropy, masked sum per row."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        mask[row, : len(seq)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (nll.view(len(batch), width - 1) * mask[:, 1:]).sum(dim=1, dtype=torch.float64).numpy()


def run_padded(path: str, docs: list[Doc], pad_id: int, batch_size: int) -> ArmResult:
    model, load_s = timed(lambda: load_model(path, torch.bfloat16))
    batches = [list(range(i, min(i + batch_size, len(docs)))) for i in range(0, len(docs), batch_size)]
    padded_batch_nll(model, [docs[i].ids for i in batches[0]], pad_id)  # warm-up
    log.info("(b) padded batches: %d batches of %d in input order, bf16", len(batches), batch_size)

    def score_all() -> np.ndarray:
        return np.concatenate([padded_batch_nll(model, [docs[i].ids for i in b], pad_id) for b in batches])

    sums, seconds, other = timed_with_load(score_all)
    return ArmResult(
        key="b", title=f"(b) padded batches of {batch_size}, bf16, full logits",
        indices=list(range(len(docs))), nll_sum=sums, n_tokens=np.array([len(d.ids) - 1 for d in docs]),
        seconds=seconds, setup_s=load_s, other_load=other,
        positions=sum(len(b) * max(len(docs[i].ids) for i in b) for b in batches),
    )


def plain_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """The plain loop's batches: indices sorted by length, cut where a batch padded to its longest would pass the budget."""
    batches: list[list[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):  # ascending: the newest is its batch's longest
        if batches[-1] and (len(batches[-1]) + 1) * lengths[i] > token_budget:
            batches.append([])
        batches[-1].append(i)
    return batches


@torch.inference_mode()
def plain_loop(model: torch.nn.Module, seqs: list[np.ndarray], pad_id: int, token_budget: int) -> np.ndarray:
    """The loop a user would write: length-sorted batches under a token budget, full logits, cross entropy.

    Right padding needs no attention mask in a causal model (no real position attends to a later one), so
    SDPA runs its causal flash kernel; padded positions are left out of the loss. Returns NLL sums per sequence.
    """
    sums = np.zeros(len(seqs), dtype=np.float64)
    for batch in plain_batches([len(s) for s in seqs], token_budget):
        width = len(seqs[batch[-1]])
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(seqs[i])] = torch.from_numpy(seqs[i].astype(np.int64))
        lengths = torch.tensor([len(seqs[i]) for i in batch])
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        scored = torch.arange(width - 1) < (lengths - 1).unsqueeze(1)
        sums[batch] = (nll * scored).sum(dim=1, dtype=torch.float64).numpy()
    return sums


def run_plain_loop(path: str, docs: list[Doc], pad_id: int, token_budget: int = PLAIN_TOKEN_BUDGET) -> ArmResult:
    model, load_s = timed(lambda: load_model(path, torch.bfloat16))
    seqs = [d.ids for d in docs]
    plain_loop(model, seqs[:PADDED_BATCH_SIZE], pad_id, token_budget)  # warm-up
    log.info("(plain) plain HF loop: length-sorted batches under %d tokens, bf16, full logits", token_budget)
    sums, seconds, other = timed_with_load(lambda: plain_loop(model, seqs, pad_id, token_budget))
    batches = plain_batches([len(s) for s in seqs], token_budget)
    return ArmResult(
        key="plain", title=f"(plain) plain HF loop: sorted {token_budget}-token batches, bf16, full logits",
        indices=list(range(len(docs))), nll_sum=sums, n_tokens=np.array([len(s) - 1 for s in seqs]),
        seconds=seconds, setup_s=load_s, other_load=other, extra={"token_budget": token_budget},
        positions=sum(len(b) * len(seqs[b[-1]]) for b in batches),  # padded to each batch's longest, its last
    )


def _graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far (recompiles included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_hardfocus(path: str, docs: list[Doc], compiled: bool, profile: bool = False) -> ArmResult:
    from scoring.scorer import Scorer

    key = "c1c" if compiled else "c1"
    threads = os.cpu_count() or 1
    cache = inductor_cache()
    graphs = [_graphs_compiled()]
    if compiled:
        log.info("(c1c) constructing Scorer(compiled=True): load + torch.compile; inductor cache warm: %s",
                 cache["warm"])
    scorer, setup_s = timed(lambda: Scorer(path, dtype="bfloat16", torch_threads=threads, compiled=compiled))
    graphs.append(_graphs_compiled())
    sequences = [d.ids for d in docs]
    scorer.score(sequences[:PADDED_BATCH_SIZE])  # warm-up
    graphs.append(_graphs_compiled())
    chunk = scorer.loss.chunk_tokens
    log.info("(%s) hardfocus Scorer: token budget %d, chunk %d, bf16, compiled %s, construction %.1f s",
             key, scorer.token_budget, chunk, compiled, setup_s)
    (sums, counts), seconds, other = timed_with_load(lambda: scorer.score(sequences))
    graphs.append(_graphs_compiled())
    profiled = profile_scorer(scorer, sequences) if profile else None
    shapes, _ = forward_shapes(scorer, [len(s) for s in sequences])
    return ArmResult(
        key=key, title=f"({key}) hardfocus Scorer in-process, bf16, {'torch.compile' if compiled else 'eager'}",
        indices=list(range(len(docs))), nll_sum=sums, n_tokens=counts, seconds=seconds, setup_s=setup_s,
        other_load=other,
        positions=sum(rows * length for rows, length, _ in shapes),
        extra={
            "compiled": compiled, "batches": len(shapes), "token_budget": scorer.token_budget, "chunk_tokens": chunk,
            "inductor_cache": cache, "graphs_construction": graphs[1] - graphs[0],
            "graphs_warmup": graphs[2] - graphs[1], "graphs_timed": graphs[3] - graphs[2], "profile": profiled,
        },
    )


def run_ray(docs: list[Doc], compile_mode: str, executor: str = "ray") -> ArmResult:
    """(c2) the whole ``score()`` call as the CLI makes it (Ray by default); (c2l) the same with executor local."""
    import scoring

    key = "c2" if executor == "ray" else "c2l"

    with tempfile.TemporaryDirectory(prefix="hardfocus-bench-") as tmp:
        shard = Path(tmp) / "shard.jsonl"
        with open(shard, "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"id": str(i), "text": d.text}) + "\n")
        cfg = scoring.ScoreConfig(
            inputs=[str(shard)], output=str(Path(tmp) / "scores"), model=MODEL_SPEC, dtype="bfloat16",
            executor=executor, id_column="id", compile=compile_mode,
        )
        log.info("(%s) hardfocus: score(executor=%r, compile=%r), whole call timed", key, executor, compile_mode)
        # tree: Ray's processes (the scoring actor among them) are this job's own work, not other load
        result, seconds, other = timed_with_load(lambda: scoring.score(cfg, progress=False), tree=True)
        parts = sorted(Path(cfg.output).glob("part-*.parquet"))
        table = pq.read_table(parts, columns=["sample_id", "nll_sum", "n_tokens", "status"])
    rows = table.to_pylist()
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        log.warning("(%s): %d rows not ok, e.g. %s", key, len(bad), bad[0])
    by_id = {int(r["sample_id"]): r for r in rows}
    run = result.manifest.runs[-1]
    return ArmResult(
        key=key, title=f"({key}) hardfocus {'via Ray' if executor == 'ray' else 'executor local'}, whole score() call, "
        f"compile={compile_mode}",
        indices=list(range(len(docs))),
        nll_sum=np.array([np.nan if by_id[i]["nll_sum"] is None else by_id[i]["nll_sum"] for i in range(len(docs))]),
        n_tokens=np.array([by_id[i]["n_tokens"] for i in range(len(docs))], dtype=np.int64),
        seconds=seconds, other_load=other,
        extra={"other_load_excludes_ray": True, "compile": compile_mode, "executor": executor, "manifest_run": run.model_dump(), "manifest_tokens": result.manifest.tokens},
    )


# ---- (ifd): the IFD second pass against plain scoring ---------------------------------------------

IFD_MAX_TOKENS = 384  # the chat demo's (score_auc, quality --kind chat)
CONDITIONED = ["sample_id", "status", "n_tokens", "nll_sum", "loss"]  # the first pass's columns


def chat_rows(n: int, seed: int) -> list[dict]:
    """``n`` conversations of the chat demo corpus (``pipelines.demo_corpus``, kind chat, no injected noise, its
    groups in equal parts), the first by id, as rows ``id``, ``group``, ``messages``."""
    from pipelines.demo_corpus import CHAT_THEMES, build_demo_corpus

    with tempfile.TemporaryDirectory(prefix="hardfocus-bench-chat-") as tmp:
        per_group = -(-n // (len(CHAT_THEMES) + 1))  # the themes and the free group
        build_demo_corpus(tmp, docs_per_group=per_group, seed=seed, heldout_frac=0.0, kind="chat")
        rows = [json.loads(line) for p in sorted(Path(tmp).rglob("*.jsonl")) for line in p.read_text().splitlines()]
    return [{"id": r["id"], "group": r["group"], "messages": r["messages"]} for r in sorted(rows, key=lambda r: r["id"])[:n]]


def ifd_positions(path: str, rows: list[dict]) -> dict:
    """Positions each pass computes (before padding), laid out as scoring lays them out: the conditioned pass one
    sequence per conversation; the second pass one per assistant turn, its header (or BOS) then its reply."""
    from hardfocus.chat import encode_conversation
    from hardfocus.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(path)
    encoded = [encode_conversation(tokenizer, r["messages"], IFD_MAX_TOKENS, ifd=True) for r in rows]
    turns = [t for e in encoded if e.status is None for t in e.ifd_turns]
    return {"conversations": len(rows), "scored": sum(e.status is None for e in encoded), "turns": len(turns),
            "conditioned_positions": sum(len(e.input_ids) for e in encoded if e.status is None),
            "second_pass_positions": sum(len(t.prefix) + t.stop - t.start for t in turns),
            "second_pass_prefix_positions": sum(len(t.prefix) for t in turns)}


def run_ifd(rows: list[dict], work: Path, ifd: bool, compile_mode: str) -> dict:
    """The whole in-process ``scoring.score`` call of (c2l) (executor local, bf16) on ``rows`` as a messages shard,
    ``ifd`` on or off, in ``work`` emptied first (nothing resumes): its wall time, the job's own record of it, other
    load, and the scores (sorted by sample id)."""
    import scoring

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = scoring.ScoreConfig(
        inputs=[str(work / "chat.jsonl")], output=str(work / "scores"), model=MODEL_SPEC, dtype="bfloat16",
        executor="local", compile=compile_mode, format="messages", messages_column="messages", id_column="id",
        group_column="group", max_tokens=IFD_MAX_TOKENS, ifd=ifd,
    )
    log.info("(ifd) score(executor='local', ifd=%s, compile=%r), whole call timed", ifd, compile_mode)
    result, seconds, other = timed_with_load(lambda: scoring.score(cfg, progress=False))
    columns = CONDITIONED + (["n_tokens_unconditioned", "nll_sum_unconditioned", "ifd"] if ifd else [])
    table = pq.read_table(sorted(Path(cfg.output).glob("part-*.parquet")), columns=columns).sort_by("sample_id")
    return {"ifd": ifd, "seconds": seconds, "other_load": other, "manifest_run": result.manifest.runs[-1].model_dump(),
            "scores": {c: table.column(c).to_pylist() for c in columns}}
