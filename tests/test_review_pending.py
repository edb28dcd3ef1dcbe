"""Findings of an adversarial review of the part contract (hardfocus/parts.py), the content-identified sources, the held
selection of export and ``what_changed``: each test asserts the behaviour the docs promise and fails on the current code
(xfail strict), so the suite stays green until it is fixed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.errors import HardfocusError
from hardfocus.parts import ColumnDigest, Expected, Stamp, iter_part, read_part, stamped
from tests.conftest import real_texts, write_jsonl


def _digest(values) -> str:
    return ColumnDigest().update(values).hexdigest()


def _keep_stamp_rewrite(path: Path, change) -> None:
    """What any read-modify-write tool does (pandas, polars via pyarrow, a notebook): read the part, change it, write
    it back; pyarrow keeps the schema metadata, so the part keeps the stamp it was written with."""
    table = pq.read_table(path)
    pq.write_table(change(table), path)
    assert Stamp.of(pq.read_metadata(path).metadata) is not None


# ---- the digest of a column ---------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="ColumnDigest: list_view is cast with pyarrow's broken list_view->list cast")
def test_a_list_view_column_digests_as_its_values_and_a_slice_of_it_does_not_crash():
    """``ColumnDigest._walk`` casts a ``list_view`` to ``large_list`` (``array.cast(pa.large_list(...))``); pyarrow's
    cast of a list_view gives an invalid array ("Array length is negative") whenever a view is not at the end, so the
    digest of a list_view depends on its chunking (an IPC shard read in record batches, a part read in row groups),
    and the digest of a *sliced* list_view crashes the interpreter's call with ``SystemError: error return without
    exception set``. Expected: a list_view digests as the list of the same values (the docs: "a column read in batches
    ... digests alike"), sliced or not."""
    values = [[1], [2, 3], [4], None, [5, 6, 7]]
    as_list = _digest(pa.array(values, pa.list_(pa.int64())))
    view = pa.array(values, pa.list_view(pa.int64()))
    assert _digest(view) == as_list
    assert _digest(pa.chunked_array([view[:2], view[2:]])) == as_list  # raises SystemError today


@pytest.mark.xfail(strict=True, reason="ColumnDigest: maps, unions and extension types digest per chunk (JSON fallback)")
@pytest.mark.parametrize("values", [
    pa.array([[("a", 1)], None, [("b", 2), ("c", 3)]], pa.map_(pa.string(), pa.int64())),
    pa.array(['{"a": 1}', None, '{"b": 2}'], pa.json_()),  # what export writes an empty struct as (arrow.json)
    pa.array([b"0" * 16, None, b"1" * 16], pa.uuid()),
], ids=["map", "arrow.json", "uuid"])
def test_a_columns_digest_does_not_depend_on_its_chunks_for_maps_and_canonical_extension_types(values):
    """Maps, unions and canonical extension types (``pa.json_()``, ``pa.uuid()``, ``pa.bool8()``: subclasses of
    ``BaseExtensionType``, not ``pa.ExtensionType``, so ``_walk`` never unwraps them) fall to ``_walk``'s JSON branch,
    which digests ``json.dumps(chunk.to_pylist())`` per chunk: ``[a, b][c]`` is not ``[a, b, c]``. So the same column
    read in one piece, in row groups or in batches digests differently, and a part holding one (export writes a JSON
    Lines ``{}`` column to Parquet as ``arrow.json``; a source map column is carried as is) fails its own stamp when
    read in other chunks than it was written in. Expected: the digest does not depend on the chunking."""
    assert _digest(pa.chunked_array([values[:1], values[1:]])) == _digest(values)


@pytest.mark.xfail(strict=True, reason="the stamp digests the table before Parquet changes its units and types")
@pytest.mark.parametrize("values", [
    pa.array([1, 2, None], pa.timestamp("s")),
    pa.array([86_400_000, None, 0], pa.date64()),
    pa.array([1, None, 3], pa.time32("s")),
], ids=["timestamp[s]", "date64", "time32[s]"])
def test_a_part_stamped_and_written_reads_back_through_the_verified_reader(tmp_path, values):
    """``stamped`` digests the table as it is before it is written; Parquet stores ``timestamp[s]`` as milliseconds,
    ``date64`` as ``date32`` and ``time32[s]`` as milliseconds, and reads them back so, so the values' bytes (what
    ``ColumnDigest`` feeds) are not the ones digested. An export part (every source column, stamped) of a source with
    such a column carries a digest that no read of the part reproduces: read through ``read_part`` it is "changed after
    it was written" the moment it is written. Expected: every part a writer stamps reads back through the verified
    reader (digest the values as Parquet stores them, or normalise units before digesting)."""
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(stamped(pa.table({"c": values}), "export", "run", {"name": "part-00000.parquet"}), path)
    read_part(path, Expected("export", "run", {"name": "part-00000.parquet"}))


@pytest.mark.xfail(strict=True, reason="ColumnDigest digests a struct's children by position, not by name")
def test_a_struct_whose_field_names_were_swapped_does_not_digest_as_before():
    """``_walk`` walks a struct's children as ``.0``, ``.1``: the field names are not digested. ``loss_spans`` is
    ``list<struct<start, stop>>``; a rewrite that swaps the two names (each child keeping its values) digests exactly as
    the part that was written, yet every reader (``pc.struct_field(flat, "start")``) now reads the stops as the starts.
    Expected: a struct's field names are part of what is digested (the docs: "changed ... at any size is refused")."""
    spans = [[{"start": 1, "stop": 4}], [{"start": 0, "stop": 2}, {"start": 5, "stop": 9}]]
    written = pa.array(spans, pa.list_(pa.struct([("start", pa.int32()), ("stop", pa.int32())])))
    swapped = written.cast(pa.list_(pa.struct([("stop", pa.int32()), ("start", pa.int32())])))  # by name: values move
    relabelled = pa.ListArray.from_arrays(written.offsets, pa.StructArray.from_arrays(
        written.flatten().flatten(), names=["stop", "start"]))  # the same children under each other's name
    assert _digest(swapped) != _digest(written)  # holds: values moved
    assert _digest(relabelled) != _digest(written)


@pytest.mark.xfail(strict=True, reason="iter_part of a zero-row part never walks a chunk: another digest than the stamp's")
def test_a_zero_row_part_reads_through_iter_part_as_through_read_part(tmp_path):
    """A zero-row part reads through ``read_part`` (one empty chunk per column), but ``iter_part`` yields no batch, so
    its digests never see a chunk, and a ``ColumnDigest`` fed nothing is not the digest of an empty column
    (``hexdigest`` hashes the ``_seen`` paths, which only a walked chunk records): the untouched part is refused as
    "changed after it was written". Expected: both readers take the part the stage wrote."""
    table = pa.table({"input_ids": pa.array([], pa.list_(pa.int32())), "weight": pa.array([], pa.float32())})
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(stamped(table, "selected", "run", {"index": 0}), path)
    expected = Expected("selected", "run", {"index": 0})
    assert read_part(path, expected).num_rows == 0
    assert sum(t.num_rows for t in iter_part(path, expected)) == 0


# ---- training ---------------------------------------------------------------------------------------------------------


def _conversation_selection(path: Path) -> str:
    """A selected/ directory of conversations, in the contract select writes: a training part with ``loss_spans`` (the
    assistant tokens the loss is taken on), stamped as its selection's part 0, the job file and the summary."""
    from hardfocus.contracts.selected import selected_schema
    from hardfocus.fingerprints import digest

    path.mkdir(parents=True)
    identity = {"made_by": "review", "name": path.name}
    (path / "selection_job.json").write_text(json.dumps({"stage": "selected", "identity": identity}))
    n = 6
    table = pa.table({
        "sample_id": [f"c{i}" for i in range(n)], "shard": ["c.jsonl"] * n, "row": list(range(n)), "group": ["g"] * n,
        "loss": [1.0] * n, "loss_rank": [0.0] * n, "weight": [1.0] * n,
        "input_ids": [list(range(3, 20))] * n, "loss_spans": [[{"start": 12, "stop": 17}]] * n,
    }, schema=selected_schema(True, True))
    pq.write_table(stamped(table, "selected", digest(identity), {"index": 0}), path / "part-00000.parquet")
    (path / "summary.json").write_text(json.dumps({"parameters": {}, "bands": {"kept": n}, "output_parts": 1,
                                                   "rows": n, "scores": []}))
    return str(path)


@pytest.mark.xfail(strict=True, reason="the verified reader reads the columns it is asked for; one the stamp records "
                                       "may be gone")
def test_a_training_part_that_lost_its_loss_spans_column_is_refused(tmp_path):
    """A conversation's training part records ``loss_spans`` (the assistant turns the loss is taken on) in its stamp. A
    rewrite that drops the column and keeps the metadata (``pq.write_table(t.drop_columns(["loss_spans"]))``) is
    read without a word: training asks the verified reader only for the columns the footer's schema has, so it reads
    ``input_ids`` and ``weight`` (both digests match) and trains on every token, prompts and system turns included
    (seen end to end: `hardfocus train` on such a selection exits 0). Expected: a part that lacks a column its stamp
    records was changed after it was written, and is refused naming it."""
    from training.data import load_training_data

    selected = _conversation_selection(tmp_path / "sel")
    _keep_stamp_rewrite(tmp_path / "sel" / "part-00000.parquet", lambda t: t.drop_columns(["loss_spans"]))
    with pytest.raises(HardfocusError, match="part-00000.parquet"):
        load_training_data([selected])


@pytest.mark.xfail(strict=True, reason="iter_part verifies a part's digests only after its last batch; a run may end "
                                       "before")
def test_training_never_finishes_on_a_training_part_changed_after_it_was_written(tmp_path, tiny_model_dir):
    """The stream reads each part through ``iter_part``, which yields the part's batches first and checks the column
    digests once the last batch is read. Rows of a changed part are trained on before the check, and a run whose last
    step comes before the stream asks for the part's end never checks it: a selection whose ``input_ids`` were changed
    after select wrote them (a read-modify-write that keeps the stamp) is trained on, and the model published (seen
    with `hardfocus train sel --max-steps 1 --batch-size 1 --shuffle-buffer 1`; with a larger buffer the same run is
    refused). Expected: no step is taken on rows whose part fails its digest (verify before yielding, e.g. per row
    group, or read the part whole first), and the run is refused naming the part."""
    from tests.training.helpers import equal_length_sequences, small_config, write_selected
    from training import train

    selected = write_selected(tmp_path / "sel", equal_length_sequences(64, 12, 250))
    part = tmp_path / "sel" / "part-00000.parquet"
    _keep_stamp_rewrite(part, lambda t: t.set_column(
        t.schema.get_field_index("input_ids"), "input_ids",
        pa.array([list(reversed(x)) for x in t["input_ids"].to_pylist()], pa.list_(pa.int32()))))
    cfg = small_config([selected], tmp_path / "model", model=tiny_model_dir, max_steps=1, batch_size=1,
                       shuffle_buffer=1)
    try:
        train(cfg, progress=False)
    except HardfocusError as exc:
        assert "part-00000.parquet" in str(exc)
        return
    pytest.fail("trained and published a model on a training part whose input_ids are not the ones select wrote")


# ---- select's rerun ---------------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="select --overwrite of the same selection checks footers only: 'nothing to do'")
@pytest.mark.parametrize("part", ["decisions/part-00000.parquet", "part-00000.parquet"])
def test_select_overwrite_repairs_a_part_that_export_or_train_refuse_as_changed(tmp_path, part):
    """A decisions or training part changed after select wrote it (a read-modify-write keeping the stamp) is refused by
    export and train: "... was changed after it was written ...: run `hardfocus select` again with --overwrite". Doing
    so prints "this selection of these scores is already complete; nothing to do": ``out.open`` finds the same
    identity complete and ``_decisions_whole`` checks only the parts' footers, which are intact. The part stays as it
    is and export and train keep refusing it, sending the user back to the same command (seen end to end with the
    CLI). Expected: the command the refusal names repairs the selection (a rerun with --overwrite verifies what it
    keeps, or writes the selection again)."""
    from hardfocus.contracts.decisions import decision_parts
    from hardfocus.contracts.selected import open_selected
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    rng = np.random.default_rng(3)
    write_scores(tmp_path / "scores", np.round(rng.gamma(4, 0.7, 40), 3).tolist(), rows_per_part=10)
    cfg = dict(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False, keep=0.6)
    select(SelectConfig(**cfg), progress=False)
    _keep_stamp_rewrite(tmp_path / "sel" / part, lambda t: t.set_column(
        t.schema.get_field_index("loss"), t.schema.field("loss"),
        pa.array([None if v is None else v * 1.5 for v in t["loss"].to_pylist()], t.schema.field("loss").type)))

    select(SelectConfig(**cfg, overwrite=True), progress=False)  # what the refusal says to run

    opened = open_selected(str(tmp_path / "sel"))
    for url, expected in [(d.url, d.expected) for d in decision_parts(opened)] + list(opened.parts):
        read_part(url, expected)  # refused today: the part is still the changed one


@pytest.mark.xfail(strict=True, reason="what_changed names every input of a list whose length or order changed")
@pytest.mark.parametrize("before, now", [(["s1"], ["s1", "s2"]), (["s1", "s2"], ["s2", "s1"])], ids=["added", "reordered"])
def test_a_selection_refused_for_other_inputs_does_not_say_an_unchanged_input_changed(tmp_path, before, now):
    """``what_changed`` indexes into an input list only when both lists have the same length; otherwise it names every
    input, and for a list given in another order it names each position. So ``select s1 -o sel`` then ``select s1 s2 -o
    sel`` is refused with "made from other inputs (its inputs 's1', 's2' changed since)" though s1 did not change (an
    input was added), and ``select s2 s1`` over a selection of ``s1 s2`` with "its inputs 's2', 's1' changed since"
    though nothing changed (the order did). Expected: an unchanged input is never said to have changed (say an input
    was added, or that the inputs are given in another order)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    rng = np.random.default_rng(0)
    for name in ("s1", "s2"):
        write_scores(tmp_path / name, rng.gamma(4, 0.7, 20).tolist(), shard=f"{name}.jsonl")
    dirs = lambda names: [str(tmp_path / n) for n in names]  # noqa: E731
    select(SelectConfig(scores=dirs(before), output=str(tmp_path / "sel"), report=False), progress=False)
    with pytest.raises(HardfocusError) as refused:
        select(SelectConfig(scores=dirs(now), output=str(tmp_path / "sel"), report=False), progress=False)
    message = str(refused.value)
    unchanged = [d for d in dirs(before)]
    assert not any(f"'{d}'" in message and "changed since" in message for d in unchanged), message


@pytest.mark.xfail(strict=True, reason="an output of an earlier layout is said to differ in 'decisions' / 'parts'")
def test_a_selection_of_an_earlier_layout_is_refused_saying_so_not_as_other_settings(tmp_path):
    """A selection written before the part stamp (its job file's ``decisions`` layout 1, unstamped parts) met by a rerun
    with the same settings is refused as "'sel' holds a selection made with other settings (differs in: decisions)";
    a scores/ directory of before the stamp (no ``parts`` in its job identity) likewise as "(differs in: parts)". The
    user changed no setting, and no flag is called ``decisions`` or ``parts``. Expected: the refusal says the output
    was written by an earlier version of hardfocus (and to pass --overwrite)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", np.random.default_rng(0).gamma(4, 0.7, 20).tolist())
    cfg = dict(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False)
    select(SelectConfig(**cfg), progress=False)
    job = tmp_path / "sel" / "selection_job.json"
    record = json.loads(job.read_text())
    record["identity"]["decisions"] = 1  # DECISIONS_LAYOUT of before the stamp
    job.write_text(json.dumps(record))
    with pytest.raises(HardfocusError) as refused:
        select(SelectConfig(**cfg), progress=False)
    assert "earlier version" in str(refused.value) or "older" in str(refused.value), str(refused.value)


# ---- export -----------------------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="a finished export's rerun checks only the parts export.json records")
def test_a_finished_export_with_a_part_it_did_not_write_is_not_reported_complete(tmp_path):
    """A rerun of a finished export checks each part export.json records (``damaged_parts``) and, none being damaged,
    says "already complete, nothing written", though the directory holds a ``part-*`` file it did not write (here a copy
    of its first part: every reader of ``export/part-*.parquet`` reads those rows twice). The same rerun refuses such a
    file ("holds part files this export did not write") as soon as any recorded part needs rewriting. Expected: the
    rerun of a finished export refuses (or removes) a part file it did not write, as the other path does."""
    import shutil

    from tests.exporting.helpers import run_export, selection_of

    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": f"doc {i} " * (i % 5 + 1)} for i in range(30)])
    sel = selection_of(tmp_path, shard, 30)
    out = tmp_path / "out"
    run_export(sel, out, shard_rows=4)
    first = sorted(out.glob("part-*.parquet"))[0]
    extra = out / "part-00000-00099.parquet"
    shutil.copy(first, extra)
    try:
        result = run_export(sel, out, shard_rows=4)
    except HardfocusError as exc:
        assert extra.name in str(exc)
        return
    assert not extra.exists(), f"rerun said skipped={result.skipped} with {extra.name} (a copy of {first.name}) there"


@pytest.mark.xfail(strict=True, reason="stamping an export part digests a sliced list_view: SystemError")
def test_export_to_parquet_of_an_arrow_shard_with_a_list_view_column(tmp_path):
    """An Arrow IPC shard with a ``list_view`` column (tags) exports to Parquet (the default format) before the part
    stamp existed; now ``stamped`` digests the taken rows' columns, and ``ColumnDigest`` casts the list_view, which
    dies with ``SystemError: error return without exception set`` on a slice of it (a part of ``--shard-rows`` rows
    cut from the shard's rows: a traceback; seen with the CLI for band kept, dropped and easy). The stamp of a part
    that does get written records a digest of the column that a read of the part does not reproduce (the cast gives an
    invalid array). Expected: the export writes the rows (or refuses the column in one line)."""
    import pyarrow.ipc as ipc

    from tests.exporting.helpers import export_or_refusal, fake_scores, select_into

    texts = [t for t in real_texts(60, seed=2) if t.strip()][:24]
    shard = tmp_path / "in" / "a.arrow"
    shard.parent.mkdir()
    table = pa.table({"text": texts, "tags": pa.array([[i, i + 1] for i in range(24)], pa.list_view(pa.int64()))})
    with ipc.new_file(str(shard), table.schema) as writer:
        writer.write_table(table, max_chunksize=10)
    sel = select_into([fake_scores(tmp_path / "scores", shard, 24, fmt="arrow")], tmp_path / "sel")
    result = export_or_refusal(sel, tmp_path / "out", shard_rows=3)  # pieces: slices of the taken rows
    assert result is not None and result.manifest.rows > 0


# ---- one input file under two names ------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="a shard's location is its canonical path: a hard link is another path")
def test_one_score_refuses_a_file_reached_through_a_hard_link(tmp_path):
    """``find_shards`` refuses one file reached twice ("two inputs are the same file (..., a link to it?)") by its
    canonical path (``os.path.realpath``), which resolves symbolic links only: ``in/a.jsonl`` and ``in/b.jsonl``, hard
    links to one file, are two shards, and its rows are scored (then selected, trained on, exported) twice. Expected:
    one file is one shard however it is reached (locally, e.g. by device and inode)."""
    from hardfocus.readers import find_shards

    shard = write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    os.link(shard, tmp_path / "in" / "b.jsonl")
    with pytest.raises(HardfocusError, match="same file"):
        find_shards([str(tmp_path / "in")])


@pytest.mark.xfail(strict=True, reason="refuse_shared_shards compares locations (paths): a hard link is another path")
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


@pytest.mark.xfail(strict=True, reason="refuse_shared_shards is applied to scores/ sources only")
@pytest.mark.parametrize("pair", ["selection and its scores", "two selections of one scores"])
def test_train_refuses_the_same_scored_rows_through_two_sources(tmp_path, pair):
    """``train`` refuses one input file scored into two scores/ directories ("its rows would count twice"), but only
    among scores/ sources: ``train sel scores`` (a selection and the scores it was made from) and ``train selA selB``
    (two selections of the same scores) are accepted, and every kept row is trained on twice (seen: `hardfocus train sel
    selB` "trained on 48 rows" where 30 + 18 overlap). Each selection's summary records its scores directories, and
    their manifests the shards' locations. Expected: refused, naming the shared file (or the shared scores directory)
    and both sources, as for two scores/ directories."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores
    from training.sources import find_sources

    scores = write_scores(tmp_path / "scores", np.random.default_rng(0).gamma(4, 0.7, 40).tolist())
    a = select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "a"), report=False, keep=0.5), progress=False)
    b = select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "b"), report=False, keep=0.3), progress=False)
    sources = [a.output, str(scores)] if pair == "selection and its scores" else [a.output, b.output]
    with pytest.raises(HardfocusError, match="twice"):
        find_sources(sources)


@pytest.mark.xfail(strict=True, reason="open_scores_dir's count refusal says what is wrong, not what to run")
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


@pytest.mark.xfail(strict=True, reason="score --overwrite of the same job keeps parts whose size and footer end check out")
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


@pytest.mark.xfail(strict=True, reason="a finished export's rerun reads every part whole to hash it")
def test_a_no_op_rerun_of_a_finished_export_does_not_read_every_part_whole(tmp_path, monkeypatch):
    """Performance. Before the part digests, a rerun of a finished export read its marker and stopped. Now
    ``damaged_parts`` opens every part export.json records and hashes all its bytes (XXH3 of the whole file), even
    when every size matches: a no-op rerun costs a full read of the export (on a store, a download of all of it: an
    export is the largest output of the pipeline, and a scripted pipeline reruns it every time). Scoring's no-op rerun
    reads 8 bytes a part for the same purpose. Expected: a rerun of a finished, untouched export reads a small fraction
    of its bytes (sizes and modification stamps from one listing, the Parquet stamps from the footers; the full check
    on request)."""
    from fsspec.implementations.local import LocalFileSystem

    from tests.exporting.helpers import run_export, selection_of

    texts = [t for t in real_texts(300, seed=8) if t.strip()][:200]
    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in texts])
    sel = selection_of(tmp_path, shard, 200, keep=0.9, drop_top=0.0)
    out = tmp_path / "out"
    run_export(sel, out, shard_rows=20, format="jsonl")
    total = sum(p.stat().st_size for p in out.glob("part-*"))
    read = {"bytes": 0}
    original = LocalFileSystem._open

    def counting(self, path, mode="rb", *args, **kwargs):
        f = original(self, path, mode, *args, **kwargs)
        if "r" in mode and os.path.basename(str(path)).startswith("part-") and str(out) in str(path):
            real = f.read

            def read_counted(*a, **k):
                data = real(*a, **k)
                read["bytes"] += len(data)
                return data

            f.read = read_counted
        return f

    monkeypatch.setattr(LocalFileSystem, "_open", counting)
    assert run_export(sel, out, shard_rows=20, format="jsonl").skipped
    assert read["bytes"] < total / 4, f"a no-op rerun read {read['bytes']} of the export's {total} part bytes"


@pytest.mark.xfail(strict=True, reason="check_source_digests requires every sample column, the optional system one too")
def test_export_of_prompt_response_rows_without_the_optional_system_field(tmp_path, tiny_chat_model_dir):
    """``--system-column`` is optional per row (scoring reads a row without it as a conversation without a system
    turn). A JSON Lines shard none of whose exported rows has that field (here no row has it: a config shared across
    corpora) scores, selects, and exported before the source digests; now ``check_source_digests`` finds no ``sys``
    column in the rows read and refuses: "row 0 of the input shard ... has no column 'sys' where scoring read one: the
    input changed since it was scored" (it did not). Seen as well with a shard where only the rows outside the exported
    band have the field. Expected: the export writes the rows (the digest of a row without the field is the digest
    scoring recorded)."""
    from exporting import ExportConfig, export
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select
    from tests.conftest import conversations

    rows = [{"prompt": c[-2]["content"][:60], "response": c[-1]["content"][:60]} for c in conversations(12, seed=3)]
    write_jsonl(tmp_path / "in" / "c.jsonl", rows)
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_chat_model_dir,
                      executor="local", dtype="float32", device="cpu", max_tokens=64, format="prompt_response",
                      system_column="sys"), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False), progress=False)
    result = export(ExportConfig(selected=str(tmp_path / "sel"), output=str(tmp_path / "out"), band="all",
                                 executor="local"), progress=False)
    assert result.manifest.rows == 12


# ---- newcomer mistakes ------------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="the refusal of another stage's output gives the advice of a missing one")
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
    assert "hardfocus score" not in message and "--keep-input-ids" not in message, message
