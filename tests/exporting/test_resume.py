"""A rerun of an interrupted export: whole parts kept, a part cut short or damaged written again, byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hardfocus.errors import HardfocusError
from tests.conftest import real_texts, write_jsonl
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
    records each part's size and the digest of its bytes: the rerun finds the two by one listing and writes them again
    (the parts are deterministic), checking every other part whole before it keeps it; a part changed at the same size
    alone is found by --overwrite, which reads every part whole; the export is then byte for byte the first one, and a
    part file it did not write is refused, named."""
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
    again = run_export(selected, out, band="all", shard_rows=4)  # two found by sizes, then every part read whole
    assert not again.skipped and again.parts_written == 3
    assert snapshot(out) == reference
    changed.write_bytes(bytes(data))  # alone, at the same size: a no-op rerun reads no part, --overwrite every one
    assert run_export(selected, out, band="all", shard_rows=4).skipped
    repaired = run_export(selected, out, band="all", shard_rows=4, overwrite=True)
    assert not repaired.skipped and repaired.parts_written == 1
    assert snapshot(out) == reference
    assert repaired.manifest == first.manifest.model_copy(update={"versions": repaired.manifest.versions})
    assert run_export(selected, out, band="all", shard_rows=4).skipped  # whole again: nothing to do
    (out / "part-99999-00000.parquet").write_bytes(reference[names[0]])  # a copy under a name it did not write
    with pytest.raises(HardfocusError, match=r"holds part files this export did not write \(e.g. part-99999-00000"):
        run_export(selected, out, band="all", shard_rows=4)


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
