"""The scoring-speed benchmark's report: the headline against the targets, Markdown tables, and the files."""

from __future__ import annotations

import logging
from pathlib import Path

from harness import CONTENDED_OTHER_LOAD, machine_lines, ratio, write_report
from speed_profile import profile_table

log = logging.getLogger("scoring_speed")

# The targets (DESIGN.md, "Fast scoring"), judged on the fastest steady-state hardfocus arm.
TARGET_SPEEDUP_VS_A = 5.0
TARGET_UTILISATION_BF16 = 0.5
STEADY_STATE_ARMS = ("c1", "c1c")  # (c2) times the whole score() call, start-up included


def headline(rows: list[dict], n_params: int, bf16_peak: float, fp32_peak: float) -> dict:
    """The fastest steady-state hardfocus arm against (a) and the bf16 peak, and whether the targets are met.

    Also the ceiling the two targets share: (a) runs the same FLOPs, so no implementation of this computation
    can be more than ``1 / utilisation(a)`` times faster than (a) on this machine (100% of the bf16 peak);
    where that is under the speed-up target, the target is out of reach here, however good the code.
    """
    steady = [r for r in rows if r["arm"] in STEADY_STATE_ARMS]
    best = max(steady, key=lambda r: r["tokens_per_s"])
    ref = next(r for r in rows if r["arm"] == "a")
    return {
        "ref_utilisation_bf16_peak": ref["utilisation_bf16_peak"],
        "ref_utilisation_fp32_peak": ref["useful_gflops"] / fp32_peak,
        "speedup_ceiling": 1 / ref["utilisation_bf16_peak"],
        "utilisation_for_speedup_target": TARGET_SPEEDUP_VS_A * ref["utilisation_bf16_peak"],
        "arm": best["arm"], "title": best["title"], "tokens_per_s": best["tokens_per_s"],
        "useful_gflops": best["useful_gflops"], "bf16_peak_gflops": bf16_peak,
        "speedup_vs_a": best["speedup_vs_a"], "utilisation_bf16_peak": best["utilisation_bf16_peak"],
        "target_speedup_vs_a": TARGET_SPEEDUP_VS_A, "speedup_met": best["speedup_vs_a"] >= TARGET_SPEEDUP_VS_A,
        "target_utilisation": TARGET_UTILISATION_BF16,
        "utilisation_met": best["utilisation_bf16_peak"] >= TARGET_UTILISATION_BF16,
        "tokens_per_s_for_utilisation_target": TARGET_UTILISATION_BF16 * bf16_peak * 1e9 / (2 * n_params),
    }


def headline_text(h: dict, rows: list[dict]) -> str:
    def met(flag: bool) -> str:
        return "**met**" if flag else "**NOT met**"

    lines = [
        f"Fastest hardfocus steady-state arm: {h['title']}, {h['tokens_per_s']:,.0f} tokens/s = "
        f"**{h['speedup_vs_a']:.1f}x (a)** and **{100 * h['utilisation_bf16_peak']:.1f}% of the measured bf16 matmul "
        f"peak** ({h['useful_gflops']:.1f} of {h['bf16_peak_gflops']:.0f} GFLOP/s).",
        "",
        f"- Target \"(c) at least {h['target_speedup_vs_a']:g}x (a)\": {met(h['speedup_met'])} "
        f"({h['speedup_vs_a']:.1f}x).",
        f"- Target \"at least {100 * h['target_utilisation']:.0f}% of the measured bf16 matmul peak\": "
        f"{met(h['utilisation_met'])} ({100 * h['utilisation_bf16_peak']:.1f}%; it needs "
        f"{h['tokens_per_s_for_utilisation_target']:,.0f} tokens/s, "
        f"{h['tokens_per_s_for_utilisation_target'] / h['tokens_per_s']:.1f}x the figure measured).",
        f"- Ceiling: (a) runs the same FLOPs at {100 * h['ref_utilisation_bf16_peak']:.1f}% of the bf16 peak (its fp32 "
        f"matmuls at {100 * h['ref_utilisation_fp32_peak']:.0f}% of the fp32 peak), so any bf16 implementation, even one "
        f"at 100% of the bf16 peak, is at most **{h['speedup_ceiling']:.1f}x (a)** here; "
        f"{h['target_speedup_vs_a']:g}x (a) needs {100 * h['utilisation_for_speedup_target']:.0f}% of the bf16 peak"
        + (" — **out of reach on this machine**." if h["speedup_ceiling"] < h["target_speedup_vs_a"] else "."),
    ]
    contended = [r for r in rows if _load_is_others(r) and (r["other_load"] or 0) > CONTENDED_OTHER_LOAD]
    if contended:
        lines.append(
            "- **Other work shared the CPUs** while " + ", ".join(f"({r['arm']})" for r in contended) + " ran "
            "(column \"other load\"); those figures, and ratios built on them, are not reliable: run it again on a "
            "quiet machine."
        )
    plain = next((r for r in rows if r["arm"] == "plain"), None)
    if plain is not None:
        lines.append(
            f"- Against the plain HF loop a user would write ({plain['tokens_per_s']:,.0f} tokens/s, "
            f"{100 * plain['utilisation_bf16_peak']:.1f}% of the bf16 peak): "
            + ", ".join(f"({r['arm']}) {ratio(r['tokens_per_s'], plain['tokens_per_s'])}" for r in rows
                        if r["arm"] != "plain") + "."
        )
    by_arm = {r["arm"]: r for r in rows}
    c2, c1 = by_arm.get("c2"), by_arm.get("c1")
    if c2 is not None:
        lines.append(
            f"- The whole `score()` call through Ray (c2), start-up included, runs at {c2['speedup_vs_a']:.1f}x (a) "
            f"on this corpus ({c2['scored_tokens']:,} tokens)."
        )
        if plain is not None:
            lines.append(
                f"- Target \"the default command (Ray), start-up included, at least as fast as the plain loop\": "
                f"{met(c2['tokens_per_s'] >= plain['tokens_per_s'])} ({c2['tokens_per_s']:,.0f} vs "
                f"{plain['tokens_per_s']:,.0f} tokens/s, {ratio(c2['tokens_per_s'], plain['tokens_per_s'])})."
            )
        steady = c2.get("steady_tokens_per_s")
        if c1 is not None and steady:
            lines.append(
                f"- Target \"Ray's steady-state scoring within 10% of the in-process scorer's\": "
                f"{met(steady >= 0.9 * c1['tokens_per_s'])} (the actor's {steady:,.0f} tokens/s = scored tokens / "
                f"seconds it spent on units, vs (c1) {c1['tokens_per_s']:,.0f}: "
                f"{ratio(steady, c1['tokens_per_s'])})."
            )
    return "\n".join(lines)


def _load_is_others(row: dict) -> bool:
    """Whether the row's other load leaves its own work out: (c2) runs in Ray's processes, which runs before
    ``other_load_excludes_ray`` counted as other load (its scoring actor among them)."""
    return row["arm"] != "c2" or bool((row["extra"] or {}).get("other_load_excludes_ray"))


def results_table(rows: list[dict]) -> str:
    plain = next((r for r in rows if r["arm"] == "plain"), None)  # results from before the plain loop have none
    with_plain = plain is not None
    lines = [
        "| arm | docs | scored tokens | positions computed (incl. padding) | setup s (excluded) | seconds "
        "| other load | tokens/s | useful GFLOP/s | util. of bf16 peak | speed-up vs (a) |"
        + (" vs plain loop |" if with_plain else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_plain else ""),
    ]
    for r in rows:
        positions = "n/a" if r["positions"] is None else f"{r['positions']:,}"
        setup = "in seconds" if r["setup_s"] is None else f"{r['setup_s']:.1f}"
        other = "n/a" if r["other_load"] is None or r["other_load"] != r["other_load"] else f"{r['other_load']:.2f}"
        lines.append(
            f"| {r['title']} | {r['docs']} | {r['scored_tokens']:,} | {positions} | {setup} | {r['seconds']:.2f} | "
            f"{other} | "
            f"{r['tokens_per_s']:,.0f} | {r['useful_gflops']:.1f} | {100 * r['utilisation_bf16_peak']:.2f}% | "
            f"{r['speedup_vs_a']:.1f}x |"
            + (f" {ratio(r['tokens_per_s'], plain['tokens_per_s'])} |" if with_plain else "")
        )
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    lines = [
        "| arm | against | docs | max abs diff (nats) | mean abs diff (nats) | tolerance max / mean | n_tokens equal "
        "| result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| ({c['arm']}) | ({c['against']}) | {c['docs']} | {c['max_abs_nats']:.5f} | {c['mean_abs_nats']:.5f} | "
            f"{c['tol_max']:g} / {c['tol_mean']:g} | {c['n_tokens_equal']} | {'ok' if c['passed'] else 'FAILED'} |"
        )
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    sections = [
        _header_section(report),
        "## Headline\n\n" + headline_text(report["headline"], report["arms"]),
        _machine_section(report),
        _peaks_section(report["peaks"], report["machine"]["torch_threads"]),
        _corpus_section(report["corpus"]),
        "## Results\n\n"
        "Useful FLOP/s = 2 x parameters x scored tokens / seconds (scored tokens = predicted positions, "
        "sum of len-1; attention FLOPs and padding are not counted as useful). Setup (model load; for (c1) and "
        "(c1c) the whole `Scorer` construction, compiling included) is timed but left out of seconds and "
        "tokens/s; (c2) times its whole call. Other load: CPU-seconds per second that other processes used while "
        f"seconds ran (/proc/stat less this process); about 0 on a quiet machine, above {CONTENDED_OTHER_LOAD:g} "
        "the figure is not reliable; "
        + ("for (c2) it includes Ray's own worker processes.\n\n" if not all(map(_load_is_others, report["arms"]))
           else "for (c2) less Ray's processes (this process's descendants, sampled every 0.2 s).\n\n")
        + results_table(report["arms"]),
        _profile_section(report),
        "## Correctness\n\n"
        "Per-document mean loss of each arm against the fp32 reference (a), over the documents (a) scored, and "
        "of the same-precision arms against each other over all documents.\n\n" + checks_table(report["checks"]),
        _notes_section({r["arm"]: r for r in report["arms"]}, report),
        "Absolute speeds on shared CPU machines vary by 2x or more between runs; compare only figures from the "
        "same run.",
    ]
    if report.get("annotations"):  # notes added to a committed result after the run, kept in its JSON
        sections.insert(2, "## Notes added after the run\n\n" + "\n".join(f"- {a}" for a in report["annotations"]))
    return "\n\n".join(sections) + "\n"


def _profile_section(report: dict) -> str:
    profiled = [r for r in report["arms"] if (r["extra"] or {}).get("profile")]
    if not profiled:
        return "## Where the time goes\n\nNot profiled in this run (`--skip-profile`)."
    row = profiled[0]
    p = row["extra"]["profile"]
    return (
        f"## Where the time goes\n\n({row['arm']}) once more under `torch.profiler` ({p['total_s']:.1f} s; "
        "self time per kernel class on the calling thread, which is wall time). FLOPs executed include padding "
        "and, for attention, the causal half of QK^T and AV (2 x T^2 x heads x head_dim per row and layer). "
        "Matmuls near the peak and the rest of the time elsewhere means the remaining gap is not in the matmuls.\n\n"
        + profile_table(p, report["peaks"]["bf16_peak"])
    )


def _header_section(report: dict) -> str:
    return (
        "# Scoring speed: reference vs padded batches vs hardfocus\n\n"
        f"Command: `{report['command']}`  \n"
        f"Date: {report['date']}  \n"
        f"Model: SmolLM2-135M ({report['model_path']}), {report['n_params']:,} parameters "
        "(tied embeddings counted once)"
    )


def _machine_section(report: dict) -> str:
    m = report["machine"]
    return "\n".join([
        "## Machine",
        "",
        *machine_lines(m, report["versions"]),
        f"- 1-minute load average: {m['load_avg_start']:.2f} at the start, {m['load_avg_end']:.2f} after the last "
        "arm (the run itself adds about its thread count; much more means other work shared the CPUs)",
    ])


def _peaks_section(p: dict, threads: int) -> str:
    sizes = p["sizes"]
    lines = [
        f"## Matmul peak (square matmuls, fastest of >= {p['reps']} reps and >= {p['min_seconds']:g} s, "
        f"{threads} threads, GFLOP/s)",
        "",
        "| dtype | " + " | ".join(f"n={n}" for n in sizes) + " | peak |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for when in ("start", "end"):
        for dtype in ("fp32", "bf16"):
            by_size = {int(k): v for k, v in p[when][dtype]["by_size"].items()}  # JSON keys are text
            cells = " | ".join(f"{by_size[n]:.0f}" for n in sizes)
            label = f"{dtype} ({'before' if when == 'start' else 'after'} the arms)"
            lines.append(f"| {label} | {cells} | {p[when][dtype]['gflops']:.0f} |")
    lines += [
        "",
        f"Peaks (the better of the two measurements): fp32 {p['fp32_peak']:.0f}, bf16 {p['bf16_peak']:.0f} GFLOP/s; "
        f"bf16 peak / fp32 peak = **{p['bf16_over_fp32']:.1f}x**. Utilisation below is against the bf16 peak.",
    ]
    return "\n".join(lines)


def _corpus_section(c: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in c["by_kind"].items())
    return (
        "## Corpus\n\n"
        f"{c['docs']} documents of real text from this machine ({kinds}), cut at seeded (seed {c['seed']}) "
        f"log-uniform token lengths in [{c['min_tokens']}, {c['max_tokens']}]: {c['tokens']:,} tokens, length min "
        f"{c['min']} / median {c['median']:.0f} / mean {c['mean']:.0f} / max {c['max']}. (a) runs on a "
        f"length-stratified subset of {c['ref_docs']} documents ({c['ref_tokens']:,} tokens); its tokens/s stands "
        "for the whole set."
    )


def _notes_section(arms: dict[str, dict], report: dict) -> str:
    batch = report["settings"]["padded_batch_size"]
    lines = [
        "## What each arm includes",
        "",
        "- (0) peak: one warm-up matmul per size, then the fastest of the timed reps; tensors preallocated; "
        "measured before the arms and again after them.",
        "- (a) `model(input_ids=ids, labels=ids).loss` per document, fp32, `torch.inference_mode`; model load and "
        "one warm-up document excluded.",
        f"- (b) batches of {batch} in input order, right-padded with an attention mask, bf16, "
        "`model(...).logits` (the full batch x seq x vocab tensor) then fp32 cross entropy, masked; model load and "
        "one warm-up batch excluded.",
    ]
    if "plain" in arms:
        lines.append(
            f"- (plain) the loop a user would write (`speed_arms.plain_loop`, ~25 lines): documents sorted by length, "
            f"cut into batches of at most {arms['plain']['extra']['token_budget']:,} padded tokens, right-padded with "
            "no attention mask (causal: no real position sees the padding, so SDPA keeps its causal flash kernel), "
            "bf16, the full logits, `F.cross_entropy(logits.float(), reduction='none')` summed over each document's "
            "positions; model load and one warm-up batch excluded. Its column \"vs plain loop\" is every arm's "
            "tokens/s over this one's."
        )
    for key in ("c1", "c1c"):
        if key in arms:
            lines.append(_scorer_note(key, arms[key]))
    if "c1" in arms and "c1c" in arms:
        lines.append(_break_even_note(arms["c1"], arms["c1c"]))
    if "c2" in arms:
        lines.append(_ray_note(arms["c2"]))
    if "c2l" in arms:
        lines.append(
            "- (c2l) the same whole call with `executor='local'`: no Ray, the same tokenising and scoring code in this "
            "process; (c2) against (c2l) is what Ray's orchestration costs. Steady state of (c2) and (c2l): scored "
            "tokens / `manifest.runs[-1].actor_s`, the seconds spent on units (model, loss, part write)."
        )
    lines += [f"- ({key}) **failed** and is left out: `{msg}`" for key, msg in report.get("failed", {}).items()]
    return "\n".join(lines)


def _scorer_note(key: str, row: dict) -> str:
    x = row["extra"]
    compiled = x["compiled"]
    text = (
        f"- ({key}) `Scorer(path, dtype='bfloat16', torch_threads=os.cpu_count(), compiled={compiled}).score(ids)`: "
        f"sorted token-budget batches ({x['batches']} batches under a {x['token_budget']}-token budget), fp32 loss "
        f"from the last hidden states in chunks of {x['chunk_tokens']} positions. Excluded: construction "
        f"({row['setup_s']:.1f} s: load + self-check{', whose first call compiles' if compiled else ''}) and one "
        "warm-up call."
    )
    if compiled:
        cache = x["inductor_cache"]
        warm = {True: "already held kernels", False: "was empty", None: "unknown"}[cache["warm"]]
        text += (
            f" `torch.compile` (backbone with dynamic shapes, the head for one static chunk shape); the inductor "
            f"cache ({cache['path']}) {warm} before construction. Graphs compiled: {x['graphs_construction']} in "
            f"construction, {x['graphs_warmup']} in the warm-up call, {x['graphs_timed']} in the timed call "
            "(anything but 0 there is compile time inside seconds)."
        )
    return text


def _break_even_note(eager: dict, compiled: dict) -> str:
    saved_per_token = 1 / eager["tokens_per_s"] - 1 / compiled["tokens_per_s"]
    extra_setup = compiled["setup_s"] - eager["setup_s"]
    if saved_per_token <= 0:
        return "- Compiling did not pay back in this run: (c1c) was no faster than (c1) in steady state."
    return (
        f"- Compiling pays back its {extra_setup:.1f} s of extra construction after about "
        f"{extra_setup / saved_per_token:,.0f} tokens at these speeds ((c1c) {compiled['tokens_per_s']:,.0f} vs "
        f"(c1) {eager['tokens_per_s']:,.0f} tokens/s)."
    )


def _ray_note(row: dict) -> str:
    x = row["extra"]
    run = x["manifest_run"]
    return (
        f"- (c2) the whole `scoring.score(ScoreConfig(executor='ray', dtype='bfloat16', compile='{x['compile']}'))` "
        "call on a JSONL shard of the same texts: model resolution and fingerprint, counting rows, starting a local "
        "Ray, tokenising (a Ray task), starting the actor, loading the model and its self-check"
        f"{' (compiling)' if x['compile'] == 'on' else ''}, scoring, writing the Parquet part and the manifest, and "
        f"shutting Ray down. Its tokens/s in the table is scored tokens / that wall time ({row['seconds']:.1f} s). "
        f"`compile='{x['compile']}'` is passed explicitly"
        + (
            " so that this whole-call figure stays comparable on small inputs, whatever `auto` would pick "
            "(`--ray-compile` runs it with `compile='on'`)."
            if x["compile"] == "off" else " (`--ray-compile`): compiling is inside the whole-call time."
        )
        + f" The job's own record, `manifest.runs[-1]`, says `wall_s` = {run['wall_s']:.1f} s and `tokens_per_s` = "
        f"{run['tokens_per_s']:,.0f} (`tokens_scored / wall_s` = {run['tokens_scored'] / run['wall_s']:,.0f}); its "
        "clock stops before the manifest is written. Neither figure is a scoring-only throughput: that is (c1)/(c1c)."
    )


def write_outputs(report: dict, out: Path) -> None:
    write_report(out, report, render_markdown(report))
