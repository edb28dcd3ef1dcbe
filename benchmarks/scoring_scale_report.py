"""The scoring-scale benchmark's reading: targets from the raw numbers, the Markdown of one run, before/after.

``scoring_scale`` measures and writes the JSON; this renders it (also again, from a committed JSON, with
``--render`` / ``--compare``), so a figure in the Markdown is always recomputed from the raw results.
"""

from __future__ import annotations

import math
import shlex

from benchmarks.harness import fmt, markdown_table, met

LAYOUTS = ("jsonl-1", "jsonl-1000", "parquet-10", "parquet-1rg")
TARGET_RATIO, TARGET_RSS_MB, TARGET_PLAN_S, TARGET_NOOP_S = 0.8, 2048, 30.0, 10.0


def size_name(n: int) -> str:
    exp = round(math.log10(n))
    return f"1e{exp}" if 10**exp == n else str(n)


def complete(r: dict) -> bool:
    return r.get("outcome") == "ok" and r.get("rows_ok", True) and r.get("wall_s") is not None


def marginal(scaling: dict, layout: str, lo: int, hi: int) -> float | None:
    """Rows added / seconds added from ``lo`` to ``hi`` rows of one layout (both runs complete): the steady-state
    rate, the fixed start-up cancelled out. None where either run is missing or ``hi`` was not the slower."""
    a, b = (scaling.get(f"{layout}@{size_name(n)}", {}) for n in (lo, hi))
    if not (complete(a) and complete(b)) or b["wall_s"] <= a["wall_s"]:
        return None
    return (hi - lo) / (b["wall_s"] - a["wall_s"])


def headline(report: dict) -> list[dict]:
    """Each target: the figure, and met (True) / not met (False) / not measured (None)."""
    s, ex, out = report["scaling"], report["extras"], []
    lo, mid, hi = 10**4, 10**5, 10**6
    for layout in LAYOUTS:
        early, late = marginal(s, layout, lo, mid), marginal(s, layout, mid, hi)
        a, b = s.get(f"{layout}@1e5", {}), s.get(f"{layout}@1e6", {})
        value, met = "not measured", None
        if early and late:
            ratio = late / early
            value = (f"{ratio:.2f}x: {late:,.0f} vs {early:,.0f} rows/s added; whole command "
                     f"{b['rows_per_s']:,.0f} vs {a['rows_per_s']:,.0f} rows/s")
            met = ratio >= TARGET_RATIO
        elif complete(a) and "wall_s" in b and not complete(b):  # 1e6 timed out or failed: too slow or broken
            value, met = f"1e6 {b['outcome']} with {b.get('rows', 0):,} rows", False
        out.append({"target": f"{layout}: marginal rows/s 1e5->1e6 >= {TARGET_RATIO:g} x marginal rows/s 1e4->1e5",
                    "value": value, "met": met})
    rss = max((r.get("driver_peak_rss_mb") or 0 for r in [*s.values(), *ex.values()]), default=0)
    out.append({"target": f"driver peak RSS < {TARGET_RSS_MB} MB", "value": f"{rss:,.0f} MB, the most of any arm",
                "met": rss < TARGET_RSS_MB if rss else None})
    plan = ex.get("planning", {}).get("planned_s")
    out.append({"target": f"planning 10,000 shards < {TARGET_PLAN_S:g} s", "value": "NA" if plan is None else f"{plan:.1f} s",
                "met": None if plan is None else plan < TARGET_PLAN_S})
    noop = ex.get("noop", {})
    ok = noop.get("outcome") == "ok"
    out.append({"target": f"no-op rerun < {TARGET_NOOP_S:g} s", "met": noop["wall_s"] < TARGET_NOOP_S if ok else None,
                "value": f"{noop['wall_s']:.1f} s at {size_name(noop['size'])} rows" if ok else noop.get("outcome", "-")})
    return out


def cell(r: dict) -> str:
    if "wall_s" not in r:
        return r.get("outcome", "").split(":")[0]  # the reason is given once, below the table
    text = f"{r['rows_per_s']:,.0f} rows/s ({r['wall_s']:.0f} s, {r['driver_peak_rss_mb']:,.0f} MB)"
    return text if r["outcome"] == "ok" and r.get("rows_ok", True) else f"{r['outcome']}: {r.get('rows', 0):,} rows, {text}"


def render(report: dict) -> str:
    m, ex = report["machine"], report["extras"]
    sizes = sorted({r["n"] for r in report["scaling"].values()})
    lines = [f"# Scoring orchestration at scale: {report['label']}", "", f"Command: `{report['command']}`  ",
             f"Measured: {report['repo']} at {report['commit'][:12]}{' (dirty)' if report['dirty'] else ''}, "
             f"{report['date']}  ", f"Machine: {m['cpu_model']}, {m['cpus']} CPUs; load average {m['load_avg_start']:.2f} "
             f"at the start, {m['load_avg_end']:.2f} at the end  ",
             f"Score flags: `{shlex.join(report['settings']['score_flags'])}` (1-layer Llama, hidden 16), Ray local",
             "", "## Targets", ""]
    lines += [f"- {h['target']}: {met(h['met'])} ({h['value']})" for h in headline(report)]
    lines += ["", "## Rows/s of the whole `score` command (wall s, driver peak RSS)", "",
              markdown_table(["layout", *map(size_name, sizes)], [
                  [layout, *(cell(report["scaling"].get(f"{layout}@{size_name(n)}", {})) for n in sizes)] for layout in LAYOUTS
              ], "lr")]
    loads = [f"{k} {r['load_avg_start']:.1f}" for k, r in [*report["scaling"].items(), *ex.items(),
                                                          *(("resume rerun", ex["resume"].get("rerun", {})),)]
             if "load_avg_start" in r]
    reasons: dict[str, list[str]] = {}
    for k, r in report["scaling"].items():
        if "wall_s" not in r:
            reasons.setdefault(r["outcome"], []).append(k)
    lines += [f"\n{', '.join(keys)}: {why}" for why, keys in reasons.items()]
    lines += ["", "Rows/s = rows / wall time of the whole command: Python and Ray start-up, model load and planning "
              "included, so the smaller sizes read low. A timed-out arm's figure is the rows it wrote by then."]
    pairs = list(zip(sizes, sizes[1:]))
    if pairs:
        lines += ["", "## Marginal (steady-state) rate between sizes", "",
                  "Rows added / seconds added, (N2 - N1) / (wall(N2) - wall(N1)), both runs complete: the fixed start-up "
                  "cancels out. A cost linear in rows keeps the ratio of the later to the earlier rate at ~1.0.", ""]
        header = ["layout", *(f"{size_name(a)}->{size_name(b)}" for a, b in pairs),
                  *(f"ratio {size_name(b)}->{size_name(c)} / {size_name(a)}->{size_name(b)}"
                    for (a, b), (_, c) in zip(pairs, pairs[1:]))]
        rows = []
        for layout in LAYOUTS:
            rates = [marginal(report["scaling"], layout, a, b) for a, b in pairs]
            rows.append([layout, *("NA" if r is None else f"{r:,.0f} rows/s" for r in rates),
                         *("NA" if not (r1 and r2) else f"{r2 / r1:.2f}x" for r1, r2 in zip(rates, rates[1:]))])
        lines.append(markdown_table(header, rows, "lr"))
    lines += ["", f"1-minute load average as each arm started ({m['cpus']} CPUs; a run adds about 2 of its own): "
              + ", ".join(loads) + "."]
    lines += ["", "## Other arms", ""]
    notes = {
        "planning": lambda r: f"until the planning line, {r.get('shards', 0):,} shards; "
                              + ("line not seen: NA" if r.get("planned_s") is None else f"{r['planned_s']:.1f} s"),
        "noop": lambda r: f"rerun on the complete {size_name(r.get('size', 1))}-row directory",
        "select": lambda r: f"`hardfocus select` on the {size_name(r.get('size', 1))}-row scores",
        "resume": lambda r: "" if "rows_ok" not in r else (
            f"at {size_name(r['size'])} rows: killed at {r['killed_at_s']:.0f} s with {r['parts_at_kill']}/"
            f"{r['parts_expected']} parts; rerun: {r['rows']:,} rows, {r['unique_ids']:,} distinct ids -> "
            + ("ok" if r["rows_ok"] else "**ROWS LOST OR DUPLICATED**")),
    }
    lines.append(markdown_table(["arm", "outcome", "seconds", "driver peak RSS MB", "notes"], [
        [key, r["outcome"], fmt(r.get("planned_s") if key == "planning" else r.get("wall_s"), ".1f", "NA"),
         fmt(r.get("driver_peak_rss_mb"), ",.0f", ""), "; ".join(filter(None, [notes[key](r), r.get("skip_reason")]))]
        for key, r in ex.items()], "llrrl"))
    earlier: dict[str, list[str]] = {}
    for k, r in [*report["scaling"].items(), *ex.items()]:
        if "reused_from" in r:
            earlier.setdefault(r.get("measured_by", r["reused_from"]), []).append(k)
    lines += [f"\nMeasured by an earlier run of the same commit (`--reuse`): {', '.join(keys)} by `{cmd}`"
              for cmd, keys in earlier.items()]
    return "\n".join(lines) + "\n"


def compare(before: dict, after: dict, command: str = "") -> str:
    """One before/after table of every arm's figure (whole-command and marginal rows/s per layout, the other arms),
    the load each arm started under, and the targets on both sides (recomputed from the raw numbers)."""
    rate = lambda r: r.get("rows_per_s") if r.get("outcome") == "ok" else None  # noqa: E731
    wall = lambda r: r.get("wall_s") if r.get("outcome") == "ok" else None  # noqa: E731
    arm = lambda key: lambda rep: rep["scaling"].get(key) or rep["extras"].get(key) or {}  # noqa: E731
    rows = [(k, "rows/s, whole command", arm(k), rate) for k in {**before["scaling"], **after["scaling"]}]
    sizes = sorted({r["n"] for rep in (before, after) for r in rep["scaling"].values()})
    for layout in LAYOUTS:
        for lo, hi in zip(sizes, sizes[1:]):
            rows.append((f"{layout} {size_name(lo)}->{size_name(hi)}", "marginal rows/s (rows added / s added)",
                         lambda rep, ly=layout, a=lo, b=hi: {"value": marginal(rep["scaling"], ly, a, b)},
                         lambda r: r["value"]))
    rows += [("planning", "s to the planning line", arm("planning"), lambda r: r.get("planned_s")),
             ("noop", "s", arm("noop"), wall), ("resume", "rerun s", arm("resume"), wall),
             ("select", "s", arm("select"), wall)]

    def side(name: str, rep: dict) -> list[str]:
        earlier = dict.fromkeys(r["measured_by"] for r in [*rep["scaling"].values(), *rep["extras"].values()]
                                if r.get("measured_by") and r["measured_by"] != rep["command"])
        return [f"{name}: `{rep['command']}` on {rep['repo']} at {rep['commit'][:12]}{' (dirty)' if rep['dirty'] else ''}, "
                f"{rep['date']}, load average {rep['machine']['load_avg_start']:.2f} at the start  ",
                *(f"{name}, arms reused from an earlier run of the same commit: `{c}`  " for c in earlier)]

    lines = ["# Scoring orchestration at scale: before / after", "",
             *([f"Written by: `{command}`  "] if command else []), *side("Before", before), *side("After", after),
             ""]
    load = lambda r: (r.get("load_avg_start") or r.get("rerun", {}).get("load_avg_start"))  # noqa: E731
    table = []
    for key, what, pick, get in rows:
        b, a = pick(before), pick(after)
        vb, va = get(b), get(a)
        at = lambda r: f" at {size_name(r['size'])} rows" if "size" in r else ""  # noqa: E731
        fb, fa = ((r.get("outcome", "NA").split(":")[0] if v is None else f"{v:,.1f}{at(r)}")
                  for v, r in ((vb, b), (va, a)))
        same = vb and va and b.get("size") == a.get("size")
        loads = " / ".join("-" if load(r) is None else f"{load(r):.1f}" for r in (b, a))
        table.append([key, what, fb, fa, f"{va / vb:.2f}x" if same else "-", "" if loads == "- / -" else loads])
    targets = [[ha["target"], f"{met(hb['met'])} ({hb['value']})", f"{met(ha['met'])} ({ha['value']})"]
               for hb, ha in zip(headline(before), headline(after))]
    lines += [markdown_table(["arm", "figure", "before", "after", "after / before", "load at start, before / after"],
                             table, "llrrrl"),
              "", "Whole-command rows/s include 35-45 s of fixed start-up; the marginal rates cancel it. NA: not run, "
              "or not complete at one of the two sizes. Load: 1-minute load average as the arm started (2 CPUs; a run "
              "adds about 2 of its own).", "", markdown_table(["target", "before", "after"], targets)]
    return "\n".join(lines) + "\n"
