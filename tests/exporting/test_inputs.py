"""What export reads and where it writes: a damaged decisions part, a shuffled or edited copy of the corpus under
``--input-root``, a selection replaced while the export reads it, each refused in one line; an output inside the
scored corpus refused."""

from __future__ import annotations

import json
import shutil

import pytest

from hardfocus.errors import HardfocusError
from scoring import ScoreConfig, score
from tests.conftest import real_texts, write_jsonl
from tests.exporting.helpers import read_parts, run_export, select_into, selection_of


def test_a_damaged_decisions_part_is_refused_in_one_line(tmp_path):
    """``decision_parts`` checks each decisions part's footer (schema, record, row count), but a part whose data
    pages were damaged after the selection was written (footer intact) is first read by
    ``exporting/selection._shards_in`` (``pq.read_table(columns=["shard"])``), which raises ``OSError: Couldn't
    deserialize thrift: ... Deserializing page header failed``, a traceback: "refuses ... in one clear line",
    naming the part and saying to select again, is the promise."""
    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": f"doc {i}"} for i in range(30)])
    sel = selection_of(tmp_path, shard, 30)
    part = sorted((sel / "decisions").glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = bytes(len(data) - footer - 4)  # the pages zeroed, the footer kept
    part.write_bytes(bytes(data))
    with pytest.raises(HardfocusError, match="decisions part .*part-00000.parquet"):
        run_export(sel, tmp_path / "out")


def test_an_output_inside_the_scored_input_directory_is_refused(tmp_path):
    """``hardfocus export SEL -o corpus/export`` where ``corpus/`` is what was scored is accepted, and the export's
    parts land inside the corpus: the next round of continual training (``hardfocus score corpus/``) lists them as
    input shards (``find_shards`` recurses; here it finds ``export/part-*.parquet`` and even ``export/export.json``
    and ``export_job.json``, which it takes for JSON Lines), so every kept row is scored, selected and trained on
    twice. Every other stage refuses to write where it reads (stagedir.refuse_overlap); export knows the input
    shards' URLs and their relative paths, so it knows the scored directory and should refuse it too."""
    from hardfocus.readers import find_shards

    shard = write_jsonl(tmp_path / "corpus" / "e.jsonl", [{"text": f"doc {i}"} for i in range(30)])
    sel = selection_of(tmp_path, shard, 30)
    try:
        with pytest.raises(HardfocusError, match="input"):
            run_export(sel, tmp_path / "corpus" / "export")
    finally:
        listed = [s.rel for s in find_shards([str(tmp_path / "corpus")])]
        assert listed == ["e.jsonl"], f"a rescore of the corpus would read {listed}"


def test_a_shuffled_copy_under_input_root_is_refused(tmp_path, tiny_model_dir):
    """With ``--input-root`` (a corpus that moved) a shard is checked by its size only, and with default sample ids
    (no ``--id-column``: ``<rel>#<row>``, made from the row's position) the per-row id check can never fail. So a
    copy whose lines are in another order (``shuf``, a dedup pass that reorders, a re-export) has exactly the size
    that was scored and passes every check: the export writes other documents under each decision (their weights,
    bands and scores attached to the wrong texts) and exits 0. The scores hold what would catch it (``n_bytes`` of
    each scored row, the ``n_tokens``), or the manifest could record a checksum; nothing is compared."""
    texts = [t for t in real_texts(60, seed=9) if t.strip()][:24]
    write_jsonl(tmp_path / "in" / "docs.jsonl", [{"text": t, "k": i} for i, t in enumerate(texts)])
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", device="cpu", max_tokens=32), progress=False)
    sel = select_into([tmp_path / "scores"], tmp_path / "sel", drop_top=0.1, keep=0.6)
    moved = tmp_path / "moved" / "docs.jsonl"
    moved.parent.mkdir()
    moved.write_text("".join(reversed((tmp_path / "in" / "docs.jsonl").read_text().splitlines(keepends=True))))
    assert moved.stat().st_size == (tmp_path / "in" / "docs.jsonl").stat().st_size
    shutil.rmtree(tmp_path / "in")
    try:
        with pytest.raises(HardfocusError, match="docs.jsonl"):
            run_export(sel, tmp_path / "out", input_root=str(tmp_path / "moved"))
    finally:
        rows = read_parts(list((tmp_path / "out").glob("part-*")))
        wrong = [r["sample_id"] for r in rows if f"docs.jsonl#{r['k']}" != r["sample_id"]]
        assert not wrong, f"{len(wrong)} of {len(rows)} exported rows carry another row's decision"


def test_a_copy_whose_rows_of_equal_length_were_swapped_is_refused_under_input_root(two_scored_shards, tmp_path):
    """Finding 3 of the foundation issue: ``--input-root`` compared each row's UTF-8 byte count with the scores'
    ``n_bytes``, not what the bytes are, so a copy in which two rows of equal length changed places (the same size,
    the same byte counts) was exported, each row under the other's sample id, band and weight; a text reversed in place
    passed too. Each row is checked against the digest of the sample scoring read (``source_digest``)."""
    selected = select_into([two_scored_shards["scores"]], tmp_path / "selected")
    for name, edit in (("swapped", lambda lines: [*lines[:3], lines[8], *lines[4:8], lines[3], *lines[9:]]),
                       ("reversed", lambda lines: [*lines[:3], _reversed_text(lines[3]), *lines[4:]])):
        copy = tmp_path / name
        shutil.copytree(two_scored_shards["inputs"], copy)
        lines = (copy / "a.jsonl").read_text().splitlines(keepends=True)
        (copy / "a.jsonl").write_text("".join(edit(lines)))
        assert (copy / "a.jsonl").stat().st_size == (two_scored_shards["inputs"] / "a.jsonl").stat().st_size
        with pytest.raises(HardfocusError, match=rf"row 3 of the input shard {copy}/a\.jsonl is not the row that was "
                                                 r"scored \(its text differs from what scoring read"):
            run_export(selected, tmp_path / f"out-{name}", band="all", input_root=str(copy))


def _reversed_text(line: str) -> str:
    row = json.loads(line)
    return json.dumps(row | {"text": row["text"][::-1]}) + "\n"


def test_a_selection_replaced_while_the_export_reads_it_stops_the_export(two_scored_shards, tmp_path, monkeypatch):
    """Finding 2 of the foundation issue: an export running while ``select --overwrite`` rewrote its selection (other
    weights) read each shard's decisions when its task started, finished with the old weights on the first shard and
    the new ones on the second, and its ``export.json`` said complete. The export holds the selection it opened: each
    decisions part is checked against that selection's identity, so the replaced one stops it in one line. Reproduced
    without timing: the selection is redone between the first and the second shard's task (in-process executor)."""
    import exporting.job

    selected = select_into([two_scored_shards["scores"]], tmp_path / "selected", drop_top=0.0, keep=1.0, temperature=1.0)
    original, tasks = exporting.job.export_shard, []

    def reselected_after_the_first_shard(row, **kwargs):
        if tasks:  # the first shard is exported: the selection is redone in the same directory, other weights
            select_into([two_scored_shards["scores"]], selected, drop_top=0.0, keep=1.0, temperature=0.25, overwrite=True)
        tasks.append(row)
        yield from original(row, **kwargs)

    monkeypatch.setattr(exporting.job, "export_shard", reselected_after_the_first_shard)
    with pytest.raises(HardfocusError, match=r"the decisions part .*part-\d{5}\.parquet was written by another run .*"
                                             r"the selection was replaced while this export read it; run the export again"):
        run_export(selected, tmp_path / "out", shard_rows=100)
    assert len(tasks) == 2 and not (tmp_path / "out" / "export.json").exists()
