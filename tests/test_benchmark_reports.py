"""The benchmarks' reports: the shared Markdown table, every committed result rendered again from its JSON (the
same Markdown, so a change to a renderer that loses a row or a figure shows here), and the IFD arm's summary."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
RESULTS = BENCHMARKS / "results"


def test_markdown_table_aligns_and_keeps_empty_cells():
    from benchmarks.harness import fmt, markdown_table

    assert markdown_table(["a", "b", "c"], [[1, "", fmt(None)], ["x", 2.5, fmt(float("nan"), ".1f", "-")]], "lr") == (
        "| a | b | c |\n|---|---:|---:|\n| 1 | | n/a |\n| x | 2.5 | - |"
    )
    assert markdown_table(["a", "b"], [], "rl").splitlines()[1] == "|---:|---|"


def _quoted(markdown: str, label: str) -> str:
    return re.search(rf"^{label}: `(.*)`", markdown, re.MULTILINE).group(1)


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _render(module: str, function: str, *args) -> str:
    return getattr(importlib.import_module(f"benchmarks.{module}"), function)(*args)


# Committed Markdown -> the same Markdown made again from the committed JSON. Left out: quality*.md and the older
# selection_speed-*.md (readings and notes written into them by hand), scoring_speed-xeon-amx.md (its JSON predates
# the headline's ceiling figures).
RENDERED_AGAIN = {
    "scoring_speed.md": lambda md: _render("speed_report", "render_markdown", _json("scoring_speed.json")),
    "scoring_speed-ray-path.md": lambda md: _render("speed_report", "render_markdown", _json("scoring_speed-ray-path.json")),
    "selection_speed.md": lambda md: _render("selection_speed", "render_markdown", _json("selection_speed.json")),
    "training_memory.md": lambda md: _render("training_memory", "render_markdown", _json("training_memory.json")),
    "score_auc.md": lambda md: _render("score_auc", "markdown", _json("score_auc.json"), _quoted(md, "Command")),
    "scoring_scale-before.md": lambda md: _render("scoring_scale_report", "render", _json("scoring_scale-before.json")),
    "scoring_scale-after.md": lambda md: _render("scoring_scale_report", "render", _json("scoring_scale-after.json")),
    "scoring_scale-jsonl1-quiet.md": lambda md: _render("scoring_scale_report", "render", _json("scoring_scale-jsonl1-quiet.json")),
    "scoring_scale.md": lambda md: _render("scoring_scale_report", "compare", _json("scoring_scale-before.json"),
                                           _json("scoring_scale-after.json"), _quoted(md, "Written by")),
}


@pytest.mark.parametrize("name", sorted(RENDERED_AGAIN))
def test_committed_result_renders_again_the_same(name):
    markdown = (RESULTS / name).read_text()
    assert RENDERED_AGAIN[name](markdown) == markdown


def _ifd_run(ifd: bool, seconds: float, actor_s: float, nll: float) -> dict:
    scores = {"sample_id": ["a", "b"], "status": ["ok", "too_short"], "n_tokens": [5, 0], "nll_sum": [nll, None],
              "loss": [nll / 5, None]}
    if ifd:
        scores |= {"n_tokens_unconditioned": [5, 0], "nll_sum_unconditioned": [9.0, None], "ifd": [0.5, None]}
    return {"ifd": ifd, "seconds": seconds, "manifest_run": {"actor_s": actor_s}, "scores": scores}


def test_ifd_summary_gives_on_over_off_and_catches_a_changed_first_pass():
    from benchmarks import scoring_speed

    runs = [_ifd_run(False, 10, 8, 3.0), _ifd_run(True, 15, 12, 3.0), _ifd_run(True, 17, 14, 3.0), _ifd_run(False, 12, 10, 3.0)]
    s = scoring_speed.ifd_summary(runs)
    assert (s["off_wall_s"], s["on_wall_s"], s["off_units_s"], s["on_units_s"]) == (11, 16, 9, 13)
    assert s["wall_s_ratio"] == 16 / 11 and s["units_s_ratio"] == 13 / 9
    assert s["first_pass_identical"] and (s["first_pass_targets"], s["second_pass_targets"]) == (5, 5)
    assert (s["rows_ok"], s["ifd_below_1"]) == (1, 1)

    runs[2]["scores"]["nll_sum"] = [3.5, None]  # the first pass moved when IFD was on
    s = scoring_speed.ifd_summary(runs)
    assert not s["first_pass_identical"] and not runs[2]["first_pass_identical"] and runs[1]["first_pass_identical"]
    assert runs[2]["first_pass_max_abs_diff"] == 0.5
