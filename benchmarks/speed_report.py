"""The scoring-speed benchmark's report: the headline against the targets, Markdown tables, and the files."""

from __future__ import annotations

from benchmarks.harness import CONTENDED_OTHER_LOAD, fmt, machine_lines, markdown_table, met, ratio
from benchmarks.speed_profile import profile_table

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
    best = max((r for r in rows if r["arm"] in STEADY_STATE_ARMS), key=lambda r: r["tokens_per_s"])
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
    lines = [
        f"Fastest hardfocus steady-state arm: {h['title']}, {h['tokens_per_s']:,.0f} tokens/s = "
        f"**{h['speedup_vs_a']:.1f}x (a)** and **{100 * h['utilisation_bf16_peak']:.1f}% of the measured bf16 matmul "
        f"peak** ({h['useful_gflops']:.1f} of {h['bf16_peak_gflops']:.0f} GFLOP/s).",
        "",
        f"- Target \"(c) at least {h['target_speedup_vs_a']:g}x (a)\": {met(h['speedup_met'])} ({h['speedup_vs_a']:.1f}x).",
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
    by_arm = {r["arm"]: r for r in rows}
    plain, c2, c1 = by_arm.get("plain"), by_arm.get("c2"), by_arm.get("c1")
    if plain is not None:
        lines.append(
            f"- Against the plain HF loop a user would write ({plain['tokens_per_s']:,.0f} tokens/s, "
            f"{100 * plain['utilisation_bf16_peak']:.1f}% of the bf16 peak): "
            + ", ".join(f"({r['arm']}) {ratio(r['tokens_per_s'], plain['tokens_per_s'])}" for r in rows
                        if r["arm"] != "plain") + "."
        )
    if c2 is not None:
        lines.append(f"- The whole `score()` call through Ray (c2), start-up included, runs at {c2['speedup_vs_a']:.1f}x "
                     f"(a) on this corpus ({c2['scored_tokens']:,} tokens).")
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
                f"seconds it spent on units, vs (c1) {c1['tokens_per_s']:,.0f}: {ratio(steady, c1['tokens_per_s'])})."
            )
    return "\n".join(lines)


def _load_is_others(row: dict) -> bool:
    """Whether the row's other load leaves its own work out: (c2) runs in Ray's processes, which runs before
    ``other_load_excludes_ray`` counted as other load (its scoring actor among them)."""
    return row["arm"] != "c2" or bool((row["extra"] or {}).get("other_load_excludes_ray"))


def results_table(rows: list[dict]) -> str:
    plain = next((r for r in rows if r["arm"] == "plain"), None)  # results from before the plain loop have none
    header = ["arm", "docs", "scored tokens", "positions computed (incl. padding)", "setup s (excluded)", "seconds",
              "other load", "tokens/s", "useful GFLOP/s", "util. of bf16 peak", "speed-up vs (a)"]
    return markdown_table(header + ["vs plain loop"] * (plain is not None), [
        [r["title"], r["docs"], f"{r['scored_tokens']:,}", fmt(r["positions"], ","), fmt(r["setup_s"], ".1f", "in seconds"),
         f"{r['seconds']:.2f}", fmt(r["other_load"], ".2f"), f"{r['tokens_per_s']:,.0f}", f"{r['useful_gflops']:.1f}",
         f"{100 * r['utilisation_bf16_peak']:.2f}%", f"{r['speedup_vs_a']:.1f}x"]
        + ([ratio(r["tokens_per_s"], plain["tokens_per_s"])] if plain is not None else []) for r in rows], "lr")


def checks_table(checks: list[dict]) -> str:
    header = ["arm", "against", "docs", "max abs diff (nats)", "mean abs diff (nats)", "tolerance max / mean",
              "n_tokens equal", "result"]
    return markdown_table(header, [
        [f"({c['arm']})", f"({c['against']})", c["docs"], f"{c['max_abs_nats']:.5f}", f"{c['mean_abs_nats']:.5f}",
         f"{c['tol_max']:g} / {c['tol_mean']:g}", c["n_tokens_equal"], "ok" if c["passed"] else "FAILED"] for c in checks
    ], "llrrrrll")


def render_markdown(report: dict) -> str:
    ray_load = ("for (c2) it includes Ray's own worker processes." if not all(map(_load_is_others, report["arms"]))
                else "for (c2) less Ray's processes (this process's descendants, sampled every 0.2 s).")
    sections = [
        _header_section(report),
        "## Headline\n\n" + headline_text(report["headline"], report["arms"]),
        _machine_section(report),
        _peaks_section(report["peaks"], report["machine"]["torch_threads"]),
        _corpus_section(report["corpus"]),
        "## Results\n\nUseful FLOP/s = 2 x parameters x scored tokens / seconds (scored tokens = predicted positions, "
        "sum of len-1; attention FLOPs and padding are not counted as useful). Setup (model load; for (c1) and "
        "(c1c) the whole `Scorer` construction, compiling included) is timed but left out of seconds and "
        "tokens/s; (c2) times its whole call. Other load: CPU-seconds per second that other processes used while "
        f"seconds ran (/proc/stat less this process); about 0 on a quiet machine, above {CONTENDED_OTHER_LOAD:g} "
        f"the figure is not reliable; {ray_load}\n\n" + results_table(report["arms"]),
        _profile_section(report),
        "## Correctness\n\nPer-document mean loss of each arm against the fp32 reference (a), over the documents (a) "
        "scored, and of the same-precision arms against each other over all documents.\n\n"
        + checks_table(report["checks"]),
        _notes_section({r["arm"]: r for r in report["arms"]}, report),
        "Absolute speeds on shared CPU machines vary by 2x or more between runs; compare only figures from the "
        "same run.",
    ]
    if report.get("annotations"):  # notes added to a committed result after the run, kept in its JSON
        sections.insert(2, "## Notes added after the run\n\n" + "\n".join(f"- {a}" for a in report["annotations"]))
    return "\n\n".join(sections) + "\n"


def _profile_section(report: dict) -> str:
    row = next((r for r in report["arms"] if (r["extra"] or {}).get("profile")), None)
    if row is None:
        return "## Where the time goes\n\nNot profiled in this run (`--skip-profile`)."
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
        f"# Scoring speed: reference vs padded batches vs hardfocus\n\nCommand: `{report['command']}`  \n"
        f"Date: {report['date']}  \nModel: SmolLM2-135M ({report['model_path']}), {report['n_params']:,} parameters "
        "(tied embeddings counted once)"
    )


def _machine_section(report: dict) -> str:
    m = report["machine"]
    return "\n".join([
        "## Machine", "", *machine_lines(m, report["versions"]),
        f"- 1-minute load average: {m['load_avg_start']:.2f} at the start, {m['load_avg_end']:.2f} after the last "
        "arm (the run itself adds about its thread count; much more means other work shared the CPUs)",
    ])


def _peaks_section(p: dict, threads: int) -> str:
    sizes = p["sizes"]
    rows = []
    for when in ("start", "end"):
        for dtype in ("fp32", "bf16"):
            by_size = {int(k): v for k, v in p[when][dtype]["by_size"].items()}  # JSON keys are text
            rows.append([f"{dtype} ({'before' if when == 'start' else 'after'} the arms)",
                         *(f"{by_size[n]:.0f}" for n in sizes), f"{p[when][dtype]['gflops']:.0f}"])
    return (
        f"## Matmul peak (square matmuls, fastest of >= {p['reps']} reps and >= {p['min_seconds']:g} s, "
        f"{threads} threads, GFLOP/s)\n\n" + markdown_table(["dtype", *(f"n={n}" for n in sizes), "peak"], rows, "lr")
        + f"\n\nPeaks (the better of the two measurements): fp32 {p['fp32_peak']:.0f}, bf16 {p['bf16_peak']:.0f} "
        f"GFLOP/s; bf16 peak / fp32 peak = **{p['bf16_over_fp32']:.1f}x**. Utilisation below is against the bf16 peak."
    )


def _corpus_section(c: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in c["by_kind"].items())
    return (
        f"## Corpus\n\n{c['docs']} documents of real text from this machine ({kinds}), cut at seeded (seed {c['seed']}) "
        f"log-uniform token lengths in [{c['min_tokens']}, {c['max_tokens']}]: {c['tokens']:,} tokens, length min "
        f"{c['min']} / median {c['median']:.0f} / mean {c['mean']:.0f} / max {c['max']}. (a) runs on a "
        f"length-stratified subset of {c['ref_docs']} documents ({c['ref_tokens']:,} tokens); its tokens/s stands "
        "for the whole set."
    )


def _notes_section(arms: dict[str, dict], report: dict) -> str:
    lines = [
        "## What each arm includes", "",
        "- (0) peak: one warm-up matmul per size, then the fastest of the timed reps; tensors preallocated; "
        "measured before the arms and again after them.",
        "- (a) `model(input_ids=ids, labels=ids).loss` per document, fp32, `torch.inference_mode`; model load and "
        "one warm-up document excluded.",
        f"- (b) batches of {report['settings']['padded_batch_size']} in input order, right-padded with an attention "
        "mask, bf16, `model(...).logits` (the full batch x seq x vocab tensor) then fp32 cross entropy, masked; model "
        "load and one warm-up batch excluded.",
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
    lines += [_scorer_note(key, arms[key]) for key in ("c1", "c1c") if key in arms]
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


def render_ifd(report: dict) -> str:
    """(ifd) alone: what IFD's second pass costs against plain scoring, and whether the first pass stays the same."""
    s, c, runs = report["summary"], report["corpus"], report["runs"]
    table = markdown_table(
        ["round", "`ifd`", "wall s (whole call)", "s on units", "other load", "scored tokens", "tokens/s (wall)",
         "tokens/s (units)", "first pass equal to the first plain run's (max abs diff of nll_sum)"],
        [[r["round"], "on" if r["ifd"] else "off", f"{r['seconds']:.1f}", f"{r['manifest_run']['actor_s']:.1f}",
          fmt(r["other_load"], ".2f"), f"{r['manifest_run']['tokens_scored']:,}",
          f"{r['manifest_run']['tokens_scored'] / r['seconds']:,.0f}",
          f"{r['manifest_run']['tokens_scored'] / r['manifest_run']['actor_s']:,.0f}",
          f"{'yes' if r['first_pass_identical'] else '**NO**'} ({r['first_pass_max_abs_diff']:.2g})"] for r in runs], "llr")
    share, targets = c["second_pass_positions"] / c["conditioned_positions"], s["second_pass_targets"]
    return "\n".join([
        "# Scoring speed: IFD's second pass against plain scoring", "",
        f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
        f"Model: SmolLM2-135M ({report['model_path']}), bf16, compile={report['settings']['compile']}", "",
        "## Headline", "",
        f"- `ifd=True` takes **{s['wall_s_ratio']:.2f}x** the wall time of the same call without it ({s['on_wall_s']:.1f} "
        f"vs {s['off_wall_s']:.1f} s, medians of {report['settings']['rounds']} runs each) and **{s['units_s_ratio']:.2f}x** "
        f"its seconds on units ({s['on_units_s']:.1f} vs {s['off_units_s']:.1f} s: the model's passes, the loss and the "
        "part write; start-up, model load and tokenising left out).",
        f"- The second pass computes {share:.0%} as many positions as the first ({c['second_pass_positions']:,} vs "
        f"{c['conditioned_positions']:,}, before padding): the {c['turns']:,} assistant turns alone, each behind its "
        f"header ({c['second_pass_prefix_positions']:,} positions), of which it scores {targets:,} tokens "
        f"(`n_tokens_unconditioned`, {targets / c['conditioned_positions']:.0%} of the first pass's positions; the first "
        f"pass scores the same {s['first_pass_targets']:,}).",
        "- First pass unchanged by `ifd` (sample ids, status, n_tokens, nll_sum and loss equal row by row in every "
        f"run): {'**yes**' if s['first_pass_identical'] else '**NO**'}.",
        *(["- **Other work shared the CPUs** (column \"other load\" above "
           f"{CONTENDED_OTHER_LOAD:g}): these figures are not reliable; run it again on a quiet machine."]
          if any((r["other_load"] or 0) > CONTENDED_OTHER_LOAD for r in runs) else []),
        "",
        "## Runs", "",
        "Each run is the whole in-process `scoring.score(ScoreConfig(executor='local', dtype='bfloat16', "
        f"compile='{report['settings']['compile']}', format='messages', max_tokens={report['settings']['max_tokens']}, "
        "ifd=...))` call of (c2l) on one JSONL shard, timed from the call to its return; \"s on units\" is the job's own "
        "`manifest.runs[-1].actor_s`. One untimed call on 4 of the conversations with `ifd` on comes first (imports, "
        "first kernels); then the order of the two settings alternates by round. Tokens/s = scored tokens (the first "
        "pass's, the same in both settings) / seconds.", "",
        table, "",
        "## Corpus", "",
        f"{c['conversations']} conversations of the chat demo corpus (`hardfocus demo-corpus --kind chat`, seed "
        f"{c['seed']}, no injected noise, its groups in equal parts), {c['scored']} of them scored ({s['rows_ok']} ok "
        f"with `ifd`; IFD < 1 in {s['ifd_below_1']}).", "",
        _machine_section(report), "",
    ])
