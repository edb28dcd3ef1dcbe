"""Scoring speed on the real SmolLM2-135M: six ways to compute per-document loss, side by side in one run.

    python -m benchmarks.scoring_speed [--docs 300] [--ref-docs 80] [--seed 0] \
        [--out benchmarks/results/scoring_speed.md] [--skip-ray] [--skip-compile] [--ray-compile] \
        [--skip-profile] [--skip-padded]
    python -m benchmarks.scoring_speed --only ifd [--conversations 80] [--rounds 2] [--seed 0] \
        [--out benchmarks/results/scoring_speed-ifd.md]

Arms (DESIGN.md, "Measuring speed" and "Fast scoring"):

(0)   the machine's fp32 and bf16 matmul peak (square torch matmuls, best of a few reps, all threads);
(a)   reference: one document at a time, fp32, ``model(input_ids=ids, labels=ids).loss``;
(b)   plain padded batches of a fixed size, in input order, bf16, full logits, fp32 masked cross entropy;
(plain) the plain HF loop a user would write: length-sorted batches under a token budget, bf16, full logits,
      per-document loss from ``F.cross_entropy``; every arm's tokens/s is also given as a ratio to it;
(c1)  hardfocus in-process, eager: ``scoring.Scorer(...).score`` (token-budget batches, chunked fp32 loss);
(c1c) hardfocus in-process, ``Scorer(..., compiled=True)``: the same under ``torch.compile``; its construction
      (load + compile) is reported apart from its steady-state scoring time;
(p)   where the time of the fastest in-process arm goes: one more pass under ``torch.profiler``, split into
      matmuls, attention and the rest, with the FLOPs each executed (``speed_profile``);
(c2)  hardfocus through Ray: the whole ``scoring.score(ScoreConfig(executor="ray", compile="off"))`` call on a
      JSONL shard of the same texts (``--ray-compile``: ``compile="on"``), what ``hardfocus score`` runs;
(c2l) the same call with ``executor="local"``: what Ray's orchestration costs, start-up and steady state;
(ifd) run alone (``--only ifd``): the (c2l) call on ``--conversations`` of the chat demo corpus (format messages),
      ``--ifd`` off and on, alternately, ``--rounds`` times each: what IFD's second pass (each response scored
      again without its prompt) costs against plain scoring, and a check that the first pass stays the same.

The arms live in ``speed_arms``; peaks, load and the report files in ``harness``.
Documents: real text from this machine (``speed_corpus``), seeded log-uniform lengths of 30-1024 tokens.
(a) is slow: it scores a length-stratified subset of ``--ref-docs`` documents, whose tokens/s stands for the
whole set and whose losses are the reference of the correctness checks. The report (``speed_report``) opens
with the fastest steady-state hardfocus arm against the targets: 5x (a), and 50% of the bf16 matmul peak.
Writes Markdown (``--out``) and JSON beside it; exits 1 if a check or an arm fails (after writing both).

Run it on a quiet machine: other work on the same cores skews every figure (the report shows, per arm, how
much CPU other processes took meanwhile). At the defaults it takes several minutes on 2 cores, most of it
in (b), plus 30-75 s of compiling for (c1c) (less with a warm inductor cache).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    combine_peaks,
    command_line,
    library_versions,
    load_average,
    machine_info,
    matmul_peaks,
    write_report,
)
from benchmarks.speed_arms import (
    CONDITIONED,
    IFD_MAX_TOKENS,
    MODEL_SPEC,
    PADDED_BATCH_SIZE,
    ArmResult,
    chat_rows,
    count_params,
    ifd_positions,
    load_model,
    run_hardfocus,
    run_ifd,
    run_padded,
    run_plain_loop,
    run_ray,
    run_reference,
)
from benchmarks.speed_corpus import Doc, corpus_summary, make_corpus, stratified_subset
from benchmarks.speed_report import headline, render_ifd, render_markdown

log = logging.getLogger("scoring_speed")

# bf16 forward vs fp32 forward, per-document mean loss: measured differences are ~0.01 nats.
TOLERANCE_BF16_MAX_NATS = 0.1
TOLERANCE_BF16_MEAN_NATS = 0.03
# (c2) runs the same Scorer on the same token ids as (c1) (or (c1c)): only thread-count effects may differ.
TOLERANCE_SAME_CODE_NATS = 1e-3
# (ifd): 16,808 positions in the first pass and 7,566 in the second; at the ~400 tokens/s of (c1) on a 2-core Xeon,
# 2 rounds of both settings and the warm-up take about 5 min
IFD_CONVERSATIONS = 80


def run_arms(path: str, docs: list[Doc], ref_indices: list[int], pad_id: int, args: argparse.Namespace
             ) -> tuple[dict[str, ArmResult], dict[str, str]]:
    """The arms in order, each after the last one's memory is freed; (c1c) and (c2) failing is recorded, not fatal."""
    arms: dict[str, ArmResult] = {}
    failed: dict[str, str] = {}
    steps: list[tuple[str, Callable[[], ArmResult]]] = [
        ("a", lambda: run_reference(path, docs, ref_indices)),
        ("plain", lambda: run_plain_loop(path, docs, pad_id)),
        ("c1", lambda: run_hardfocus(path, docs, compiled=False, profile=not args.skip_profile and args.skip_compile)),
    ]
    if not args.skip_padded:
        steps.insert(1, ("b", lambda: run_padded(path, docs, pad_id, PADDED_BATCH_SIZE)))
    if not args.skip_compile:
        steps.append(("c1c", lambda: run_hardfocus(path, docs, compiled=True, profile=not args.skip_profile)))
    if not args.skip_ray:
        steps.append(("c2", lambda: run_ray(docs, "on" if args.ray_compile else "off")))
        steps.append(("c2l", lambda: run_ray(docs, "on" if args.ray_compile else "off", executor="local")))
    for key, step in steps:
        try:
            arms[key] = step()
        except Exception as exc:
            if key in ("a", "plain", "c1"):
                raise
            log.exception("(%s) failed; the report leaves it out", key)
            failed[key] = f"{type(exc).__name__}: {exc}"
        gc.collect()
    for arm in arms.values():
        log.info("%s: %d tokens in %.2f s, %.0f tokens/s", arm.title, arm.scored_tokens, arm.seconds, arm.tokens_per_s)
    return arms, failed


# ---- checks ----------------------------------------------------------------------------------


def loss_difference(arm: ArmResult, ref: ArmResult) -> dict:
    """Max and mean |mean loss - reference mean loss| (nats) over the documents both scored."""
    pos = {doc: k for k, doc in enumerate(arm.indices)}
    common = [(k, pos[doc]) for k, doc in enumerate(ref.indices) if doc in pos]
    ref_loss = np.array([ref.mean_loss[k] for k, _ in common])
    arm_loss = np.array([arm.mean_loss[j] for _, j in common])
    diff = np.abs(arm_loss - ref_loss)
    tokens_ok = all(arm.n_tokens[j] == ref.n_tokens[k] for k, j in common)
    return {"docs": len(common), "max_abs_nats": float(np.nanmax(diff)), "mean_abs_nats": float(np.nanmean(diff)),
            "nan": int(np.isnan(diff).sum()), "n_tokens_equal": tokens_ok}


def correctness(arms: dict[str, ArmResult]) -> list[dict]:
    bf16, same = (TOLERANCE_BF16_MAX_NATS, TOLERANCE_BF16_MEAN_NATS), (TOLERANCE_SAME_CODE_NATS,) * 2
    pairs = [(key, "a", bf16) for key in ("b", "plain", "c1", "c1c", "c2")]
    # compiled vs eager: each is within bf16 noise of fp32 (+-0.04 nats on ~30-token documents, and it moves
    # with the batch shape), so they may differ by twice that: the triangle bound of the bf16 tolerances
    pairs.append(("c1c", "c1", (2 * TOLERANCE_BF16_MAX_NATS, 2 * TOLERANCE_BF16_MEAN_NATS)))
    # (c2) runs the same code as (c1), or as (c1c) with --ray-compile
    pairs.append(("c2", "c1c" if "c2" in arms and arms["c2"].extra["compile"] == "on" else "c1", same))
    pairs.append(("c2l", "c2", same))  # the same job in-process
    checks = []
    for key, against, (tol_max, tol_mean) in pairs:
        if key in arms and against in arms:
            d = loss_difference(arms[key], arms[against])
            checks.append(d | {"arm": key, "against": against, "tol_max": tol_max, "tol_mean": tol_mean})
    for c in checks:
        within = c["max_abs_nats"] <= c["tol_max"] and c["mean_abs_nats"] <= c["tol_mean"]
        c["passed"] = bool(c["nan"] == 0 and c["n_tokens_equal"] and within)
        log.info(
            "check %s vs %s over %d docs: max |diff| %.5f, mean %.5f nats, tokens equal %s -> %s",
            c["arm"], c["against"], c["docs"], c["max_abs_nats"], c["mean_abs_nats"], c["n_tokens_equal"],
            "ok" if c["passed"] else "FAILED",
        )
    return checks


def arm_row(arm: ArmResult, n_params: int, bf16_peak: float, ref_tps: float, plain_tps: float | None) -> dict:
    useful_gflops = 2 * n_params * arm.tokens_per_s / 1e9
    return {
        "arm": arm.key, "title": arm.title, "docs": len(arm.indices), "scored_tokens": arm.scored_tokens,
        "positions": arm.positions, "setup_s": arm.setup_s, "seconds": arm.seconds, "other_load": arm.other_load,
        "tokens_per_s": arm.tokens_per_s,
        "useful_gflops": useful_gflops, "utilisation_bf16_peak": useful_gflops / bf16_peak,
        "speedup_vs_a": arm.tokens_per_s / ref_tps, "extra": arm.extra,
        "vs_plain": None if plain_tps is None else arm.tokens_per_s / plain_tps,
        "steady_tokens_per_s": _steady_tokens_per_s(arm),
    }


def _steady_tokens_per_s(arm: ArmResult) -> float | None:
    """(c2)/(c2l): tokens / the seconds the actor spent on units (``manifest.runs[-1].actor_s``), start-up left out."""
    run = arm.extra.get("manifest_run") or {}
    return run["tokens_scored"] / run["actor_s"] if run.get("actor_s") else None


# ---- (ifd) -----------------------------------------------------------------------------------


def measure_ifd(args: argparse.Namespace, command: str) -> dict:
    """(ifd) alone: the chat shard scored with ``ifd`` off and on, the order alternating by round."""
    from hardfocus.models import resolve_model

    started, load_start = datetime.now(UTC).isoformat(timespec="seconds"), load_average()
    path, rows = resolve_model(MODEL_SPEC).path, chat_rows(args.conversations, args.seed)
    runs, compile_mode = [], "on" if args.ray_compile else "off"
    with tempfile.TemporaryDirectory(prefix="hardfocus-bench-ifd-") as tmp:
        work = Path(tmp) / "run"
        run_ifd(rows[:4], work, True, compile_mode)  # warm-up, untimed: imports and first kernels
        for k in range(args.rounds):
            for ifd in (False, True) if k % 2 == 0 else (True, False):
                runs.append(run_ifd(rows, work, ifd, compile_mode) | {"round": k + 1})
                gc.collect()
    return {
        "arm": "ifd", "command": command, "date": started, "model_path": path,
        "machine": machine_info() | {"load_avg_start": load_start, "load_avg_end": load_average()},
        "versions": library_versions(),
        "settings": {"model": MODEL_SPEC, "max_tokens": IFD_MAX_TOKENS, "rounds": args.rounds, "seed": args.seed,
                     "compile": compile_mode},
        "corpus": ifd_positions(path, rows) | {"seed": args.seed},
        "summary": ifd_summary(runs),
        "runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs],
    }


def ifd_summary(runs: list[dict]) -> dict:
    """Median wall and unit seconds of each setting, on / off, and whether every run's first pass equals the first
    plain run's row by row (sample id, status, n_tokens, nll_sum and loss, exactly)."""
    def median(ifd: bool, get) -> float:
        return statistics.median(get(r) for r in runs if r["ifd"] == ifd)

    base = next(r["scores"] for r in runs if not r["ifd"])
    for r in runs:  # null (not scored) rows compare equal; scored rows have finite values
        r["first_pass_identical"] = all(r["scores"][c] == base[c] for c in CONDITIONED)
        r["first_pass_max_abs_diff"] = max((abs(a - b) for a, b in zip(r["scores"]["nll_sum"], base["nll_sum"])
                                            if a is not None and b is not None), default=0.0)
    on = next(r["scores"] for r in runs if r["ifd"])
    ok = [s == "ok" for s in on["status"]]
    out = {
        "first_pass_identical": all(r["first_pass_identical"] for r in runs),
        "second_pass_targets": sum(n for n, o in zip(on["n_tokens_unconditioned"], ok) if o),
        "first_pass_targets": sum(n for n, o in zip(on["n_tokens"], ok) if o),
        "rows_ok": sum(ok), "ifd_below_1": sum(1 for x, o in zip(on["ifd"], ok) if o and x < 1),
    }
    for key, get in (("wall_s", lambda r: r["seconds"]), ("units_s", lambda r: r["manifest_run"]["actor_s"])):
        out[f"off_{key}"], out[f"on_{key}"] = median(False, get), median(True, get)
        out[f"{key}_ratio"] = out[f"on_{key}"] / out[f"off_{key}"]
    return out


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents in the corpus (default 300)")
    parser.add_argument("--ref-docs", type=int, default=80,
                        help="length-stratified subset that the slow reference (a) scores (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/scoring_speed[-ifd].md")
    parser.add_argument("--skip-ray", action="store_true", help="leave out (c2) and (c2l)")
    parser.add_argument("--skip-padded", action="store_true", help="leave out (b), the slow padded-batches baseline")
    parser.add_argument("--skip-compile", action="store_true", help="leave out (c1c)")
    parser.add_argument("--skip-profile", action="store_true",
                        help="leave out the profiled pass of the fastest in-process arm (where its time goes)")
    parser.add_argument("--ray-compile", action="store_true",
                        help="run (c2) with compile='on' (default 'off', so the whole call stays comparable)")
    parser.add_argument("--only", choices=["ifd"], help="run this arm alone, with its own report: ifd = --ifd off vs on")
    parser.add_argument("--conversations", type=int, default=IFD_CONVERSATIONS,
                        help=f"(ifd): conversations of the chat demo corpus to score (default {IFD_CONVERSATIONS})")
    parser.add_argument("--rounds", type=int, default=2, help="(ifd): runs of each setting, interleaved (default 2)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="write the Markdown of a results JSON again (default: beside it); measures nothing")
    args = parser.parse_args(argv)
    default = args.render.with_suffix(".md") if args.render else f"benchmarks/results/scoring_speed{'-ifd' * bool(args.only)}.md"
    args.out = args.out or Path(default)
    return args


def measure(args: argparse.Namespace, command: str) -> dict:
    """Everything, in one run: peaks, corpus, the arms, the checks; returns the report as plain data."""
    from hardfocus.models import resolve_model
    from hardfocus.tokenizers import load_tokenizer, pad_token_id

    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = load_average()
    if load_start > 0.5:
        log.warning("1-minute load average is %.2f before the run: other work will skew the figures", load_start)
    peaks_start = matmul_peaks()

    path = resolve_model(MODEL_SPEC).path
    tokenizer = load_tokenizer(path)
    docs = make_corpus(tokenizer, args.docs, args.seed)
    ref_indices = stratified_subset([len(d.ids) for d in docs], args.ref_docs)
    n_params = count_params(load_model(path, torch.float32))
    arms, failed = run_arms(path, docs, ref_indices, pad_token_id(tokenizer), args)

    load_end = load_average()
    peaks = combine_peaks(peaks_start, matmul_peaks())
    log.info("peaks: fp32 %.0f, bf16 %.0f GFLOP/s, bf16/fp32 = %.1fx",
             peaks["fp32_peak"], peaks["bf16_peak"], peaks["bf16_over_fp32"])
    plain_tps = arms["plain"].tokens_per_s if "plain" in arms else None
    rows = [arm_row(a, n_params, peaks["bf16_peak"], arms["a"].tokens_per_s, plain_tps) for a in arms.values()]
    return {
        "command": command,
        "date": started,
        "machine": machine_info() | {"load_avg_start": load_start, "load_avg_end": load_end},
        "versions": library_versions(),
        "model_path": path,
        "n_params": n_params,
        "settings": {"padded_batch_size": PADDED_BATCH_SIZE, "model": MODEL_SPEC,
                     "plain_token_budget": arms["plain"].extra["token_budget"] if "plain" in arms else None},
        "peaks": peaks,
        "corpus": corpus_summary(docs, ref_indices, args.seed),
        "headline": headline(rows, n_params, peaks["bf16_peak"], peaks["fp32_peak"]),
        "arms": rows,
        "failed": failed,
        "checks": correctness(arms),
        "per_doc_loss": {k: {"indices": a.indices, "loss": a.mean_loss.tolist()} for k, a in arms.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        report = measure_ifd(args, command_line(argv)) if args.only == "ifd" else measure(args, command_line(argv))
    markdown = render_ifd(report) if report.get("arm") == "ifd" else render_markdown(report)
    if args.render:
        args.out.write_text(markdown)
        return 0
    write_report(args.out, report, markdown)
    sys.stdout.write(markdown)
    if report.get("arm") == "ifd":
        return 0 if report["summary"]["first_pass_identical"] else 1
    return 0 if all(c["passed"] for c in report["checks"]) and not report["failed"] else 1

if __name__ == "__main__":
    raise SystemExit(main())
