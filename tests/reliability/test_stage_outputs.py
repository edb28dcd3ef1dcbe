"""Stage outputs and the inputs of selection: damaged, repeated, foreign or shared directories are refused in
one line or recovered exactly (issue findings 5, 6, 7, 9, 10)."""

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

from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from tests.scoring.helpers import assert_same_scores, make_corpus, read_scores
from tests.selection.fake_scores import write_scores

ENV = os.environ | {"PYTHONPATH": os.getcwd()}


def _losses(n: int, seed: int) -> list[float]:
    return np.random.default_rng(seed).gamma(4, 0.7, n).tolist()


def _select(scores, output, **kw):
    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), **kw), progress=False)


# ---- 5: ids across score directories -----------------------------------------------------------------------


def test_default_ids_that_collide_across_score_directories_are_refused(tmp_path):
    """Two scoring runs of two roots that both hold shard.jsonl give the same default ids ('shard.jsonl#<row>')."""
    write_scores(tmp_path / "a", _losses(100, 1))
    write_scores(tmp_path / "b", _losses(100, 2))
    with pytest.raises(HardfocusError, match=r"both scored a shard 'shard.jsonl', so their default sample ids .* collide"):
        _select([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")
    assert not (tmp_path / "sel").exists()


def test_excess_over_colliding_directories_is_refused_not_joined_across_them(tmp_path):
    """Before: 200 input rows became 400 written, each id joined to both references."""
    for name, seed in (("a", 1), ("b", 2), ("ra", 3), ("rb", 4)):
        write_scores(tmp_path / name, _losses(100, seed))
    cfg = dict(score="excess", reference=[str(tmp_path / "ra"), str(tmp_path / "rb")])
    with pytest.raises(HardfocusError, match="collide"):
        _select([tmp_path / "a", tmp_path / "b"], tmp_path / "sel", **cfg)


def test_a_directory_given_twice_is_refused(tmp_path):
    """Before: `select S S` wrote every kept row twice."""
    write_scores(tmp_path / "s", _losses(50, 1))
    with pytest.raises(HardfocusError, match="is given twice"):
        _select([tmp_path / "s", tmp_path / "s" / "."], tmp_path / "sel")
    with pytest.raises(HardfocusError, match="is given twice"):  # as a score directory and as its own reference
        _select([tmp_path / "s"], tmp_path / "sel", score="excess", reference=[str(tmp_path / "s")])


def test_ids_from_an_id_column_must_be_unique_across_directories(tmp_path):
    write_scores(tmp_path / "a", _losses(10, 1), ids=[f"doc{i}" for i in range(10)], shard="a.jsonl")
    write_scores(tmp_path / "b", _losses(10, 2), ids=[f"doc{i}" for i in range(5, 15)], shard="b.jsonl")
    for d in ("a", "b"):  # scored with --id-column: the manifests say so
        manifest = json.loads((tmp_path / d / "manifest.json").read_text())
        (tmp_path / d / "manifest.json").write_text(json.dumps(manifest | {"id_column": "id"}))
    with pytest.raises(HardfocusError, match=r"sample ids repeat across .* \(e.g. doc"):
        _select([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")


# ---- 6: --overwrite replaces only an output of the same stage ------------------------------------------------


def _listing(path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir())}


def test_overwrite_never_replaces_an_input_or_another_stages_output(tmp_path):
    """Before: `select S -o S --overwrite` deleted the scores."""
    write_scores(tmp_path / "s", _losses(60, 1))
    write_scores(tmp_path / "other", _losses(60, 2), shard="other.jsonl")
    before, other = _listing(tmp_path / "s"), _listing(tmp_path / "other")
    with pytest.raises(HardfocusError, match="is the input"):
        _select([tmp_path / "s"], tmp_path / "s", overwrite=True)
    with pytest.raises(HardfocusError, match="overlaps the input"):  # inside an input: it would be read next time
        _select([tmp_path / "s"], tmp_path / "s" / "selected", overwrite=True)
    with pytest.raises(HardfocusError, match=r"is a finished scores/ directory .*, not a selected/ output"):
        _select([tmp_path / "s"], tmp_path / "other", overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(HardfocusError, match="a directory that no hardfocus stage wrote"):
        _select([tmp_path / "s"], tmp_path / "notes", overwrite=True)
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


# ---- 7: score directories scored differently -----------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("max_tokens", 512), ("dtype", "bfloat16"), ("format", "messages"),
                                        ("add_special_tokens", False)])
def test_score_directories_scored_with_other_settings_are_not_mixed(tmp_path, key, value):
    write_scores(tmp_path / "a", _losses(20, 1), shard="a.jsonl")
    write_scores(tmp_path / "b", _losses(20, 2), shard="b.jsonl")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest | {key: value}))
    with pytest.raises(HardfocusError, match=f"was scored with another {key} than"):
        _select([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")


# ---- 9: parts damaged after their run ----------------------------------------------------------------------


@pytest.fixture
def scored(tmp_path, tiny_model_dir):
    make_corpus(tmp_path, n_parquet=20, n_jsonl=10)
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", group_column="domain", max_tokens=32, rows_per_unit=4)
    result = score(cfg, progress=False)
    return cfg, result, read_scores(tmp_path / "scores")


def _damage(scores_dir, how: str) -> list[str]:
    parts = sorted(scores_dir.glob("part-*.parquet"))
    emptied, cut = parts[1], parts[-2]
    emptied.write_bytes(b"")  # a power cut before the data reached the disk
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2] if how == "cut" else data[:-40] + b"\0" * 40)
    return [emptied.name, cut.name]


@pytest.mark.parametrize("how", ["cut", "zeroed footer"])
def test_a_part_damaged_after_its_run_is_named_by_select_and_rescored_by_a_rerun(tmp_path, scored, how):
    """Before: reruns said 'complete: nothing to score' and select crashed with ArrowInvalid."""
    cfg, result, reference = scored
    damaged = _damage(tmp_path / "scores", how)
    with pytest.raises(HardfocusError, match=rf"the score part .*{damaged[0]} is damaged .*delete it and rerun"):
        _select([tmp_path / "scores"], tmp_path / "sel")
    again = score(cfg, progress=False)
    assert again.units_scored == 2 and not again.skipped
    assert_same_scores(read_scores(tmp_path / "scores"), reference)
    assert again.manifest.rows == result.manifest.rows and again.manifest.rows_by_status == result.manifest.rows_by_status
    assert score(cfg, progress=False).skipped
    assert _select([tmp_path / "scores"], tmp_path / "sel").summary.rows == result.manifest.rows


def test_damaged_parts_are_found_also_under_markers_without_part_sizes(tmp_path, scored):
    """Markers written before they recorded each part's size: the footers (row counts) are checked instead."""
    cfg, _, reference = scored
    for marker in (tmp_path / "scores" / "done").glob("*.json"):
        record = json.loads(marker.read_text())
        record.pop("part_bytes", None)
        marker.write_text(json.dumps(record))
    _damage(tmp_path / "scores", "cut")
    assert score(cfg, progress=False).units_scored == 2
    assert_same_scores(read_scores(tmp_path / "scores"), reference)


def test_a_damaged_part_of_an_unfinished_shard_is_scored_again(tmp_path, scored):
    """A shard without its done marker (a run killed before it finished) reuses its parts: only whole ones."""
    cfg, result, reference = scored
    (tmp_path / "scores" / "manifest.json").unlink()
    for marker in (tmp_path / "scores" / "done").glob("*.json"):
        marker.unlink()
    part = sorted((tmp_path / "scores").glob("part-*.parquet"))[2]
    part.write_bytes(part.read_bytes()[:100])
    again = score(cfg, progress=False)
    assert again.units_scored == 1 and again.manifest.rows == result.manifest.rows
    assert_same_scores(read_scores(tmp_path / "scores"), reference)


def test_a_damaged_shard_marker_is_recovered(tmp_path, scored):
    """Before: a cut-short done/ marker crashed every rerun with a JSONDecodeError."""
    cfg, result, reference = scored
    marker = sorted((tmp_path / "scores" / "done").glob("*.json"))[0]
    marker.write_text(marker.read_text()[:17])
    (tmp_path / "scores" / "manifest.json").unlink()  # the state a kill during the final writes leaves
    again = score(cfg, progress=False)
    assert again.units_scored == 0  # the shard's parts were whole: counted again, none rescored
    assert again.manifest.rows == result.manifest.rows and again.manifest.rows_by_status == result.manifest.rows_by_status
    assert_same_scores(read_scores(tmp_path / "scores"), reference)


def test_commits_sync_the_file_then_rename_then_sync_the_directory(tmp_path, monkeypatch):
    """What makes a commit survive a power cut: without the fsyncs, a renamed file can come back empty."""
    import fsspec

    from hardfocus import storage

    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    storage.commit_json(fsspec.filesystem("file"), str(tmp_path / "state.json"), {"a": 1})
    assert calls == [("fsync", "file"), ("rename", "state.json"), ("fsync", "dir")]
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}

    def crash(f):
        f.write(b'{"a": ')
        raise KeyboardInterrupt  # killed mid-write
    with pytest.raises(KeyboardInterrupt):
        storage.commit(fsspec.filesystem("file"), str(tmp_path / "state.json"), crash)
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}  # the previous content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


# ---- 10: small state files ----------------------------------------------------------------------------------


def test_a_cut_short_run_state_does_not_break_hardfocus_run(tmp_path, tiny_model_dir):
    """Before: a run_state.json cut short crashed every later `hardfocus run` (JSONDecodeError). Each stage now
    records its identity in its own output; a run_state.json of an older version is never read."""
    from tests.hardfocus_run import invoke_run, stages_line, write_run_config

    config = write_run_config(tmp_path, tiny_model_dir)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "run_state.json").write_text('{"score": "3f2a')
    assert stages_line(invoke_run(config, "--until", "select")) == "stages run: score, select; up to date: none"
    assert stages_line(invoke_run(config, "--until", "select")) == "stages run: none; up to date: score, select"


def test_a_damaged_job_file_is_named_not_a_traceback(tmp_path, scored):
    cfg, _, _ = scored
    (tmp_path / "scores" / "job.json").write_text('{"identity": {"model_fin')
    with pytest.raises(HardfocusError, match=r"job.json is damaged \(.*not JSON"):
        score(cfg, progress=False)


def test_eval_reads_each_models_tokenizer_from_its_resolved_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """A model given by alias (`smollm2-135m`, a GGUF file) is no directory: its identity's tokenizer is read from the
    checkpoint the alias resolves to, never looked up under the alias (that went to the hub, and failed offline)."""
    import pipelines.evaluation.job as evaluate_module
    import scoring.job as job_module
    import scoring.units as units_module
    from hardfocus.models import resolve_model
    from pipelines.evaluation.config import EvalConfig
    from tests.conftest import write_jsonl

    def aliased(spec: str):
        return resolve_model(tiny_model_dir if spec == "tiny-alias" else spec)

    monkeypatch.setattr(evaluate_module, "resolve_model", aliased)
    monkeypatch.setattr(job_module, "resolve_model", aliased)
    monkeypatch.setattr(units_module, "resolve_model", aliased)
    units_module._checkpoint_path.cache_clear()
    write_jsonl(tmp_path / "held" / "h.jsonl", [{"text": t} for t in ("The river flows to the sea.",
                                                                       "A committee met on Tuesday.")])
    cfg = EvalConfig(models=["base=tiny-alias"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=32, dtype="float32")
    result = evaluate_module.evaluate(cfg, progress=False)
    assert result.models[0].table.filter(pl.col("group") == "(all)")["docs"].item() == 2
    assert evaluate_module.evaluate(cfg, progress=False).skipped
