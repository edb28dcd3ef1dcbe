"""A rerun of ``score`` on its output: whole parts kept, damaged ones (and damaged markers) scored again exactly;
a shard edited, shrunk or removed since the interrupted run scored again or refused, never resumed on its old parts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.errors import HardfocusError
from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import ENGLISH, real_texts, write_jsonl
from tests.scoring.helpers import (
    TEXTS,
    assert_same_scores,
    make_corpus,
    read_scores,
    score_config,
    write_texts,
)
from tests.selection.helpers import select_scores


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
    with pytest.raises(HardfocusError, match=rf"the score part .*{damaged[0]} (cannot be read|holds) .*rerun `hardfocus score` "
                                             "with the same arguments and --overwrite"):
        select_scores([tmp_path / "scores"], tmp_path / "sel")
    again = score(cfg, progress=False)
    assert again.units_scored == 2 and not again.skipped
    assert_same_scores(read_scores(tmp_path / "scores"), reference)
    assert again.manifest.rows == result.manifest.rows and again.manifest.rows_by_status == result.manifest.rows_by_status
    assert score(cfg, progress=False).skipped
    assert select_scores([tmp_path / "scores"], tmp_path / "sel").summary.rows == result.manifest.rows


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


def test_a_damaged_job_file_is_named_not_a_traceback(tmp_path, scored):
    """Found by an issue (finding 10): a job.json cut short is refused naming it, not a JSONDecodeError traceback."""
    cfg, _, _ = scored
    (tmp_path / "scores" / "job.json").write_text('{"identity": {"model_fin')
    with pytest.raises(HardfocusError, match=r"job.json is damaged \(.*not JSON"):
        score(cfg, progress=False)


def test_a_shard_changed_after_a_kill_mid_shard_is_not_resumed_on_its_old_parts(tmp_path, tiny_model_dir):
    """A run killed after the first part of a shard (no done marker yet), then the shard edited, then a rerun:
    the rerun reuses the part scored from the shard's *old* text (its losses and input_ids) and exits 0."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    cfg = score_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    score(cfg, progress=False)
    scores = tmp_path / "scores"
    # the state a SIGKILL between the shard's two parts leaves: the first part, no done marker, no manifest
    parts = sorted(scores.glob("part-*.parquet"))
    assert len(parts) == 2
    parts[1].unlink()
    for marker in (scores / "done").glob("*.json"):
        marker.unlink()
    (scores / "manifest.json").unlink()
    # the user fixes a row of the shard, then reruns the same command
    edited = ["A completely different first document about rivers and stones."] + TEXTS[1:]
    write_texts(tmp_path / "in" / "a.jsonl", edited)
    try:
        score(cfg, progress=False)
    except HardfocusError as exc:  # refusing, naming the changed shard, is an acceptable answer
        assert "a.jsonl" in str(exc)
        return
    fresh = score(score_config([tmp_path / "in"], tmp_path / "fresh", tiny_model_dir), progress=False)
    assert fresh.manifest.rows == 8
    got, want = read_scores(scores), read_scores(tmp_path / "fresh")
    assert got["input_ids"].to_list() == want["input_ids"].to_list(), "scores/ holds token ids of text that is gone"
    np.testing.assert_allclose(got["loss"].to_numpy(), want["loss"].to_numpy(), atol=1e-5)


def test_overwrite_scores_again_a_shard_that_shrank_after_a_kill_mid_shard(tmp_path, tiny_model_dir):
    """docs/reliability.md: "a shard edited after a kill mid-shard ... a resume refuses the old shard's parts
    (``--overwrite`` scores the shard again)". With ``--overwrite``, ``reusable_parts`` does remove the old parts
    (their stamp names another version of the shard) and the task scores every row of the new shard; but
    ``read_shard_task`` then checks ``task.done`` (the starts of the parts just removed) against the new row count,
    and a shard that now has fewer rows than an old part's start fails with "holds parts ... past its last row ...
    pass --overwrite", though --overwrite was passed and those parts are gone. (Outside the one-actor change: every
    executor reads shards through ``read_shard_task``.) Expected: the shard scored again, as a fresh run scores it."""
    shard = tmp_path / "in" / "a.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"text": [f"{ENGLISH[i % 6]} {i}" for i in range(30)]}), shard)
    cfg = ScoreConfig(inputs=[str(shard.parent)], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=32, rows_per_unit=5)
    score(cfg, progress=False)
    scores = tmp_path / "scores"
    # the state a SIGKILL mid-shard leaves: parts, no done marker, no manifest
    for marker in (scores / "done").glob("*.json"):
        marker.unlink()
    (scores / "manifest.json").unlink()
    pq.write_table(pa.table({"text": [f"short text {i}" for i in range(12)]}), shard)  # the user edits the shard
    score(cfg.model_copy(update={"overwrite": True}), progress=False)
    fresh = score(cfg.model_copy(update={"output": str(tmp_path / "fresh")}), progress=False)
    assert fresh.manifest.rows == 12
    assert_same_scores(read_scores(scores), read_scores(tmp_path / "fresh"))


def test_a_shard_removed_from_the_corpus_is_removed_from_the_manifest_too(tmp_path, tiny_model_dir):
    """`score in/ -o S`, then a shard deleted from in/, then `score in/ -o S --overwrite` (what `hardfocus run`
    passes): planning removes the shard's parts and marker, finds nothing left to score and, since the old
    manifest.json is there, returns 'complete, nothing to score' with the *old* manifest (which still lists the
    deleted shard and its rows). `select` then refuses S ("holds 2 part files but its manifest lists 4") and every
    later `score` run says complete again: a state that never recovers."""
    from selection import SelectConfig, select

    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    write_texts(tmp_path / "in" / "b.jsonl", TEXTS[::-1])
    cfg = score_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    assert score(cfg, progress=False).manifest.rows == 16
    (tmp_path / "in" / "b.jsonl").unlink()
    again = score(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert again.manifest.rows == 8 and [s.rel for s in again.manifest.shards] == ["a.jsonl"]
    manifest = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert manifest["rows"] == 8
    assert select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel")), progress=False)


def test_scores_of_an_earlier_version_are_refused_in_one_line_and_overwrite_redoes_them(tmp_path, tiny_model_dir):
    """A scores/ written before the part stamp existed (its parts carry none; its job's identity has no layout key):
    select refuses its first part in one line saying how to redo the directory; the same ``score`` is refused as
    another run's, naming the key; with --overwrite it is scored again, and then selected."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    cfg = score_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    score(cfg, progress=False)
    out = tmp_path / "scores"
    for part in sorted(out.glob("part-*.parquet")):  # as an earlier version wrote them: no stamp
        table = pq.read_table(part)
        pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                      if k != b"hardfocus.part"}), part)
    job = json.loads((out / "job.json").read_text())
    del job["identity"]["parts"]
    (out / "job.json").write_text(json.dumps(job))
    select_cfg = SelectConfig(scores=[str(out)], output=str(tmp_path / "sel"), report=False)
    with pytest.raises(HardfocusError, match=r"the score part .*part-\w+-\d+-\d+\.parquet carries no stamp of the run "
                                             r"that wrote it .*earlier version.*: rerun `hardfocus score` with the same "
                                             r"arguments and --overwrite"):
        select(select_cfg, progress=False)
    with pytest.raises(HardfocusError, match=r"holds scores made by an earlier version of hardfocus"):
        score(cfg, progress=False)
    score(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert select(select_cfg, progress=False).summary.rows == len(TEXTS)


def test_score_overwrite_repairs_a_score_part_that_select_refuses_as_unstamped(tmp_path, tiny_model_dir):
    """A score part whose stamp no longer parses (one byte of the footer's JSON changed: the same size, the footer still
    Parquet) is refused by select as "carries no stamp of the run that wrote it (... an earlier version ...): rerun
    `hardfocus score` with the same arguments and --overwrite, which scores the directory again". That rerun finds the
    same job complete, checks only each part's size and footer end, and prints "already complete, nothing scored in
    this run"; select refuses the part again, sending the user back to the same command. Expected: the command the
    refusal names repairs the directory (and a stamp that is there but does not parse is called damaged, not of an
    earlier version)."""
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t[:120]} for t in real_texts(40, seed=4) if t.strip()][:12])
    cfg = dict(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir, executor="local",
               dtype="float32", device="cpu", max_tokens=16, rows_per_unit=4)
    score(ScoreConfig(**cfg), progress=False)
    part = sorted((tmp_path / "scores").glob("part-*.parquet"))[1]
    data = bytearray(part.read_bytes())
    data[data.rfind(b'{"columns"')] = ord("x")  # the stamp's JSON, one byte: no longer JSON
    part.write_bytes(bytes(data))
    selection = dict(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False)
    with pytest.raises(HardfocusError, match="--overwrite"):
        select(SelectConfig(**selection), progress=False)
    score(ScoreConfig(**cfg, overwrite=True), progress=False)  # what the refusal says to run
    select(SelectConfig(**selection), progress=False)
