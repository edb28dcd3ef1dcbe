"""Problems found by a fourth adversarial review, of ``selected/decisions/`` (a decision per scored row) and of Hugging
Face ``save_to_disk`` directories / ``.arrow`` files as inputs (with :func:`hardfocus.readers.source_rows.source_batches`).

Each test fails on the code as reviewed, for the reason its docstring gives, and is marked ``xfail(strict=True)``
so that the file stays green until the problem is fixed: remove the mark with the fix.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from hardfocus.contracts.decisions import decision_parts
from hardfocus.readers import find_shards, iter_units, read_shard
from hardfocus.readers.source_rows import source_batches
from hardfocus.sample_format import Columns
from scoring import HardfocusError
from selection import SelectConfig, select
from tests.selection.fake_scores import write_scores, write_windowed_scores


def _select(scores, output, **kw):
    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), report=False, **kw), progress=False)


def _decisions(sel) -> pl.DataFrame:
    return pl.read_parquet(f"{sel}/decisions/part-*.parquet").with_columns(pl.col("band").cast(pl.String))


# ---- selected/decisions/ ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["last part all errors", "last part all too_short", "by document, last part too_short"])
def test_a_last_score_part_without_a_ranked_row_is_selected(tmp_path, case):
    """select crashes with ``IndexError: index N out-of-bounds in add.reduceat`` (a traceback, no output) whenever
    the LAST score part holds no ranked row: ``write_selection`` counts the kept rows per part with
    ``np.add.reduceat(band == KEPT, r_bounds[:-1])``, and reduceat refuses an index equal to the array's length (the
    ``np.where`` fix after it only covers empty ranges in the middle). A last part of error / ``too_short`` / empty
    rows is ordinary (a shard of empty documents sorts last, a one-token tail window), and with small parts it is
    frequent: 3 of 40 random small selections in this review hit it. Every such selection is impossible."""
    rng = np.random.default_rng(0)
    if case.startswith("by document"):
        # documents a..d fill parts 0-1; e's only windows are too_short and are the last part's rows
        windows = {d: [(float(rng.uniform(1, 4)), 5), (float(rng.uniform(1, 4)), 5)] for d in "abcd"}
        windows["e"] = [(1.0, 0), (1.0, 0)]
        write_windowed_scores(tmp_path / "scores", windows, statuses={"e": ["too_short", "too_short"]},
                              rows_per_part=4)
        result = _select([tmp_path / "scores"], tmp_path / "sel", by="document", drop_top=0.0, keep=0.5)
        n = 10
    else:
        n = 14
        bad = "error: boom" if case == "last part all errors" else "too_short"
        write_scores(tmp_path / "scores", rng.uniform(1, 4, n).tolist(), statuses=["ok"] * 7 + [bad] * 7,
                     rows_per_part=7)
        result = _select([tmp_path / "scores"], tmp_path / "sel", drop_top=0.1, keep=0.5)
    decided = _decisions(tmp_path / "sel")
    assert decided.height == n and decided.filter(pl.col("band") == "excluded").height == sum(result.summary.excluded.values())


def test_the_advised_overwrite_of_a_selection_made_before_decisions_writes_them(tmp_path):
    """A selection made before decisions/ existed is refused by ``hardfocus report``, ``hardfocus run``'s label table
    and export with "run the same `hardfocus select` again with --overwrite" (hardfocus/contracts/decisions.py
    decision_parts). That advice is a dead end: the selection's identity is unchanged, so StageDir._decide answers
    COMPLETE (checked before ``overwrite``) and select logs "already holds this selection: nothing to do" and writes
    nothing, with or without --overwrite. The user cannot get decisions/ short of deleting the directory by hand;
    ``hardfocus run`` with a label_column fails at its very end on every output made by the previous version."""
    write_scores(tmp_path / "scores", list(np.linspace(1, 3, 20)), rows_per_part=5)
    sel = tmp_path / "sel"
    _select([tmp_path / "scores"], sel)
    # what the previous version left: no decisions/, a summary without decision_parts
    shutil.rmtree(sel / "decisions")
    summary = json.loads((sel / "summary.json").read_text())
    del summary["decision_parts"]
    (sel / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(HardfocusError, match="--overwrite"):
        decision_parts(str(sel))

    _select([tmp_path / "scores"], sel, overwrite=True)  # what the message says to do
    assert len(decision_parts(str(sel))) == 4  # raises: still "records no decisions/"


def _two_selections_over(tmp_path):
    write_scores(tmp_path / "scores", list(np.random.default_rng(1).uniform(1, 4, 20)), rows_per_part=5)
    a, b = tmp_path / "a", tmp_path / "b"
    _select([tmp_path / "scores"], a, drop_top=0.1, keep=0.5)
    _select([tmp_path / "scores"], b, drop_top=0.4, keep=0.2)
    return a, b


def test_a_decisions_part_put_in_another_ones_place_is_refused(tmp_path):
    """The footer record of a decisions part names the score part it decides ("scores": dir index, "part": name), so
    that a part in the wrong place can be told; but decision_parts (hardfocus/contracts/decisions.py) only compares the
    record's ``rows`` with the file. Two parts of the same row count swapped (a copy script, a hand repair) are read
    as valid: every reader (report, the run's label table, export) then gives rows 5-9 the bands of rows 10-14 and
    vice versa, while the part's own record says it belongs elsewhere."""
    a, _ = _two_selections_over(tmp_path)
    one, two = a / "decisions" / "part-00001.parquet", a / "decisions" / "part-00002.parquet"
    tmp = a / "decisions" / "swap"
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)
    with pytest.raises(HardfocusError, match="part-00001.parquet"):
        decision_parts(str(a))


def test_a_decisions_part_of_another_selection_is_refused(tmp_path):
    """The contract promises foreign decisions are refused in one clear line. A decisions part copied from another
    selection of the same scores (same part, same row count; e.g. a sync of two output directories, or one restored
    from a backup of an earlier run) passes every check of decision_parts: its footer record ({"scores": 0, "part":
    ..., "rows": 5}) is the same for every selection of those scores. The selection then contradicts itself: its
    decisions no longer count to its summary's bands, nor are the kept decisions its training parts' rows, and the
    report, label table and export silently show the other selection's bands for those rows. The record needs
    something of the selection (its identity digest) for decision_parts to compare."""
    a, b = _two_selections_over(tmp_path)
    shutil.copyfile(b / "decisions" / "part-00001.parquet", a / "decisions" / "part-00001.parquet")
    summary = json.loads((a / "summary.json").read_text())
    got = _decisions(a)
    assert {k: v for k, v in got.group_by("band").len().iter_rows() if k != "excluded"} != summary["bands"]
    with pytest.raises(HardfocusError):
        decision_parts(str(a))


@pytest.mark.parametrize("twice", ["ranked", "excluded"])
def test_a_row_decided_twice_is_refused_by_the_write_pass(tmp_path, monkeypatch, twice):
    """writer.write_selection promises "a row in neither (or both) is refused, so decisions/ accounts for each scored
    row", and the summary's counts are the excluded/ranked frames counted. But write_part only checks for a row that
    is both ranked and excluded, or neither: a row ranked twice is written twice into the training part (trained on
    twice) and counted twice in the summary's bands; a row excluded twice is counted twice in the summary's
    ``excluded`` while decisions/ holds it once (with the last reason). The guard is the one thing that would catch a
    future ranking step that duplicates rows (a join on a non-unique key, as excess and by-document use): here a
    duplicate is injected into what ranking returns, and the write pass must refuse it."""
    import selection.job as job

    real = job._rank

    def duplicating(*args, **kwargs):
        excluded, ranked, units, documents = real(*args, **kwargs)
        if twice == "ranked":
            kept = ranked.filter(pl.col("band") == "kept").head(1)
            ranked = pl.concat([ranked, kept]).sort("_row")
        else:
            excluded = pl.concat([excluded, excluded.head(1).with_columns(reason=pl.lit("another reason"))])
        return excluded, ranked, units, documents

    monkeypatch.setattr(job, "_rank", duplicating)
    statuses = ["ok"] * 20
    statuses[3] = "error: x"
    write_scores(tmp_path / "scores", list(np.linspace(1, 3, 20)), statuses=statuses, rows_per_part=5)
    with pytest.raises(HardfocusError, match="a row twice"):
        _select([tmp_path / "scores"], tmp_path / "sel", drop_top=0.1, keep=0.5)


# ---- Hugging Face datasets directories, .arrow shards, source_batches -------------------------------------------


def _stream_cut_after_batch(path, batches: int = 3, rows: int = 5) -> tuple[bytes, list[int]]:
    """An IPC stream of ``batches`` record batches of short texts; returns its bytes and the offset just after each
    message (schema, then each batch)."""
    schema = pa.schema([("text", pa.string())])
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, schema)
        for b in range(batches):
            writer.write_batch(pa.record_batch([pa.array([f"row {b}-{i}" for i in range(rows)])], schema=schema))
        writer.close()
    data = path.read_bytes()
    source = pa.BufferReader(pa.py_buffer(data))
    reader = pa.ipc.MessageReader.open_stream(source)
    ends = []
    while True:
        try:
            reader.read_next_message()
        except StopIteration:
            break
        ends.append(source.tell())
    return data, ends


def test_an_arrow_stream_cut_between_two_record_batches_is_refused(tmp_path):
    """read_arrow.py promises "a stream that does not end with the end-of-stream marker was cut short ... even when
    the cut fell between two batches: it is refused when opened, so no row is dropped silently". The check accepts
    any file whose last 4 bytes are zero as ending with the pre-Arrow-0.15 marker; but a record batch's body is
    padded to 8 bytes with zeros, so a stream cut exactly after a batch (a copy interrupted at a write boundary, the
    usual place, since writers flush whole messages) nearly always ends in zeros. Such a file is read as a complete,
    shorter shard: scoring scores 10 of 15 rows (the manifest's row count is the cut one) and source_batches returns
    10 rows; no error anywhere. The existing test only cuts off the 8-byte marker itself."""
    path = tmp_path / "data-00000-of-00001.arrow"
    data, ends = _stream_cut_after_batch(path)
    assert len(ends) == 4 and ends[-1] == len(data) - 8  # schema, 3 batches, then the 8-byte end-of-stream marker
    path.write_bytes(data[: ends[2]])  # after the second batch: the third batch and the marker are gone
    assert path.read_bytes()[-4:] == b"\x00\x00\x00\x00"  # the padding that passes for the old marker
    (shard,) = find_shards([str(path)])
    with pytest.raises(HardfocusError, match="cut short"):
        list(iter_units(shard, Columns(), 4))
    with pytest.raises(HardfocusError, match="cut short"):
        list(source_batches(shard.url, "arrow", None))


@pytest.mark.parametrize("missing", [["test"], ["train", "test"]])
def test_a_dataset_dict_with_a_split_missing_is_refused(tmp_path, missing):
    """sources.py refuses a datasets directory whose state.json lists a data file that is not there ("an incomplete
    copy, never a smaller dataset"), but applies no such rule to a DatasetDict: dataset_dict.json lists its splits
    ({"splits": ["train", "test"]}) and is never read. A copy missing a split directory scores as a smaller dataset
    without a word; with every split directory missing, dataset_dict.json itself is taken for a JSON Lines shard
    (dataset_dict.json/state.json are only skipped beside a datasets directory)."""
    import datasets

    datasets.disable_progress_bars()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c"] * 3}),
                               "test": datasets.Dataset.from_dict({"text": ["d e f"] * 2})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert json.loads((tmp_path / "dd" / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}
    for split in missing:
        shutil.rmtree(tmp_path / "dd" / split)
    with pytest.raises(HardfocusError, match="test"):
        find_shards([str(tmp_path / "dd")])


def test_an_arrow_file_with_string_view_text_is_read(tmp_path):
    """``.arrow`` files are inputs now, and the common way to write one besides datasets is polars'
    ``write_ipc``/``write_ipc_stream``, which (at its default compat level) writes text columns as ``string_view``
    (Utf8View). Such a file is refused with "column 'text' ... is string_view, not text; pass the right column with
    --text-column", which sends the user looking for another column when the column is right. (A ``string_view``
    text would also need _cell_bytes in read_parquet.py, which counts 0 bytes for it, so --max-row-bytes would not
    apply.)"""
    texts = ["the first document", "the second one"]
    pl.DataFrame({"text": texts}).write_ipc_stream(tmp_path / "polars.arrow")
    with pa.ipc.open_stream(str(tmp_path / "polars.arrow")) as reader:
        assert reader.schema.field("text").type == pa.string_view()  # what polars writes
    (shard,) = find_shards([str(tmp_path / "polars.arrow")])
    block = read_shard(shard, Columns())
    assert block.values == texts and block.status == [None, None]  # None: read, no error


def test_a_jsonl_shard_with_a_byte_order_mark_reads_its_first_row_as_source_batches_does(tmp_path):
    """source_rows promises (shard, row) of scores/ points at the same row, read the way scoring reads it. For a JSON
    Lines file saved with a UTF-8 BOM (Windows editors, PowerShell's Out-File, Excel's "CSV UTF-8" pipelines), they
    disagree on row 0: scoring decodes the line as 'utf-8' (BOM kept as U+FEFF) and json.loads(str) refuses it, so the
    first row of every such shard gets status "error: invalid JSON: Unexpected UTF-8 BOM" and is never selected;
    check_first_json_row and source_batches parse the bytes (json.loads detects the BOM) and read it as a good row."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "the first row"}\r\n{"text": "the second"}\r\n')
    (shard,) = find_shards([str(path)])
    source = [r for _, t in source_batches(shard.url, "jsonl", None) for r in t.to_pylist()]
    assert source == [{"text": "the first row"}, {"text": "the second"}]
    block = read_shard(shard, Columns())
    assert block.status == [None, None] and block.values == ["the first row", "the second"]


def test_source_batches_read_a_jsonl_shard_with_an_unsigned_64_bit_column(tmp_path):
    """Pretraining corpora often carry 64-bit hashes (xxhash64, simhash, minhash ids) as JSON numbers, half of which
    are over 2**63. Scoring reads such a shard fine (it never looks at the column), but source_batches, which export
    reads to put each source row beside its decision, refuses the whole shard: pyarrow's inference raises
    OverflowError, reported as "row 0 ... its columns' types cannot be unified with the rows before it" (row 0 has no
    rows before it). Every row of the shard is then unexportable although each is valid JSON; the value must come
    back whole (a uint64, a decimal or its digits as text, not a rounded double)."""
    path = tmp_path / "hashed.jsonl"
    path.write_text('{"text": "a first document", "hash": 12345678901234567890}\n'
                    '{"text": "a second one", "hash": 5}\n')
    (shard,) = find_shards([str(path)])
    assert read_shard(shard, Columns()).values == ["a first document", "a second one"]  # scoring reads both
    rows = [r for _, t in source_batches(shard.url, "jsonl", None) for r in t.to_pylist()]
    assert [r["text"] for r in rows] == ["a first document", "a second one"]
    assert str(rows[0]["hash"]) == "12345678901234567890"
