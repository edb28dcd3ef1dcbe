"""Exports at the edges: a band with no rows, copies that all round to none, values a format cannot hold as they
are, columns whose types differ between shards, and rows whose text is not the one scored. Scores are made up in
the exact contract (tests/selection/fake_scores.py) over real input shards: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from typer.testing import CliRunner

from hardfocus.readers.source_rows import source_batches
from pipelines.cli import app
from scoring import HardfocusError
from selection import SelectConfig, select
from tests.conftest import real_texts, write_jsonl
from tests.exporting.helpers import export_or_refusal, fake_scores, read_parts, run_export, select_into, selection_of


def _scored(d: Path, shard: Path, n: int, fmt: str = "jsonl", seed: int = 0, **kw) -> Path:
    """Made-up scores of the ``n`` rows of ``shard``, its manifest naming the file as scoring would."""
    return fake_scores(d, shard, n, fmt=fmt, seed=seed, **kw)


def _selected(root: Path, scores: list[Path], **kw) -> Path:
    select(SelectConfig(scores=[str(s) for s in scores], output=str(root / "selected"), report=False, **kw), progress=False)
    return root / "selected"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts(n: int) -> list[str]:
    return [f"document {i} " * (1 + i % 4) for i in range(n)]


def test_an_empty_band_exports_no_rows_and_says_so(tmp_path):
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 20)])
    result = run_export(sel, tmp_path / "out", band="excluded")  # every row was ranked: none excluded
    assert (result.manifest.rows, result.manifest.parts, result.manifest.shards) == (0, [], [])
    assert json.loads((tmp_path / "out" / "export.json").read_text())["rows"] == 0
    assert run_export(sel, tmp_path / "out", band="excluded").skipped
    cli = CliRunner().invoke(app, ["-q", "export", str(sel), "-o", str(tmp_path / "cli"), "--band", "excluded",
                                   "--executor", "local"])
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith("exported 0 rows")


def test_resample_whose_copies_all_round_to_none_exports_zero_copies(tmp_path):
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 20)])
    result = run_export(sel, tmp_path / "out", resample=1e-9)
    assert result.manifest.rows == 0 and result.manifest.parts == []
    assert [s.copies for s in result.manifest.shards] == [0] and not (tmp_path / "out" / "spill").exists()


def test_bytes_that_are_not_utf8_are_refused_in_json_lines_in_one_line(tmp_path):
    shard = tmp_path / "in" / "b.parquet"
    shard.parent.mkdir(parents=True)
    texts = _texts(12)
    blob = [b"\xff\xfe" + bytes([i]) for i in range(12)]
    pq.write_table(pa.table({"text": texts, "blob": pa.array(blob, pa.binary())}), shard)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 12, fmt="parquet")])
    with pytest.raises(HardfocusError, match="the column 'blob' holds bytes that are not UTF-8 text.*--format parquet") as err:
        run_export(sel, tmp_path / "out", format="jsonl")
    assert "\n" not in str(err.value)
    assert run_export(sel, tmp_path / "pq").manifest.rows > 0  # Parquet holds bytes


def test_an_empty_struct_nested_in_a_struct_or_list_exports_to_parquet_and_back_to_json(tmp_path):
    rows = [{"text": t, "meta": {"n": i, "extra": {}}, "tags": [{}] * (i % 3)} for i, t in enumerate(_texts(24))]
    shard = _jsonl(tmp_path / "in" / "e.jsonl", rows)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 24)])
    run_export(sel, tmp_path / "pq", band="all")
    schema = pq.read_schema(next((tmp_path / "pq").glob("part-*")))
    assert schema.field("meta").type.field("extra").type == pa.json_()
    got = read_parts(list((tmp_path / "pq").glob("part-*")))
    assert [r["meta"]["extra"] for r in got] == ["{}"] * 24
    run_export(sel, tmp_path / "jsonl", band="kept", resample=3.0, format="jsonl")  # through Parquet phase-one files
    lines = [json.loads(line) for p in (tmp_path / "jsonl").glob("part-*") for line in p.read_text().splitlines()]
    assert lines and all(r["meta"]["extra"] == {} and r["tags"] == rows[r["meta"]["n"]]["tags"] for r in lines)


def test_resample_refuses_a_nested_column_of_other_types_in_two_shards_naming_both(tmp_path):
    a = _jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"alpha {t}", "m": {"x": 1}} for t in _texts(20)])
    b = _jsonl(tmp_path / "in" / "b.jsonl", [{"text": f"beta {t}", "m": 3} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "sa", a, 20, seed=1), _scored(tmp_path / "sb", b, 20, seed=2)])
    with pytest.raises(HardfocusError, match=r"the column 'm' is struct<x: int64> in a.jsonl but int64 in b.jsonl"):
        run_export(sel, tmp_path / "out", resample=1.0)


@pytest.mark.parametrize("last", [8192, 9000], ids=["alone-in-its-batch", "with-hashes"])
def test_a_json_lines_column_of_hashes_and_negative_numbers_is_refused_naming_it(tmp_path, last):
    rows = [{"text": f"t{i}", "h": 2**63 + i} for i in range(last)] + [{"text": "last", "h": -1}]
    shard = _jsonl(tmp_path / "in" / "h.jsonl", rows)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, len(rows))])
    with pytest.raises(HardfocusError, match=rf"row {last} .*column 'h'.*integers past 2\*\*63 and negative ones"):
        run_export(sel, tmp_path / "out", band="all")


def test_a_row_whose_text_is_not_the_one_scored_is_refused(tmp_path):
    """Each exported row's text is checked against the digest scoring recorded of it (xxh3-64 of its UTF-8 bytes)."""
    texts = _texts(12)
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in texts])
    digests = [xxhash.xxh3_64_intdigest(t.encode()) for t in texts]  # computed here, independently of the readers
    scores = _scored(tmp_path / "scores", shard, 12, columns={"source_digest": digests})
    sel = _selected(tmp_path, [scores])
    assert run_export(sel, tmp_path / "ok", band="all").manifest.rows == 12
    other = digests[:5] + [xxhash.xxh3_64_intdigest(texts[5][::-1].encode())] + digests[6:]  # row 5's text reversed
    bad = _selected(tmp_path / "bad", [_scored(tmp_path / "bad" / "scores", shard, 12, columns={"source_digest": other})])
    with pytest.raises(HardfocusError, match=r"row 5 of the input shard .*e\.jsonl is not the row that was scored \(its "
                                             r"text differs from what scoring read"):
        run_export(bad, tmp_path / "out", band="all")


def test_hugging_face_features_survive_a_resampled_export(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    shard = tmp_path / "in" / "d.parquet"
    shard.parent.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": _texts(30), "label": [i % 2 for i in range(30)]},
                               features=features).to_parquet(str(shard))
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 30, fmt="parquet")])
    run_export(sel, tmp_path / "out", resample=2.0)
    got = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "part-*.parquet"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert got.features["label"] == features["label"] and got.features["weight"] == datasets.Value("float32")


def test_a_binary_text_column_exports_as_json_lines(tmp_path):
    """Scoring reads a Parquet text column of type binary (UTF-8 bytes: ``hardfocus/readers/parquet.py`` accepts binary
    and large_binary text and decodes it), so such a corpus scores and selects normally. ``--format jsonl`` (or
    ``jsonl.zst``) of it dies inside ``exporting/formats.write_table``: ``pl.from_arrow(table).write_ndjson`` hits a
    Rust ``todo!()`` for BinaryView and raises ``pyo3_runtime.PanicException`` (a BaseException, so not even the CLI's
    error handler sees it: a Rust backtrace and a Python traceback, not one line). Every JSON Lines export of a
    corpus whose text is binary is impossible, and so is one of any corpus with a binary side column (image bytes,
    hashes) where a clear refusal or an encoding (base64) was owed."""
    shard = tmp_path / "in" / "b.parquet"
    shard.parent.mkdir(parents=True)
    texts = [f"document number {i} " * (1 + i % 4) for i in range(24)]
    pq.write_table(pa.table({"text": pa.array([t.encode() for t in texts], pa.binary()), "i": list(range(24))}), shard)
    sel = selection_of(tmp_path, shard, 24, fmt="parquet")
    result = export_or_refusal(sel, tmp_path / "out", format="jsonl")
    assert result is not None, "a UTF-8 text column scoring read must export"
    rows = read_parts(list((tmp_path / "out").glob("part-*")))
    assert rows and all(r["text"] == texts[r["i"]] for r in rows)


@pytest.mark.parametrize("resample", [None, 2.0], ids=["direct", "resample"])
def test_an_always_empty_json_object_exports_to_parquet(tmp_path, resample):
    """A JSON Lines field that is ``{}`` in every row (``"meta": {}``, common in scraped corpora) is inferred by
    ``hardfocus/readers/source_rows.py`` as ``struct<>``, which Parquet cannot store: the Parquet export (the default format)
    and every ``--resample`` export (its phase-one files are Parquet whatever ``--format``) die in
    ``pq.write_table`` with ``ArrowNotImplementedError: Cannot write struct type 'meta' with no child field``, a
    traceback, and nothing can be exported from such a shard. Expected: the rows exported (the column kept, e.g. as
    a struct with a placeholder child or as JSON text), or a one-line refusal naming the column."""
    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": f"doc {i} " * (1 + i % 3), "meta": {}} for i in range(30)])
    sel = selection_of(tmp_path, shard, 30)
    result = export_or_refusal(sel, tmp_path / "out", resample=resample)
    assert result is not None and result.manifest.rows > 0


def test_resample_over_shards_whose_column_types_differ(tmp_path):
    """The direct export writes each shard's parts in that shard's own schema (README: "shards with other columns
    give parts with other schemas"), so shards whose ``n`` is an integer in one and a string in the other export
    fine. ``--resample`` mixes every shard's copies in each part and unifies the phase-one schemas with
    ``pa.unify_schemas(promote_options="permissive")``, which raises ``ArrowTypeError: Unable to merge: Field n has
    incompatible types: int64 vs string``: a traceback after phase one has run, not a one-line refusal naming the
    column and the shards (or a fallback, e.g. the column as text)."""
    a = tmp_path / "in" / "a.parquet"
    a.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"alpha text {i}" for i in range(30)], "n": list(range(30))}), a)
    b = write_jsonl(tmp_path / "in" / "b.jsonl", [{"text": f"beta text {i}", "n": f"x{i}"} for i in range(30)])
    sel = select_into([fake_scores(tmp_path / "sa", a, 30, fmt="parquet", seed=1), fake_scores(tmp_path / "sb", b, 30, seed=2)],
                  tmp_path / "selected")
    assert run_export(sel, tmp_path / "direct").manifest.rows > 0  # the shards themselves are fine
    result = export_or_refusal(sel, tmp_path / "resampled", resample=1.5)
    assert result is not None and result.manifest.rows > 0  # the fix chosen: such a column is written as text
    assert {pq.read_schema(p).field("n").type for p in (tmp_path / "resampled").glob("part-*")} == {pa.string()}


OURS = ("sample_id", "band", "weight", "score", "loss", "reason")


def test_the_parts_of_one_json_lines_shard_share_one_schema_around_an_unparseable_line(tmp_path):
    """One JSON Lines shard's rows go to its own parts, read under one schema inferred over the band's range (so
    its parts agree, and an interrupted run infers the same). But ``exporting/tasks._batches`` steps around a line
    scoring could not parse by calling ``source_batches`` once per stretch between such lines, and each call infers
    its own schema: here ``i`` is int64 before the bad line and double after it, and ``extra`` exists only after it.
    The parts of this ONE shard then differ in schema (``datasets.load_dataset`` over them fails: "column names
    don't match"), and where a part spans the bad line the permissive concatenation appends ``extra`` AFTER
    export's own columns, against "every source column, then sample_id, band, ...". One bad line in a billion-row
    shard is ordinary."""
    lines = [json.dumps({"text": f"doc {i}", "i": i}) for i in range(20)] + ["{not json"]
    lines += [json.dumps({"text": f"doc {i}", "i": i + 0.5, "extra": "e"}) for i in range(20, 40)]
    shard = tmp_path / "in" / "x.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text("\n".join(lines) + "\n")
    statuses = ["ok"] * 20 + ["error: invalid JSON"] + ["ok"] * 20
    sel = selection_of(tmp_path, shard, 41, statuses=statuses, drop_top=0.0, keep=0.9)
    run_export(sel, tmp_path / "out", shard_rows=8)
    schemas = {str(pq.read_schema(p).remove_metadata()) for p in sorted((tmp_path / "out").glob("part-*.parquet"))}
    assert len(schemas) == 1, schemas
    names = pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).names
    ours = [n for n in names if n in OURS]
    assert names[-len(ours):] == ours, names  # the source's columns first


def test_a_json_lines_column_of_64_bit_hashes_exports(tmp_path):
    """A JSON Lines column of unsigned 64-bit hashes (minhash/simhash ids: half the values are past 2**63) reads as
    uint64 within a batch (review 4's fix), but the export reads a range of more than 8192 rows in batches and
    unifies their schemas: a batch whose values all happen to fit int64 (the last, short batch: 1 row here) infers
    int64, ``pa.unify_schemas([uint64, int64], permissive)`` is int64, and building the first batch under it
    overflows: ``HardfocusError: row 1 ... its columns' types cannot be unified with the rows around it (Python int
    too large to convert to C long)``. Scoring read the shard and selection decided on its rows; no band of it can
    be exported, and the message blames the data."""
    rows = [{"text": f"t{i}", "h": (2**63 + i) if i % 2 else i} for i in range(8192)] + [{"text": "last", "h": 7}]
    shard = write_jsonl(tmp_path / "in" / "h.jsonl", rows)
    sel = selection_of(tmp_path, shard, len(rows))
    run_export(sel, tmp_path / "out", band="all", shard_rows=100_000)
    got = {r["sample_id"]: r["h"] for r in read_parts(list((tmp_path / "out").glob("part-*")))}
    assert got == {f"h.jsonl#{i}": r["h"] for i, r in enumerate(rows)}
    assert [t.schema.field("h").type for _, t in source_batches(str(shard), "jsonl", None)] == [pa.uint64()] * 2


def test_hugging_face_features_of_the_source_survive_the_export(tmp_path):
    """A Parquet shard written by ``datasets`` (``to_parquet``, ``push_to_hub``) keeps its features (``ClassLabel``
    names, ``Image``/``Audio``, ``Sequence`` lengths) in the schema's ``huggingface`` metadata; ``exporting/rows.joined``
    drops every source schema's metadata, so ``datasets.load_dataset`` over the export reads ``label`` as a plain
    int64 (the label names gone) and an ``Image`` column as a struct of bytes and path, where the source loads as
    ``ClassLabel(names=['neg', 'pos'])``. "Every source column unchanged" holds for the values, not for what a
    ``datasets`` user gets back; the features of the source columns should be carried over, extended with the
    columns export adds."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    shard = tmp_path / "in" / "d.parquet"
    shard.parent.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": [f"review number {i}" for i in range(30)], "label": [i % 2 for i in range(30)]},
                               features=features).to_parquet(str(shard))
    sel = selection_of(tmp_path, shard, 30, fmt="parquet")
    run_export(sel, tmp_path / "out")
    got = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "part-*.parquet"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert got.features["label"] == features["label"]


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
