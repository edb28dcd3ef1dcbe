"""What scoring every token costs and changes: ``--long-documents truncate`` against ``windows`` (context 0 and K),
on the demo corpus, with the real SmolLM2-135M, in one run.

    python -m benchmarks.long_documents [--max-chars 4000] [--max-tokens 512] [--context 64] [--seed 0] \
        [--docs-per-group 150] [--big-doc-mb 5] [--out benchmarks/results/long_documents.md]

Each arm is the whole ``scoring.score(...)`` call (``executor="local"``, ``compile="off"``: the same work on the
same corpus, no compile time in the figures; a small warm-up call first) on the corpus ``hardfocus demo-corpus`` builds (``--max-chars``:
its longest document; the demo's 4,000 characters keep most documents within 512 tokens, 40,000 gives a long
tail). The report gives, per arm, the documents' tokens it scored (against the corpus's tokenisation), its wall
time and tokens/s as ratios to truncation's; the loss of the windows after the first, with no context and with
K tokens of context (the same tokens scored: a cold start shows as a higher loss); and how the bands change: the
documents ``hardfocus select --by document`` keeps from windowed scores against those it keeps from truncated
ones (the demo's selection settings). Last, a ``--big-doc-mb`` MB document tokenised the way windows tokenise it
(in pieces) and whole, each in a fresh process: seconds and the peak memory it added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.harness import (
    command_line,
    library_versions,
    load_cell,
    machine_info,
    machine_lines,
    markdown_table,
    other_load_now,
    ratio,
    timed_with_load,
    write_report,
)

log = logging.getLogger("long_documents")

SELECT = {"drop_top": 0.1, "keep": 0.5, "per_group": True, "temperature": 1.0}  # pipelines/configs/demo.toml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-chars", type=int, default=4000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-doc-mb", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/long_documents.md"))
    parser.add_argument("--docs-per-group", type=int, default=150)
    parser.add_argument("--tokenise", nargs=2, metavar=("HOW", "FILE"), help=argparse.SUPPRESS)  # the last arm's child
    args = parser.parse_args(argv)
    if args.tokenise:
        return _tokenise_big_document(args.tokenise[0], Path(args.tokenise[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from hardfocus.models import resolve_model
    from hardfocus.tokenizers import load_tokenizer
    from pipelines.demo_corpus import build_demo_corpus
    from scoring import ScoreConfig, score

    with tempfile.TemporaryDirectory(prefix="hardfocus-long-docs-") as tmp:
        root = Path(tmp)
        build_demo_corpus(root / "corpus", docs_per_group=args.docs_per_group, max_chars=args.max_chars, seed=args.seed,
                          noise_frac=0.05)
        corpus = root / "corpus" / "train"
        texts = pl.read_ndjson(sorted(corpus.glob("*.jsonl")))["text"].to_list()
        tokenizer = load_tokenizer(resolve_model("smollm2-135m").path)
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        arms = {"truncate": {}, "windows, context 0": {"long_documents": "windows"},
                f"windows, context {args.context}": {"long_documents": "windows", "window_context": args.context}}
        warm = root / "warm-up"  # the first scoring call of a process pays for what later ones find ready
        (warm / "in").mkdir(parents=True)
        (warm / "in" / "few.jsonl").write_text("".join(line for line, _ in zip(open(sorted(corpus.glob("*.jsonl"))[0]), range(16))))
        score(ScoreConfig(inputs=[str(warm / "in")], output=str(warm / "scores"), max_tokens=args.max_tokens,
                          executor="local", compile="off"), progress=False)
        results, quiet = {}, other_load_now()
        for name, settings in arms.items():
            out = root / name.replace(" ", "").replace(",", "-")
            cfg = ScoreConfig(inputs=[str(corpus)], output=str(out), group_column="group", max_tokens=args.max_tokens,
                              executor="local", compile="off", **settings)
            result, seconds, load = timed_with_load(lambda cfg=cfg: score(cfg, progress=False))
            scores = pl.read_parquet(out / "part-*.parquet")
            results[name] = {"dir": out, "seconds": seconds, "other_load": load, "tokens": result.manifest.tokens,
                             "rows": result.manifest.rows, "documents": result.manifest.documents,
                             "later_windows": _later_windows(scores)}
            log.info("%s: %d tokens in %.1f s", name, result.manifest.tokens, seconds)
        bands = _bands(results, root)
        document = _big_document(args.big_doc_mb, root / "big.txt")
        big = {how: json.loads(subprocess.run([sys.executable, "-m", "benchmarks.long_documents", "--tokenise", how, str(document)], check=True,
                                              capture_output=True, text=True).stdout.splitlines()[-1])
               for how in ("pieces", "whole")}
    report = {"command": command_line(), "machine": machine_info(), "versions": library_versions(),
              "settings": vars(args) | {"out": str(args.out)}, "quiet_before": quiet, "corpus_documents": len(texts),
              "corpus_tokens": sum(lengths), "documents_longer_than_max_tokens": sum(n > args.max_tokens for n in lengths),
              "tokens_past_max_tokens": sum(max(0, n - args.max_tokens) for n in lengths),
              "arms": {k: {x: v for x, v in r.items() if x != "dir"} for k, r in results.items()}, "bands": bands, "big_document": big}
    write_report(args.out, report, _markdown(report))
    return 0


def _big_document(megabytes: float, path: Path) -> Path:
    """One document of real text (the demo corpus's, joined) repeated to ``megabytes`` MB, written to ``path``."""
    from pipelines.demo_corpus import build_demo_corpus

    with tempfile.TemporaryDirectory() as tmp:
        build_demo_corpus(tmp, max_chars=40_000)
        base = "\n\n".join(pl.read_ndjson(sorted(Path(tmp, "train").glob("*.jsonl")))["text"].to_list())
    size = int(megabytes * 1e6)
    path.write_text((base * (size // len(base) + 1))[:size])
    return path


class _PeakRss:
    """The most this process's resident memory grew above what it was at the start, sampled every 2 ms (the
    lifetime peak of ``getrusage`` would also hold what loading took)."""

    def __init__(self):
        self.base = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, _rss()) - self.base


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _tokenise_big_document(how: str, path: Path) -> int:
    """In a fresh process: tokenise the document at ``path`` in pieces or whole; print a JSON line of what it cost."""
    from hardfocus.models import resolve_model
    from hardfocus.tokenizers import load_tokenizer
    from scoring.windows import encode_long

    tokenizer = load_tokenizer(resolve_model("smollm2-135m").path)
    text = path.read_text()
    tokenizer("warm up", return_offsets_mapping=True)
    peak = _PeakRss()
    t0 = time.perf_counter()
    if how == "pieces":
        ids = encode_long(tokenizer, text)[0]
    else:
        ids = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["input_ids"]
    seconds = time.perf_counter() - t0
    tokens, digest = len(ids), hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()
    added = peak.stop()
    print(json.dumps({"characters": len(text), "tokens": tokens, "seconds": seconds, "peak_bytes_added": added,
                      "digest": digest}))
    return 0


def _later_windows(scores: pl.DataFrame) -> dict | None:
    """Token-weighted loss of the windows after each document's first (the same tokens with or without context)."""
    if "window" not in scores.columns:
        return None
    later = scores.filter((pl.col("window") > 0) & (pl.col("status") == "ok"))
    return {"windows": later.height, "tokens": int(later["n_tokens"].sum()),
            "loss": float(later["nll_sum"].sum() / max(later["n_tokens"].sum(), 1))}


def _bands(results: dict, root: Path) -> dict:
    """The documents each arm's selection keeps, and how many of truncation's it keeps too."""
    from selection import SelectConfig, select

    kept = {}
    for name, r in results.items():
        by = {} if name == "truncate" else {"by": "document"}
        out = root / f"selected-{r['dir'].name}"
        select(SelectConfig(scores=[str(r["dir"])], output=str(out), report=False, **SELECT, **by), progress=False)
        ids = pl.read_parquet(out / "part-*.parquet")["sample_id"].str.replace(r"#w\d+$", "")
        kept[name] = set(ids.to_list())
    base = kept["truncate"]
    return {name: {"kept_documents": len(ids), "also_kept_by_truncate": len(ids & base),
                   "jaccard_with_truncate": len(ids & base) / max(len(ids | base), 1)} for name, ids in kept.items()}


def _markdown(r: dict) -> str:
    arms, base, big = r["arms"], r["arms"]["truncate"], r["big_document"]
    rows = []
    for name, a in arms.items():
        later = a["later_windows"]
        rows.append([name, f"{a['documents']:,}", f"{a['rows']:,}", f"{a['tokens']:,}",
                     f"{a['tokens'] / r['corpus_tokens']:.1%}", f"{a['seconds']:.1f}", ratio(a["seconds"], base["seconds"]),
                     f"{a['tokens'] / a['seconds']:,.0f}", ratio(a["tokens"] / a["seconds"], base["tokens"] / base["seconds"]),
                     "-" if later is None else f"{later['loss']:.4f} ({later['tokens']:,} tokens)",
                     load_cell(a["other_load"])])
    band_rows = [[name, f"{b['kept_documents']:,}", f"{b['also_kept_by_truncate']:,}", f"{b['jaccard_with_truncate']:.3f}"]
                 for name, b in r["bands"].items()]
    s = r["settings"]
    return "\n".join([
        "# Long documents: truncation against windows",
        "",
        f"`{r['command']}`",
        "",
        *machine_lines(r["machine"], r["versions"]),
        f"- other load before the run: {r['quiet_before']:.2f} CPU-s/s",
        "",
        f"The demo corpus ({s['docs_per_group']} documents per group of at most {s['max_chars']:,} characters, seed "
        f"{s['seed']}): "
        f"{r['corpus_documents']:,} documents, {r['corpus_tokens']:,} tokens (SmolLM2's tokenizer); "
        f"{r['documents_longer_than_max_tokens']:,} are longer than max_tokens {s['max_tokens']}, and "
        f"{r['tokens_past_max_tokens']:,} tokens ({r['tokens_past_max_tokens'] / r['corpus_tokens']:.1%}) lie past "
        "it, which truncation never scores. Each arm: the whole `scoring.score` call, in process, compile off.",
        "",
        markdown_table(["arm", "documents", "rows", "tokens scored", "of the corpus", "wall s", "vs truncate",
                        "tokens/s", "vs truncate", "loss of later windows", "other load"],
                       rows, "lr"),
        "",
        "Bands: the documents a selection with the demo's settings (drop_top 0.1, keep 0.5, per group) keeps, "
        "windowed scores selected `--by document` (every token of a document counts), truncated ones by their prefix.",
        "",
        markdown_table(["scores", "kept documents", "also kept from truncated scores", "Jaccard"], band_rows, "lr"),
        "",
        f"A document of {big['pieces']['characters'] / 1e6:.1f} M characters ({big['pieces']['tokens']:,} tokens), "
        "tokenised with offsets in a fresh process each way:",
        "",
        markdown_table(["how", "seconds", "peak memory added", "tokens"],
                       [[how, f"{b['seconds']:.1f}", f"{b['peak_bytes_added'] / 1e6:,.0f} MB", f"{b['tokens']:,}"]
                        for how, b in big.items()], "lr"),
        "",
        "The same token ids either way (sha1 of the ids): " + ("yes" if big["pieces"]["digest"] == big["whole"]["digest"]
                                                          else "NO") + ".",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
