"""What ``select`` checks in the score directories it is given, before ranking: their manifests, each part's stamp
(its job, shard and rows), one file scored into two of them, ids that collide across directories, a directory given
twice, settings that differ."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from hardfocus.errors import HardfocusError
from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts, write_jsonl
from tests.scoring.helpers import TEXTS, score_config, write_texts
from tests.selection.fake_scores import write_scores
from tests.selection.helpers import random_losses, select_scores

OTHER = [f"A river flows from mountain {i} to the sea, carrying sand and stones." for i in range(8)]


def test_default_ids_that_collide_across_score_directories_are_refused(tmp_path):
    """Two scoring runs of two roots that both hold shard.jsonl give the same default ids ('shard.jsonl#<row>')."""
    write_scores(tmp_path / "a", random_losses(100, 1))
    write_scores(tmp_path / "b", random_losses(100, 2))
    with pytest.raises(HardfocusError, match=r"both scored a shard 'shard.jsonl', so their default sample ids .* collide"):
        select_scores([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")
    assert not (tmp_path / "sel").exists()


def test_excess_over_colliding_directories_is_refused_not_joined_across_them(tmp_path):
    """Before: 200 input rows became 400 written, each id joined to both references."""
    for name, seed in (("a", 1), ("b", 2), ("ra", 3), ("rb", 4)):
        write_scores(tmp_path / name, random_losses(100, seed))
    cfg = dict(score="excess", reference=[str(tmp_path / "ra"), str(tmp_path / "rb")])
    with pytest.raises(HardfocusError, match="collide"):
        select_scores([tmp_path / "a", tmp_path / "b"], tmp_path / "sel", **cfg)


def test_a_directory_given_twice_is_refused(tmp_path):
    """Before: `select S S` wrote every kept row twice."""
    write_scores(tmp_path / "s", random_losses(50, 1))
    with pytest.raises(HardfocusError, match="is given twice"):
        select_scores([tmp_path / "s", tmp_path / "s" / "."], tmp_path / "sel")
    with pytest.raises(HardfocusError, match="is given twice"):  # as a score directory and as its own reference
        select_scores([tmp_path / "s"], tmp_path / "sel", score="excess", reference=[str(tmp_path / "s")])


def test_ids_from_an_id_column_must_be_unique_across_directories(tmp_path):
    """Found by an issue (finding 5): ids from an id column that repeat across score directories are refused."""
    write_scores(tmp_path / "a", random_losses(10, 1), ids=[f"doc{i}" for i in range(10)], shard="a.jsonl")
    write_scores(tmp_path / "b", random_losses(10, 2), ids=[f"doc{i}" for i in range(5, 15)], shard="b.jsonl")
    for d in ("a", "b"):  # scored with --id-column: the manifests say so
        manifest = json.loads((tmp_path / d / "manifest.json").read_text())
        (tmp_path / d / "manifest.json").write_text(json.dumps(manifest | {"id_column": "id"}))
    with pytest.raises(HardfocusError, match=r"sample ids repeat across .* \(e.g. doc"):
        select_scores([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")


@pytest.mark.parametrize("key, value", [("max_tokens", 512), ("dtype", "bfloat16"), ("format", "messages"),
                                        ("add_special_tokens", False)])
def test_score_directories_scored_with_other_settings_are_not_mixed(tmp_path, key, value):
    """Found by an issue (finding 7): score directories scored with other settings are refused together, naming it."""
    write_scores(tmp_path / "a", random_losses(20, 1), shard="a.jsonl")
    write_scores(tmp_path / "b", random_losses(20, 2), shard="b.jsonl")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest | {key: value}))
    with pytest.raises(HardfocusError, match=f"was scored with another {key} than"):
        select_scores([tmp_path / "a", tmp_path / "b"], tmp_path / "sel")


@pytest.mark.parametrize("how", ["wrong type", "newer field", "a directory"])
def test_a_scores_manifest_that_is_json_but_not_a_manifest_is_named_not_a_traceback(tmp_path, how):
    """read_json names a manifest that is not JSON; one that is JSON but not a manifest (a field of the wrong
    type, a field a newer hardfocus added: extra="forbid") escapes as a raw pydantic ValidationError, and a
    directory in its place as a raw IsADirectoryError."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    scores = write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    manifest = json.loads((scores / "manifest.json").read_text())
    if how == "a directory":
        (scores / "manifest.json").unlink()
        (scores / "manifest.json").mkdir()
    else:
        extra = {"rows": "forty"} if how == "wrong type" else {"written_by": "hardfocus 2.0"}
        (scores / "manifest.json").write_text(json.dumps(manifest | extra))
    if how == "newer field":  # a field a newer version added is read past: an older reader knows what it needs
        assert select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel")), progress=False).summary.rows == 40
        return
    with pytest.raises(HardfocusError, match="manifest.json"):
        select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel")), progress=False)


def test_a_part_copied_in_from_another_scores_directory_is_refused_by_select(tmp_path, tiny_model_dir):
    """Two scores/ of the same corpus (here: other max_tokens) have parts of the same names and row counts. A part
    of one copied over the other's (an rsync of the wrong directory) passes every check `select` makes (part count,
    footer row counts, manifest rows), so the selection ranks losses of other settings than its manifest says. The
    shard markers record each part's size, and a rerun of `score` does notice; `select` does not look."""
    from selection import SelectConfig, select

    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    score(score_config([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    cfg_b = score_config([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8})
    score(cfg_b, progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    assert (tmp_path / "B" / part.name).exists()
    part.write_bytes((tmp_path / "B" / part.name).read_bytes())
    with pytest.raises(HardfocusError, match=part.name):
        select(SelectConfig(scores=[str(tmp_path / "A")], output=str(tmp_path / "sel")), progress=False)


def test_a_part_of_another_shard_of_the_same_job_under_a_wrong_name_is_refused(tmp_path, tiny_model_dir):
    """Each part's stamp records its shard and its rows (start, stop), but `select` (selection/scores.py
    _check_stamp) compares only the job and the shard's size: a part of a.jsonl in the place of a part of
    b.jsonl (same row count; a partial copy, a mv of the wrong file) passes, and the selection holds a.jsonl's rows
    twice and none of b.jsonl's, exit 0."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    write_texts(tmp_path / "in" / "b.jsonl", OTHER)
    scores = tmp_path / "scores"
    score(score_config([tmp_path / "in"], scores, tiny_model_dir), progress=False)
    parts = sorted(scores.glob("part-*.parquet"))
    by_shard = {}
    for p in parts:
        by_shard.setdefault(pq.read_table(p)["shard"][0].as_py(), []).append(p)
    a0, b0 = by_shard["a.jsonl"][0], by_shard["b.jsonl"][0]
    b0.write_bytes(a0.read_bytes())
    try:
        result = select_scores([scores], tmp_path / "sel", drop_top=0.0, keep=1.0, report=False)
    except HardfocusError as exc:
        assert b0.name in str(exc)
        return
    ids = [i for p in sorted((tmp_path / "sel").glob("part-*.parquet")) for i in pq.read_table(p)["sample_id"].to_pylist()]
    assert len(ids) == len(set(ids)), f"the selection holds rows twice ({result.summary.bands})"


def test_a_part_without_a_stamp_in_a_directory_of_stamped_parts_is_refused(tmp_path, tiny_model_dir):
    """A part whose metadata was dropped (rewritten by a tool that does not keep Parquet key-value metadata: polars,
    DuckDB, Spark) is taken for a part of an older version and accepted unchecked (`_check_stamp` returns when the
    stamp is None), so the first review's case, a part copied in from another scores/ directory, passes again as soon
    as the copy went through such a tool: the selection ranks losses of other settings, exit 0."""
    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    score(score_config([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    score(score_config([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8}), progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    foreign = pq.read_table(tmp_path / "B" / part.name)
    pq.write_table(foreign.replace_schema_metadata(None), part)  # B's rows, no stamp
    with pytest.raises(HardfocusError, match=part.name):
        select_scores([tmp_path / "A"], tmp_path / "sel")


def test_one_file_scored_into_two_directories_under_two_names_is_refused(tmp_path, tiny_model_dir):
    """Finding 1 of the foundation issue: one JSON Lines file scored into two scores/ directories, once through its
    directory (``in/``: named ``x.jsonl``) and once through a glob from the parent (``*/x.jsonl``: named
    ``in/x.jsonl``), got other sample ids in each, and ``select S1 S2`` counted 24 rows of a 12-row file (export and
    training then used every row twice). A shard is identified by where it is, not the name it was reached by: select
    and train refuse, naming the file and both directories."""
    from training.sources import find_sources

    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": t} for t in real_texts(12, seed=33)])
    runs = {"s1": str(tmp_path / "in"), "s2": str(tmp_path / "*" / "x.jsonl")}
    for name, given in runs.items():
        score(ScoreConfig(inputs=[given], output=str(tmp_path / name), model=tiny_model_dir, executor="local",
                          dtype="float32", device="cpu", max_tokens=64, rows_per_unit=6), progress=False)
    both = [str(tmp_path / "s1"), str(tmp_path / "s2")]
    refusal = (rf"the input file {re.escape(str(tmp_path))}/in/x\.jsonl was (scored into|read through) both '.*s1' \(as 'x\.jsonl'\) and "
               r"'.*s2' \(as 'in/x\.jsonl'\): its rows would count twice")
    with pytest.raises(HardfocusError, match=refusal):
        select(SelectConfig(scores=both, output=str(tmp_path / "selected"), report=False), progress=False)
    assert not (tmp_path / "selected").exists()
    with pytest.raises(HardfocusError, match=refusal):
        find_sources(both)


def test_select_refuses_one_file_scored_into_two_directories_through_a_hard_link(tmp_path, tiny_model_dir):
    """The promise: "one input file scored into two scores/ directories under two names ... select and train refuse
    the pair". A file and a hard link to it (``in1/a.jsonl``, ``in2/c.jsonl``: other relative paths, so the default ids
    do not collide) scored into two directories are accepted by ``select s1 s2``: the manifests' ``location``s are the
    two paths, and every row is ranked, weighted and kept twice (the summary counts 20 rows of a 10-row file).
    Expected: refused, naming the file and both directories."""
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select

    texts = [t[:100] for t in real_texts(40, seed=5) if t.strip()][:10]
    shard = write_jsonl(tmp_path / "in1" / "a.jsonl", [{"text": t} for t in texts])
    (tmp_path / "in2").mkdir()
    os.link(shard, tmp_path / "in2" / "c.jsonl")
    kw = dict(model=tiny_model_dir, executor="local", dtype="float32", device="cpu", max_tokens=16)
    for i in (1, 2):
        score(ScoreConfig(inputs=[str(tmp_path / f"in{i}")], output=str(tmp_path / f"s{i}"), **kw), progress=False)
    with pytest.raises(HardfocusError, match="a.jsonl|c.jsonl"):
        select(SelectConfig(scores=[str(tmp_path / "s1"), str(tmp_path / "s2")], output=str(tmp_path / "sel"),
                            report=False), progress=False)


def test_select_over_a_scores_directory_that_lost_a_part_says_what_to_run(tmp_path):
    """A scores/ directory one of whose parts was deleted is refused by select (and ``hardfocus report``) with
    "'scores' holds 7 part files but its manifest lists 8": every other refusal of a part says how to redo it (here a
    rerun of `hardfocus score` with the same arguments scores only the missing part, which works). Expected: the
    refusal names the command that repairs it."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    scores = write_scores(tmp_path / "scores", np.random.default_rng(0).gamma(4, 0.7, 40).tolist(), rows_per_part=5)
    sorted(scores.glob("part-*.parquet"))[3].unlink()
    with pytest.raises(HardfocusError, match="hardfocus score"):
        select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel"), report=False), progress=False)


@pytest.mark.parametrize("mistake", ["select a selection", "train on decisions/"])
def test_another_stages_output_given_by_mistake_is_refused_with_advice_that_fits_it(tmp_path, mistake):
    """Two easy mistakes get advice that does not fit: ``hardfocus select sel -o x`` (a selection given where scores
    are read) is told "'sel' is a finished selected/ directory (selection), not a finished scores/ directory (no
    manifest.json): (re)run `hardfocus score` on it", and ``hardfocus train sel/decisions`` (the decisions taken for
    training data: a directory of ``part-*.parquet``, so a "hand-written token directory") is told "... has no
    input_ids column: score with --keep-input-ids (the default)". Expected: the refusal says what the directory is
    and what to give instead (the scores it was selected from; the selected/ directory itself), never to score a
    selection or to score with a flag that is already on."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores
    from training.sources import find_sources

    scores = write_scores(tmp_path / "scores", np.random.default_rng(0).gamma(4, 0.7, 20).tolist())
    select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel"), report=False), progress=False)
    with pytest.raises(HardfocusError) as refused:
        if mistake == "select a selection":
            select(SelectConfig(scores=[str(tmp_path / "sel")], output=str(tmp_path / "x"), report=False), progress=False)
        else:
            find_sources([str(tmp_path / "sel" / "decisions")])
    message = str(refused.value)
    assert "(re)run" not in message and "--keep-input-ids" not in message, message
    if mistake == "select a selection":
        assert "is a finished selected/ directory (selection), not a scores/ directory: give the scores/" in message
    else:
        assert f"holds a selection's decisions (a band and a reason for every scored row), not training data: give the " \
               f"selected/ directory itself ('{tmp_path / 'sel'}')" in message
