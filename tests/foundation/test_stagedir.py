"""The stage-directory protocol (hardfocus/stagedir.py): an output is recognised by its content, never by a file
name; one output has one lock however it is spelled; --overwrite replaces only an output of the same stage, never an
input or a directory of the user's; a stage never writes where it reads; a concurrent run is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from hardfocus.errors import HardfocusError
from hardfocus.stagedir import what_changed
from scoring import ScoreConfig, score
from tests.scoring.helpers import TEXTS, make_corpus, score_config, write_texts
from tests.selection.fake_scores import write_scores
from tests.selection.helpers import random_losses, select_scores

ENV = os.environ | {"PYTHONPATH": os.getcwd()}


def test_one_output_reached_through_a_symlink_has_one_lock(tmp_path):
    """The lock is `.NAME.lock` beside the path *as spelled*: a run writing `out/` and another writing `link/`
    (a symlink to out/) take two different locks and both write the same directory."""
    from hardfocus.kinds import SELECTED
    from hardfocus.stagedir import StageDir
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    holder = StageDir(str(tmp_path / "out"), SELECTED)
    holder.lock()  # a run writing out/ (the select of another terminal)
    try:
        with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):
            select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "link")), progress=False)
    finally:
        holder.unlock()


def test_an_output_spelled_with_a_trailing_dot_is_the_same_directory(tmp_path):
    """`-o sel/.` names sel/, but StageDir takes '.' as the output's name: its lock is `sel/...lock` (inside the
    output, another lock than `-o sel`'s), its staging directory `sel/...tmp-*`, and the final rename of `sel/.`
    fails with a raw `OSError: [Errno 16] Device or resource busy` (on the very first run too), leaving the
    staging directory inside the output."""
    from hardfocus.kinds import SELECTED
    from hardfocus.stagedir import StageDir
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    assert StageDir(f"{tmp_path}/sel/.", SELECTED).lock_path == StageDir(f"{tmp_path}/sel", SELECTED).lock_path
    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    try:
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=f"{tmp_path}/sel/."), progress=False)
    except HardfocusError:
        return
    assert (tmp_path / "sel" / "summary.json").exists()


def test_an_output_that_is_a_symlink_loop_is_a_one_line_error(tmp_path):
    """The first review resolved symlinks (one spelling, one lock); a link that loops (`ln -s out out`, or two links to
    each other) makes `StageDir.open` list it (`os.listdir`): a raw `OSError: [Errno 40] Too many levels of symbolic
    links` traceback, exit 1, instead of the one-line error every other unusable output gets."""
    import os

    from typer.testing import CliRunner

    from pipelines.cli import app
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    os.symlink("a", tmp_path / "b")
    os.symlink("b", tmp_path / "a")
    result = CliRunner().invoke(app, ["-q", "select", str(tmp_path / "scores"), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "Traceback" not in result.output and str(tmp_path / "a") in result.output


def test_score_never_empties_a_directory_of_the_users_that_happens_to_hold_a_job_json(tmp_path, tiny_model_dir):
    """`identify` calls any directory holding a file named job.json an (unfinished) scores/ directory; `open` then
    finds its "identity" different and, since it holds no part files, *replaces* it without --overwrite:
    `clear()` deletes every file in it. job.json is a common name (CI jobs, schedulers, experiment trackers)."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "job.json").write_text(json.dumps({"name": "my sweep", "gpus": 8}))
    (mine / "results.csv").write_text("step,loss\n1,2.0\n")
    (mine / "notes.md").write_text("do not lose")
    try:
        score(score_config([tmp_path / "in"], mine, tiny_model_dir), progress=False)
    except HardfocusError as exc:
        assert "experiment" in str(exc)
    assert (mine / "notes.md").exists() and (mine / "results.csv").exists(), "the user's files were deleted"
    assert json.loads((mine / "job.json").read_text()) == {"name": "my sweep", "gpus": 8}


def test_score_never_empties_a_users_directory_whose_job_json_has_the_legacy_keys(tmp_path, tiny_model_dir):
    """The first review's fix recognises a scores/ job file by its stage tag *or* by the keys of an untagged one of
    an earlier version, {"identity", "runs"}: a job.json of the user's with those two (common) keys, e.g. a scheduler's
    {"identity": "svc-account", "runs": [...]}, is again taken for an unfinished scores/ directory, found to hold no
    parts, and *replaced* without --overwrite: `clear()` deletes every file in it."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "job.json").write_text(json.dumps({"identity": "svc-training", "runs": [{"id": 1}]}))
    (mine / "notes.md").write_text("do not lose")
    try:
        score(score_config([tmp_path / "in"], mine, tiny_model_dir), progress=False)
    except HardfocusError as exc:
        assert "experiment" in str(exc)
    assert (mine / "notes.md").exists(), "the user's files were deleted"


def test_overwrite_never_empties_a_directory_no_stage_wrote_that_holds_a_manifest_json(tmp_path):
    """README: --overwrite replaces "never ... a directory no stage wrote". A directory with a manifest.json of
    its own (a web app, a dataset card) is taken for a finished scores/ directory, and `select -o it --overwrite`
    replaces it whole (the old directory is renamed aside and deleted)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    site = tmp_path / "site"
    site.mkdir()
    (site / "summary.json").write_text(json.dumps({"title": "my site"}))
    (site / "index.html").write_text("<h1>hello</h1>")
    try:
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(site), overwrite=True), progress=False)
    except HardfocusError as exc:
        assert "site" in str(exc)
    assert (site / "index.html").exists(), "a directory no hardfocus stage wrote was replaced"


def _listing(path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir())}


def test_overwrite_never_replaces_an_input_or_another_stages_output(tmp_path):
    """Before: `select S -o S --overwrite` deleted the scores."""
    write_scores(tmp_path / "s", random_losses(60, 1))
    write_scores(tmp_path / "other", random_losses(60, 2), shard="other.jsonl")
    before, other = _listing(tmp_path / "s"), _listing(tmp_path / "other")
    with pytest.raises(HardfocusError, match="is the input"):
        select_scores([tmp_path / "s"], tmp_path / "s", overwrite=True)
    with pytest.raises(HardfocusError, match="overlaps the input"):  # inside an input: it would be read next time
        select_scores([tmp_path / "s"], tmp_path / "s" / "selected", overwrite=True)
    with pytest.raises(HardfocusError, match=r"is a finished scores/ directory .*, not a selected/ output"):
        select_scores([tmp_path / "s"], tmp_path / "other", overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(HardfocusError, match="a directory that no hardfocus stage wrote"):
        select_scores([tmp_path / "s"], tmp_path / "notes", overwrite=True)
    assert _listing(tmp_path / "s") == before and _listing(tmp_path / "other") == other
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_score_refuses_an_output_inside_its_input(tmp_path, tiny_model_dir):
    """`score corpus -o corpus/scores` would read its own parts as shards on the next run."""
    make_corpus(tmp_path, n_parquet=12, n_jsonl=4)
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "in" / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32")
    with pytest.raises(HardfocusError, match="overlaps the input"):
        score(cfg, progress=False)
    assert not (tmp_path / "in" / "scores").exists()


def test_a_glob_that_would_read_the_output_is_refused_once_it_does(tmp_path, tiny_model_dir):
    """`score 'in/**/*.parquet' -o in/scores`: the second run's glob matches the first run's parts."""
    make_corpus(tmp_path, n_parquet=12, n_jsonl=4)
    cfg = ScoreConfig(inputs=[f"{tmp_path}/in/**/*.parquet"], output=str(tmp_path / "in" / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32")
    assert score(cfg, progress=False).manifest.rows == 12
    with pytest.raises(HardfocusError, match=r"the input '.*in/scores/part-.*\.parquet' lies inside the output"):
        score(cfg, progress=False)


def test_a_concurrent_selection_is_refused_and_its_staging_directory_kept(tmp_path):
    """Before: the second `select` removed the first one's staging directory as 'interrupted'."""
    rng = np.random.default_rng(0)
    write_scores(tmp_path / "scores", rng.gamma(4, 0.7, 200_000).tolist(), rows_per_part=2000)
    sel = tmp_path / "selected"
    args = [sys.executable, "-m", "pipelines.cli", "-q", "select", str(tmp_path / "scores"), "-o", str(sel)]
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def staging():
        return [p for p in tmp_path.glob(".selected.tmp-*") if list(p.glob("part-*.parquet"))]

    try:
        deadline = time.time() + 240
        while not staging():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # deterministic: the first run is mid-write while the second one starts
        second = subprocess.run(args, env=ENV, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert "another hardfocus run is writing to" in second.stderr.strip().splitlines()[-1]
        assert staging(), "the live run's staging directory was removed"
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    summary = json.loads((sel / "summary.json").read_text())
    assert pl.read_parquet(sel / "part-*.parquet").height == summary["bands"]["kept"] == 100_000


def test_what_changed_names_the_inputs_that_changed_then_the_settings():
    """The words an output replaced or refused for another run's identity gets: the inputs that are not among those it
    was made from, by their names (never one that did not change: an input added, inputs reordered, some left out),
    then the settings that differ, dotted; an output of an earlier version's layout is said to be one."""
    named = {"scores": ["work/s1", "work/s2"], "model": ["smollm2-135m"]}
    before = {"parameters": {"keep": 0.5, "drop_top": 0.1}, "scores": ["d1", "d2"], "model": "m"}
    assert what_changed(before, before | {"scores": ["d1", "d3"]}, named) == ("made from other inputs (its input "
                                                                             "'work/s2' is new or changed since)")
    both = before | {"scores": ["d0", "d3"], "parameters": {"keep": 0.4, "drop_top": 0.2}}
    assert what_changed(before, both, named) == ("made from other inputs (its input 'work/s1' is new or changed since; "
                                                 "its input 'work/s2' is new or changed since) and with other settings "
                                                 "(differs in: parameters.drop_top, parameters.keep)")
    assert what_changed(before | {"scores": ["d1"]}, before, named) == ("made from other inputs (its input 'work/s2' is new "
                                                                       "or changed since)")  # one added: not 'work/s1'
    assert what_changed(before, before | {"scores": ["d2", "d1"]}, {"scores": ["work/s2", "work/s1"]}) == (
        "made from other inputs (its inputs are given in another order)")
    assert what_changed(before, before | {"scores": ["d1"]}, {"scores": ["work/s1"]}) == (
        "made from other inputs (its inputs are 1 of the 2 it was made from)")
    assert what_changed(before, before | {"model": "n"}) == "made with other settings (differs in: model)"  # not named
    assert what_changed(before | {"parts": 1}, before | {"parts": 2}) == (
        "made by an earlier version of hardfocus (its files lack what this version checks)")
    assert what_changed(None, before) == ("made with other settings (differs in: (no recorded identity: written by an "
                                          "older hardfocus or damaged))")
