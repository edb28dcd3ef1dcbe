"""The training-overhead benchmark's reading of its runs: medians and ratios per arm, the checks, the report.

``training_overhead`` measures; this turns its runs into the verdict (quiet steps' medians against the plain
``transformers.Trainer``) and the Markdown. ``python benchmarks/training_overhead.py`` runs both.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from harness import CONTENDED_OTHER_LOAD, QUIET_PROBE_S, fmt, machine_lines, markdown_table

ARMS = ("plain", "none", "static", "online", "static+online")
# static+online with training.weighting.per_sample_nll replaced (in this process only) by per_sample_nll_shifted:
# the change this benchmark suggests, measured on the same batches
CANDIDATE_ARM = "static+online/shift-labels"
TARGET_OVERHEAD = 0.05
# plain and none train the same objective on unpadded equal-length samples: their first logged loss differs
# only by bf16 rounding in a different reduction order
SAME_LOSS_TOLERANCE = 0.02
MIN_QUIET_STEPS = 3
MATERIAL_HEAD_SHARE = 0.02  # a loss-head difference from this share of a step on is called material


@dataclass
class Run:
    """One arm trained once from a freshly loaded model."""

    arm: str
    round: int
    position: int  # place of the arm in its round's order
    step_s: list[float]  # every step, warm-up included
    compute_s: list[float]
    step_other_load: list[float]  # per step: CPU-seconds per second other processes used
    load_s: float
    train_s: float
    other_load: float  # CPU-seconds per second other processes used during train()
    waited_s: float  # waited for a quiet machine before train()
    batch_crcs: list[int]
    first_loss: float | None
    logs: list[dict] = field(default_factory=list)


def quiet_threshold(torch_threads: int) -> float:
    """CPU-s/s other processes may take before a step counts as contended: CONTENDED_OTHER_LOAD when torch's
    threads fill every core, plus the cores torch leaves free (e.g. 1.2 with --threads 1 on 2 cores)."""
    return CONTENDED_OTHER_LOAD + max((os.cpu_count() or 1) - torch_threads, 0)


def weighting_of(arm: str) -> str:
    return {"plain": "none", CANDIDATE_ARM: "static+online"}.get(arm, arm)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def summarise(runs: list[Run], arms: Sequence[str], warmup_steps: int, threshold: float) -> dict:
    """Per arm: median/IQR of all measured steps, of the quiet ones (other load <= CONTENDED_OTHER_LOAD) and the
    fastest one, each as a ratio to plain's. The verdict uses the quiet-step ratio when every arm has at least
    MIN_QUIET_STEPS quiet steps (steps that shared the cores with other work say little about either arm), else
    the all-steps ratio."""
    w = warmup_steps
    by_arm = {arm: [r for r in runs if r.arm == arm] for arm in arms}
    pooled = {arm: [s for r in rs for s in r.step_s[w:]] for arm, rs in by_arm.items()}
    quiet = {arm: [s for r in rs for s, o in zip(r.step_s[w:], r.step_other_load[w:]) if o <= threshold]
             for arm, rs in by_arm.items()}
    pooled_compute = {arm: [s for r in rs for s in r.compute_s[w:]] for arm, rs in by_arm.items()}
    round_medians = {arm: {r.round: statistics.median(r.step_s[w:]) for r in rs} for arm, rs in by_arm.items()}
    basis = "quiet" if all(len(q) >= MIN_QUIET_STEPS for q in quiet.values()) else "all"
    plain_median = statistics.median(pooled["plain"])
    plain_quiet = statistics.median(quiet["plain"]) if quiet["plain"] else float("nan")
    plain_min = min(pooled["plain"])
    plain_compute = statistics.median(pooled_compute["plain"])
    rows = []
    for arm in arms:
        q1, med, q3 = quartiles(pooled[arm])
        per_round = [round_medians[arm][k] / round_medians["plain"][k] for k in sorted(round_medians[arm])]
        quiet_median = statistics.median(quiet[arm]) if quiet[arm] else float("nan")
        ratio = {"all": med / plain_median, "quiet": quiet_median / plain_quiet}[basis]
        rows.append({
            "arm": arm, "weighting": weighting_of(arm), "steps": len(pooled[arm]), "median_s": med, "q1_s": q1,
            "q3_s": q3, "ratio": med / plain_median, "overhead": med / plain_median - 1,
            "quiet_steps": len(quiet[arm]), "quiet_median_s": quiet_median, "quiet_ratio": quiet_median / plain_quiet,
            "min_s": min(pooled[arm]), "min_ratio": min(pooled[arm]) / plain_min,
            "round_medians_s": [round_medians[arm][k] for k in sorted(round_medians[arm])],
            "round_ratios": per_round, "round_ratio_median": statistics.median(per_round),
            "compute_median_s": statistics.median(pooled_compute[arm]),
            "compute_ratio": statistics.median(pooled_compute[arm]) / plain_compute,
            "other_load_max": max(r.other_load for r in by_arm[arm]),
            "first_loss": [r.first_loss for r in by_arm[arm]],
            "verdict_ratio": ratio, "verdict_overhead": ratio - 1,
            "meets_target": bool(ratio - 1 <= TARGET_OVERHEAD),
        })
    return {"rows": rows, "checks": checks(runs, by_arm), "basis": basis, "quiet_threshold": threshold}


def first_loss_diff(by_arm: dict[str, list[Run]], a: str, b: str) -> float | None:
    pairs = zip((r.first_loss for r in by_arm.get(a, [])), (r.first_loss for r in by_arm.get(b, [])))
    diffs = [abs(x - y) for x, y in pairs if x is not None and y is not None]
    return max(diffs) if diffs else None


def checks(runs: list[Run], by_arm: dict[str, list[Run]]) -> dict:
    reference = runs[0].batch_crcs
    same_batches = all(r.batch_crcs == reference for r in runs)
    out = {
        "same_batches_all_runs": bool(same_batches),
        "batches_per_run": len(reference),
        "tolerance": SAME_LOSS_TOLERANCE,
        "first_loss_pairs": {},
    }
    pairs = [("plain", "none")] + ([("static+online", CANDIDATE_ARM)] if CANDIDATE_ARM in by_arm else [])
    for a, b in pairs:
        diff = first_loss_diff(by_arm, a, b)
        out["first_loss_pairs"][f"{a} vs {b}"] = {"max_abs_diff": diff,
                                                  "ok": diff is not None and diff <= SAME_LOSS_TOLERANCE}
    return out


# ---- report ----------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    cfg, summary = report["config"], report["summary"]
    rows = summary["rows"]
    weighted = [r for r in rows if r["arm"] in ARMS[1:]]
    missed = [r for r in weighted if not r["meets_target"]]
    lines = [
        "# Training overhead: stock Trainer vs hardfocus WeightedTrainer",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Model: SmolLM2-135M ({report['model_path']}), {report['n_params']:,} parameters (tied embeddings once)  ",
        f"Wall time of the whole benchmark: {report['wall_s'] / 60:.1f} min",
        "",
        "## Headline",
        "",
        "Median optimiser-step time of each `--weighting` over the same batches, as a ratio to a stock "
        "`transformers.Trainer` (plain, `model(labels=...).loss`) measured in the same run, over "
        + (f"the quiet steps (other processes took <= {summary['quiet_threshold']:g} CPU-s/s meanwhile; every arm has >= "
           f"{MIN_QUIET_STEPS} of them)" if summary["basis"] == "quiet" else
           "all measured steps (too few steps were quiet, i.e. free of other processes' load, to use only those)")
        + f". Target: weighting costs at most {TARGET_OVERHEAD:.0%} over plain.",
        "",
    ]
    for r in weighted:
        lines.append(f"- `--weighting {r['arm']}`: **{r['verdict_ratio']:.3f}x** plain ({r['verdict_overhead']:+.1%}); "
                     f"all steps {r['ratio']:.3f}x, fastest step {r['min_ratio']:.3f}x, per-round medians "
                     f"{', '.join(f'{x:.3f}' for x in r['round_ratios'])}x")
    lines += [""]
    worst = max(weighted, key=lambda r: r["verdict_overhead"])
    if missed:
        lines.append(f"Target **NOT met** by: {', '.join(r['arm'] for r in missed)} (worst {worst['arm']}, "
                     f"{worst['verdict_overhead']:+.1%}).")
    else:
        lines.append(f"Target **met** by every weighting (worst: {worst['arm']}, {worst['verdict_overhead']:+.1%}).")
    cand = next((r for r in rows if r["arm"] == CANDIDATE_ARM), None)
    if cand is not None:
        lines += ["", "With the candidate change below (`per_sample_nll` shifting the labels instead of slicing the logits, "
                      "cross entropy on contiguous rows), "
                      f"static+online runs at **{cand['verdict_ratio']:.3f}x** plain ({cand['verdict_overhead']:+.1%}; "
                      f"all steps {cand['ratio']:.3f}x, fastest step {cand['min_ratio']:.3f}x; arm `{CANDIDATE_ARM}`, "
                      "the same batches in the same run)."]
    lines += ["", *machine_section(report), "", *config_section(report), "", "## Results", "",
              "All steps: every measured step of every round. Quiet: the steps during which other processes took <= "
              f"{summary['quiet_threshold']:g} CPU-s/s. Fastest: the arm's quickest measured step (other work only ever adds "
              f"time). The verdict uses the {summary['basis']}-step ratio.",
              "", results_table(rows), "",
              "Per-round median step seconds (round: arm order rotated by one each round):", "",
              markdown_table(["arm", *(f"round {k + 1}" for k in range(cfg["rounds"]))],
                             [[r["arm"], *(f"{x:.3f}" for x in r["round_medians_s"])] for r in rows], "lr"),
              "", *checks_section(report), "", *loss_head_section(report), "", "## Reading", "", *reading(report), "",
              "Absolute seconds on a shared 2-core machine vary between runs; compare only ratios from the same run."]
    return "\n".join(lines) + "\n"


def results_table(rows: list[dict]) -> str:
    header = ["arm", "steps", "median step s", "IQR (q1-q3) s", "ratio vs plain", "per-round ratio min-max",
              "quiet steps", "quiet median s", "quiet ratio", "fastest s", "fastest ratio", "overhead (verdict)",
              "meets 5%"]
    return markdown_table(header, [
        [r["arm"], r["steps"], f"{r['median_s']:.3f}", f"{r['q1_s']:.3f}-{r['q3_s']:.3f}", f"{r['ratio']:.3f}",
         f"{min(r['round_ratios']):.3f}-{max(r['round_ratios']):.3f}", r["quiet_steps"], f"{r['quiet_median_s']:.3f}",
         f"{r['quiet_ratio']:.3f}", f"{r['min_s']:.3f}", f"{r['min_ratio']:.3f}", f"{r['verdict_overhead']:+.1%}",
         "-" if r["arm"] == "plain" else ("yes" if r["meets_target"] else "NO")] for r in rows
    ], "lrrrrrrrrrrrl")


def machine_section(report: dict) -> list[str]:
    machine, rows = report["machine"], report["summary"]["rows"]
    return [
        "## Machine",
        "",
        *machine_lines(machine, report["versions"]),
        f"- 1-minute load average: {report['load_before']:.2f} before, {report['load_after']:.2f} after (this run "
        "itself adds about its thread count; much more means other work shared the CPUs).",
        "- Other load (CPU-seconds per second that other processes took, /proc/stat less this process, per training "
        f"run): median {report['other_load']['median']:.2f}, max {report['other_load']['max']:.2f}; "
        f"{report['other_load']['contended_runs']} of {report['other_load']['runs']} runs above {report['summary']['quiet_threshold']:g}, "
        "where absolute seconds are not reliable (the interleaved ratios suffer less). Highest per arm: "
        + ", ".join(f"{r['arm']} {r['other_load_max']:.2f}" for r in rows) + ".",
        f"- Quiet measured steps (other load <= {report['summary']['quiet_threshold']:g} during the step): "
        f"{sum(r['quiet_steps'] for r in rows)} of {sum(r['steps'] for r in rows)}. Time spent waiting for a quiet "
        f"machine before runs (up to {report['config']['max_wait']:g} s each): {report['other_load']['waited_s']:.0f} s.",
    ]


def config_section(report: dict) -> list[str]:
    cfg, data = report["config"], report["data"]
    return [
        "## Configuration",
        "",
        f"- {cfg['batch_size']} samples x {cfg['seq_len']} tokens per optimiser step (no gradient accumulation), "
        f"{'bf16 autocast (fp32 master weights)' if cfg['bf16'] else 'fp32'}, `training.build.training_arguments` "
        f"(optim {cfg['optim']}, lr {cfg['learning_rate']:g} {cfg['lr_scheduler']}, max_grad_norm "
        f"{cfg['max_grad_norm']:g}, `use_cpu=True`), logging every {cfg['logging_steps']} steps, "
        f"`save_strategy='no'`, no eval, seed {cfg['seed']}, `dataloader_num_workers=0`; torch intra-op threads: "
        f"{cfg['threads']} on {report['machine']['cpus']} CPUs"
        + (" (torch's default)." if cfg["threads"] == report["machine"]["cpus"] else " (`--threads`)."),
        f"- Data: {data['samples']} samples of exactly {cfg['seq_len']} tokens packed from {data['documents']} "
        f"demo-corpus documents ({', '.join(f'{g} {n}' for g, n in data['groups'].items())}), EOS between documents, "
        "so no batch is padded and the token-mean loss of plain equals the per-sample-mean loss of `none`; static "
        "weights seeded log-uniform in [0.25, 4], mean 1. One run is one epoch over them.",
        "- Arms: plain = stock `transformers.Trainer` (collator: `training.collator.WeightedCollator` with the "
        "`weight` tensor dropped, so the model gets the same input_ids / attention_mask / labels); the weightings = "
        "`training.build.build_trainer` (`WeightedTrainer` + `WeightedCollator` + its `JsonLogCallback`)"
        + (f"; `{CANDIDATE_ARM}` = static+online with `per_sample_nll` swapped, in this process only, for this "
           "benchmark's `per_sample_nll_shifted` (see below)" if CANDIDATE_ARM in cfg["arms"] else "") + ".",
        f"- {cfg['rounds']} rounds; in each, every arm loads a fresh model (`training.build.load_base`, fp32) and runs "
        f"one `trainer.train()` of {cfg['warmup_steps']} + {cfg['steps']} steps; the first {cfg['warmup_steps']} "
        "(optimiser-state allocation, first touch of buffers) are discarded. The arm order rotates by one each round, "
        "so load drift from other processes hits every arm alike. Before each run the benchmark waits (up to "
        "`--max-wait` s) until other processes take <= "
        f"{report['summary']['quiet_threshold']:g} CPU-s/s over a {QUIET_PROBE_S:g} s sample (0.2 plus the cores "
        "torch's threads leave free): with torch's threads on every core, "
        "a step that shares the CPUs is several times slower, not a bit slower.",
        "- Step time: wall time between consecutive `on_step_end` callbacks, i.e. everything the Trainer does per "
        "optimiser step (batch fetch and collation, forward, loss, backward, clipping, AdamW, scheduler, callbacks, "
        "logging); the JSON also has `on_step_begin` to `on_step_end` (the same without fetching the batch) and each "
        "step's other load. Medians and quartiles are over the measured steps of all rounds; ratio = arm median / "
        "plain median; the per-round ratio is the arm's median in a round over plain's median in the same round.",
    ]


def checks_section(report: dict) -> list[str]:
    chk, rows = report["summary"]["checks"], report["summary"]["rows"]
    lines = [
        "## Checks",
        "",
        "- Same batches in the same order in every run (CRC of each batch's input_ids): "
        f"**{'yes' if chk['same_batches_all_runs'] else 'NO'}** ({chk['batches_per_run']} batches per run).",
    ]
    for pair, c in chk["first_loss_pairs"].items():
        verdict = "not logged" if c["max_abs_diff"] is None else ("ok" if c["ok"] else "FAILED")
        lines.append(f"- First logged loss (mean of the first {report['config']['logging_steps']} steps), {pair} "
                     f"(the same objective), max abs diff over rounds: {fmt(c['max_abs_diff'], '.4f')} nats (tolerance "
                     f"{chk['tolerance']:g}): **{verdict}**.")
    lines.append("- First logged loss per arm, round 1 (the loss each arm reports is the unweighted mean): "
                 + ", ".join(f"{r['arm']} {fmt(r['first_loss'][0], '.4f')}" for r in rows) + ".")
    return lines


def loss_head_section(report: dict) -> list[str]:
    lh, cfg = report["loss_head"], report["config"]
    plain_step = report["summary"]["rows"][0]["median_s"]
    names = {
        "plain": "plain: `model.loss_function` (transformers `ForCausalLMLoss`: fp32 upcast, cross entropy on "
                 "(B*T, V) rows, sum / tokens)",
        "hardfocus": "hardfocus: `per_sample_nll` (fp32 upcast, cross entropy on the transposed (B, V, T-1) view, "
                     "reduction none) + `StepWeighter.plan` (static+online) + `(coef * losses).sum()`",
        "candidate": "candidate: the same with `per_sample_nll_shifted` (labels shifted, no logits slice; cross "
                     "entropy on (B*T, V) rows, reduction none, `.view(B, T)`)",
    }
    lines = [
        "## The loss head alone",
        "",
        f"Forward + backward from the logits to their gradient, on one batch of real logits ({cfg['batch_size']} x "
        f"{cfg['seq_len']} x {lh['vocab']:,}, {'bf16' if cfg['bf16'] else 'fp32'}, computed once by the model), "
        f"median of {lh['reps']} reps with the variants interleaved, the cost of cloning the logits "
        f"({lh['clone_s'] * 1e3:.0f} ms) subtracted. This is the only computation in which the arms differ: the model's "
        "forward and backward, clipping and AdamW are the same code.",
        "",
        markdown_table(["loss head", "ms", "vs plain", "share of plain's median step"],
                       [[names[k], f"{v * 1e3:.0f}", f"{(v - lh['seconds']['plain']) * 1e3:+.0f} ms", f"{v / plain_step:.1%}"]
                        for k, v in lh["seconds"].items()], "lr"),
    ]
    lines += ["", f"The candidate's per-sample losses differ from `per_sample_nll`'s by at most "
                  f"{lh['candidate_loss_max_abs_diff']:.2e} nats and its logit gradients by at most "
                  f"{lh['candidate_grad_max_abs_diff']:.2e} (same math, different kernel)."]
    if lh.get("profiles"):
        ranks = range(max(len(v) for v in lh["profiles"].values()))
        lines += ["", "Where the time goes: the ops with the most self CPU time in one profiled call (torch.profiler; "
                      "the profiler adds its own overhead, so compare within a column):", "",
                  markdown_table(["rank", *(f"{k} op (calls): ms" for k in lh["profiles"])], [
                      [i + 1, *(f"`{ops[i]['op']}` ({ops[i]['calls']}): {ops[i]['self_ms']:.0f}" if i < len(ops) else ""
                                for ops in lh["profiles"].values())] for i in ranks], "rl")]
    return lines


def reading(report: dict) -> list[str]:
    summary = report["summary"]
    rows = {r["arm"]: r for r in summary["rows"]}
    lh = report["loss_head"]["seconds"]
    plain = rows["plain"]
    tokens = report["config"]["batch_size"] * report["config"]["seq_len"]
    spread = max(plain["round_medians_s"]) / min(plain["round_medians_s"]) - 1
    step = plain["quiet_median_s"] if summary["basis"] == "quiet" else plain["median_s"]
    out = [
        f"- A plain step takes {step:.2f} s here ({tokens:,} tokens, {tokens / step:,.0f} tokens/s, {summary['basis']} "
        f"steps). Over all steps plain's spread by {(plain['q3_s'] - plain['q1_s']) / plain['median_s']:.1%} of the "
        f"median (IQR) and its per-round medians by {spread:.1%}; an arm-to-arm difference well inside that is noise.",
    ]
    for arm in [a for a in ARMS[1:] if a in rows]:
        r = rows[arm]
        out.append(f"- {arm}: {r['verdict_overhead']:+.1%} per step ({(r['verdict_ratio'] - 1) * step * 1e3:+.0f} ms), "
                   f"{'within' if r['meets_target'] else 'over'} the {TARGET_OVERHEAD:.0%} target; all steps "
                   f"{r['overhead']:+.1%}, fastest step {r['min_ratio'] - 1:+.1%}.")
    head = lh["hardfocus"] - lh["plain"]
    material = head / step >= MATERIAL_HEAD_SHARE
    out.append(
        f"- The loss head alone costs {head * 1e3:+.0f} ms more than plain's ({head / step:+.1%} of a plain step), the "
        "same for every weighting (`none` included): `per_sample_nll` slices the logits (`logits[:, :-1]`, whose "
        "backward zero-fills a full-size gradient buffer: the extra `aten::fill_` calls in the profile) and runs the "
        "cross entropy on a transposed (B, V, T-1) view, where plain's loss shifts the labels and uses contiguous "
        "(B*T, V) rows. "
        + ("That is a material share of a step. " if material else "Timed alone, that is small next to a step. ")
        + "`StepWeighter.plan` itself is a few small tensor ops on B losses; the rest of the step (model forward and "
        "backward, clipping, AdamW) is the same code in every arm."
    )
    if CANDIDATE_ARM in rows:
        c, so = rows[CANDIDATE_ARM], rows["static+online"]
        faster = sum(a < b for a, b in zip(c["round_medians_s"], so["round_medians_s"]))
        out.append(
            "- Candidate change (in `training/weighting.py`, not made here): shift the labels instead of slicing the "
            "logits and run the cross entropy on contiguous rows, as transformers' own loss does: `shift = "
            "F.pad(labels[:, 1:], (0, 1), value=-100)`; `F.cross_entropy(logits.float().reshape(-1, V), "
            "shift.reshape(-1), ignore_index=-100, reduction='none').view(B, T)` (same values; padding and -100 labels "
            f"handled alike). Its loss head costs {(lh['candidate'] - lh['plain']) * 1e3:+.0f} ms vs plain's (current: "
            f"{head * 1e3:+.0f} ms); static+online trained with it runs at {c['verdict_ratio']:.3f}x plain vs "
            f"{so['verdict_ratio']:.3f}x with the current code, faster in {faster} of {len(c['round_medians_s'])} "
            f"rounds (fastest steps: {c['min_ratio']:.3f}x vs {so['min_ratio']:.3f}x). Differences of a few percent "
            "are at the edge of this machine's noise; the change makes hardfocus's loss the same computation as "
            "plain's, which leaves the weighting with no loss-side overhead to measure."
        )
    return out
