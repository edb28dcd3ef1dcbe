"""A rerun of an interrupted export: whole parts kept, a part cut short or damaged written again, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_jsonl
from tests.exporting.helpers import export_or_refusal, run_export, select_into, selection_of, snapshot


def _interrupted(sel: Path, out: Path, fmt: str) -> tuple[dict[str, bytes], list[str]]:
    run_export(sel, out, format=fmt, shard_rows=5)
    reference = snapshot(out)
    (out / "export.json").unlink()  # as if killed before its marker
    return reference, sorted(reference)


def test_a_json_lines_part_cut_short_is_written_again(tmp_path):
    """``ExportDir.rows_of`` is what a rerun trusts before it keeps a part (its docstring: None where it is "cut
    short or changed since it was written"); tests/exporting test this for Parquet, whose footer a cut destroys.
    For ``--format jsonl`` it counts non-blank lines, so a part cut anywhere inside its last line (a partial copy, a
    disk that lost the tail) counts as whole: the rerun keeps it, writes ``export.json`` and exits 0 over a part
    whose last row is broken JSON (``json.loads`` fails on it; a trainer's loader stops there)."""
    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": f"doc {i} " * (1 + i % 5), "i": i} for i in range(60)])
    sel = selection_of(tmp_path, shard, 60, drop_top=0.0, keep=0.9)
    out = tmp_path / "out"
    reference, names = _interrupted(sel, out, "jsonl")
    (out / names[2]).write_bytes(reference[names[2]][:-8])  # cut inside its last line
    run_export(sel, out, format="jsonl", shard_rows=5)
    assert snapshot(out) == reference
    for line in (out / names[2]).read_text().splitlines():
        json.loads(line)


def test_a_damaged_jsonl_zst_part_is_written_again(tmp_path):
    """A ``.jsonl.zst`` part whose bytes were damaged (a bit flipped in the middle) makes
    ``formats.count_rows`` raise ``zstandard.ZstdError: Data corruption detected``, which ``ExportDir.rows_of`` does
    not catch (only OSError, ArrowException, ValueError): the rerun that was to write it again dies with a
    traceback instead, and so does every rerun until the part is found and removed by hand."""
    shard = write_jsonl(tmp_path / "in" / "e.jsonl", [{"text": f"doc {i} " * (1 + i % 5), "i": i} for i in range(60)])
    sel = selection_of(tmp_path, shard, 60, drop_top=0.0, keep=0.9)
    out = tmp_path / "out"
    reference, names = _interrupted(sel, out, "jsonl.zst")
    damaged = bytearray(reference[names[2]])
    damaged[len(damaged) // 2] ^= 0xFF
    (out / names[2]).write_bytes(bytes(damaged))
    result = export_or_refusal(sel, out, format="jsonl.zst", shard_rows=5)
    assert result is not None and snapshot(out) == reference


def test_a_finished_export_damaged_afterwards_is_repaired_by_its_rerun(two_scored_shards, tmp_path):
    """Finding 5 of the foundation issue: after a complete export, one part cut short and another deleted, the same
    command found ``export.json`` and said "already complete", exit 0, leaving an export short of rows. The manifest
    records each part's size and the digest of its bytes: the rerun finds the two, writes them again (the parts are
    deterministic), and the export is byte for byte the first one."""
    selected = select_into([two_scored_shards["scores"]], tmp_path / "selected")
    out = tmp_path / "out"
    first = run_export(selected, out, band="all", shard_rows=4)
    reference = snapshot(out)
    names = [p.name for p in first.manifest.parts]
    assert len(names) >= 3 and sum(p.rows for p in first.manifest.parts) == first.manifest.rows == 24
    cut, deleted, changed = out / names[0], out / names[1], out / names[2]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    deleted.unlink()
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped in the middle: the same size
    changed.write_bytes(bytes(data))
    again = run_export(selected, out, band="all", shard_rows=4)
    assert not again.skipped and again.parts_written == 3
    assert snapshot(out) == reference and again.manifest == first.manifest.model_copy(update={"versions": again.manifest.versions})
    assert run_export(selected, out, band="all", shard_rows=4).skipped  # whole again: nothing to do
