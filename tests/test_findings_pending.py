"""Findings reproduced on the current code, pending fixes: each test states the correct behaviour, fails today on its
own assertion, and is marked ``xfail(strict=True, raises=AssertionError)`` so that the suite stays green while the bug
exists (and turns red, as XPASS, once it is fixed: then drop the mark).

Every stage runs in this process: scoring and export with ``executor="local"``, selection with its thread pool (no
``ray_address``), training through its data reader only. The corpora are a dozen rows of real text per shard, scored by
the tiny model in float32 on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts, write_jsonl
from tests.exporting.helpers import decisions, read_parts, run_export

ROWS = 12
# rows 3 and 8 of a.jsonl: texts of the same UTF-8 length (so their JSON lines are too), other words
SAME_LENGTH = ("The river carried sand and stones down to the sea.", "She listened to the rain that fell on the gardens.")


def _texts(seed: int) -> list[str]:
    """A dozen non-empty real texts of at most 200 characters."""
    return [t[:200] for t in real_texts(60, seed=seed) if t.strip()][:ROWS]


def _score(inputs: list[str], output: Path, model: str) -> str:
    score(ScoreConfig(inputs=inputs, output=str(output), model=model, executor="local", dtype="float32", device="cpu",
                      max_tokens=64, rows_per_unit=6), progress=False)
    return str(output)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir) -> dict:
    """``in/a.jsonl`` and ``in/b.jsonl``, a dozen rows each, no id column (default ids ``<rel>#<row>``); rows 3 and 8
    of ``a.jsonl`` have texts of equal byte length. Scored into one scores/ directory (read only by the tests)."""
    root = tmp_path_factory.mktemp("findings-pending")
    a = [{"text": t, "domain": "web"} for t in _texts(seed=31)]
    assert len(SAME_LENGTH[0].encode()) == len(SAME_LENGTH[1].encode())
    a[3]["text"], a[8]["text"] = SAME_LENGTH
    write_jsonl(root / "in" / "a.jsonl", a)
    write_jsonl(root / "in" / "b.jsonl", [{"text": t, "domain": "web"} for t in _texts(seed=32)])
    scores = _score([str(root / "in")], root / "scores", tiny_model_dir)
    return {"root": root, "inputs": root / "in", "scores": scores, "a": a}


def _select(scores: list[str], output: Path, **kw) -> Path:
    select(SelectConfig(scores=scores, output=str(output), report=False, **kw), progress=False)
    return output


def _kept_weights(selected: Path) -> dict[str, float]:
    """sample_id -> weight of the kept rows, as the selection's decisions record them."""
    kept = decisions(selected).filter(band="kept")
    return dict(zip(kept["sample_id"].to_list(), kept["weight"].to_list()))


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="finding 1: one shard scored under two relative names is selected twice (24 rows of 12)")
def test_select_refuses_or_counts_once_the_same_shard_scored_into_two_directories(tmp_path, tiny_model_dir):
    """Finding 1: the same JSON Lines file scored into two scores/ directories, once by its directory (``in/``: the
    shard's relative name is ``x.jsonl``) and once through a glob from the parent (``*/x.jsonl``: its name is
    ``in/x.jsonl``), gets other sample ids in each, so ``select S1 S2`` takes both copies: it reports 24 rows of a
    12-row file, and export and training use every row twice. Expected: select refuses, naming the shard, or counts
    the shard once (12 rows)."""
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": t} for t in _texts(seed=33)])
    s1 = _score([str(tmp_path / "in")], tmp_path / "s1", tiny_model_dir)
    s2 = _score([str(tmp_path / "*" / "x.jsonl")], tmp_path / "s2", tiny_model_dir)
    try:
        result = select(SelectConfig(scores=[s1, s2], output=str(tmp_path / "selected"), report=False), progress=False)
    except HardfocusError as exc:
        assert "x.jsonl" in str(exc), f"select refused, without naming the shard: {exc}"
        return
    rows = result.summary.rows
    assert rows == ROWS, f"select counted {rows} rows of the one {ROWS}-row shard x.jsonl, scored into two directories"


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="finding 2: an export during select --overwrite mixes the old selection's weights and the new")
def test_an_export_does_not_mix_two_selections_when_the_selection_is_replaced_underneath_it(scored, tmp_path,
                                                                                          monkeypatch):
    """Finding 2: an export running while ``select --overwrite`` rewrites the selection in place (here: other
    weights only, another temperature) reads each shard's decisions when its task starts, so the shards exported
    before the rewrite carry the old weights and the rest the new ones; it exits 0 and ``export.json`` says complete,
    naming the old selection's digest. Reproduced without timing: the selection is redone between the export's first
    and second shard task (in-process executor). Expected: the export stops with a HardfocusError (its selection was
    replaced), or every exported row has the weight of one single selection and ``export.json`` names that one."""
    import exporting.job
    from hardfocus.fingerprints import digest

    selected = tmp_path / "selected"
    _select([scored["scores"]], selected, drop_top=0.0, keep=1.0, temperature=1.0)
    old = _kept_weights(selected)
    old_summary = json.loads((selected / "summary.json").read_text())
    original, tasks = exporting.job.export_shard, []

    def reselected_after_the_first_shard(row, **kwargs):
        if tasks:  # the first shard is exported: the selection is redone, other weights, in the same directory
            _select([scored["scores"]], selected, drop_top=0.0, keep=1.0, temperature=0.25, overwrite=True)
        tasks.append(row)
        yield from original(row, **kwargs)

    monkeypatch.setattr(exporting.job, "export_shard", reselected_after_the_first_shard)
    try:
        result = run_export(selected, tmp_path / "out", shard_rows=100)
    except HardfocusError:
        return  # refused: the selection changed underneath it
    assert len(tasks) == 2  # both shards were exported, one before the selection was redone and one after
    new = _kept_weights(selected)
    new_summary = json.loads((selected / "summary.json").read_text())
    assert old.keys() == new.keys() and all(old[s] != new[s] for s in old)  # other weights for every row
    got = {r["sample_id"]: r["weight"] for r in read_parts(list((tmp_path / "out").glob("part-*")))}
    assert got.keys() == old.keys()
    from_old = sorted(s for s in got if got[s] == old[s])
    from_new = sorted(s for s in got if got[s] == new[s])
    assert not (from_old and from_new), (
        f"the export mixes two selections: {len(from_old)} rows carry the old weights ({from_old[0]}, ...), "
        f"{len(from_new)} the new ones ({from_new[0]}, ...)")
    want = old_summary if from_old else new_summary
    assert result.manifest.selection_digest == digest(want)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="finding 3: --input-root accepts a copy whose rows were swapped (same byte lengths)")
def test_export_from_an_input_root_refuses_a_copy_whose_rows_were_swapped(scored, tmp_path):
    """Finding 3: ``--input-root`` checks each shard's size and each row's UTF-8 byte count against the scores'
    ``n_bytes``, not what the bytes are: a copy of the corpus in which two rows of ``a.jsonl`` with texts of equal
    length changed places (same size, same byte counts) is exported, each of the two rows under the other's sample
    id, band and weight. Expected: the export refuses, with a HardfocusError naming the shard or the row."""
    selected = _select([scored["scores"]], tmp_path / "selected")
    copy = tmp_path / "copy"
    shutil.copytree(scored["inputs"], copy)
    lines = (copy / "a.jsonl").read_text().splitlines(keepends=True)
    lines[3], lines[8] = lines[8], lines[3]
    (copy / "a.jsonl").write_text("".join(lines))
    assert (copy / "a.jsonl").stat().st_size == (scored["inputs"] / "a.jsonl").stat().st_size
    try:
        run_export(selected, tmp_path / "out", band="all", input_root=str(copy))
    except HardfocusError as exc:
        assert "a.jsonl" in str(exc), f"the export refused, without naming the shard: {exc}"
        return
    scored_text = {f"a.jsonl#{i}": row["text"] for i, row in enumerate(scored["a"])}  # what was scored, by sample id
    got = {r["sample_id"]: r["text"] for r in read_parts(list((tmp_path / "out").glob("part-*")))
           if r["sample_id"].startswith("a.jsonl#")}
    wrong = {s: t for s, t in got.items() if t != scored_text[s]}
    assert not wrong, f"exported rows under the sample ids of other rows (their scored text differs): {wrong}"


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="finding 4: training reads a part copied in from another selection of the same scores")
def test_training_refuses_a_part_copied_in_from_another_selection(scored, tmp_path):
    """Finding 4: two selections of the same scores that differ only in temperature keep the same rows with other
    weights; a training part of B copied over A's ``part-00000.parquet`` has the row count A's summary records, and
    no part says which selection it belongs to, so training on A reads it (B's weights). Checked through the reader
    ``train`` uses (``find_sources``; ``load_training_data`` reads the parts through the same row checks).
    Expected: refused with a HardfocusError naming the part, which is not this selection's."""
    from training.data import load_training_data
    from training.sources import find_sources

    a = _select([scored["scores"]], tmp_path / "A", temperature=1.0)
    b = _select([scored["scores"]], tmp_path / "B", temperature=0.25)
    own = _kept_weights(a)
    assert own.keys() == _kept_weights(b).keys() and own != _kept_weights(b)
    shutil.copyfile(b / "part-00000.parquet", a / "part-00000.parquet")
    try:
        data = load_training_data(find_sources([str(a)]))
    except HardfocusError as exc:
        assert "part-00000.parquet" in str(exc), f"refused, without naming the part: {exc}"
        return
    table = data.table
    got = dict(zip(table["sample_id"].to_pylist(), table["weight"].to_pylist()))
    wrong = {s: (w, own[s]) for s, w in got.items() if w != own[s]}
    assert not wrong, (f"training on {a.name} read {len(wrong)} rows with weights that are not its selection's "
                       f"(read, selected): {dict(list(wrong.items())[:3])}")


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="finding 5: a finished export damaged afterwards (a part cut, one deleted) is reported complete")
def test_a_rerun_of_a_damaged_export_refuses_or_repairs_it(scored, tmp_path):
    """Finding 5: after a complete export, one part cut short and another deleted, the same export command finds
    ``export.json`` and says "already complete" (``skipped``), exit 0, leaving an export that lacks rows. Expected:
    the rerun refuses, naming a damaged part, or writes the damaged and missing parts again so that afterwards every
    part of the manifest exists, reads whole, and the rows add up to the manifest's."""
    selected = _select([scored["scores"]], tmp_path / "selected")
    out = tmp_path / "out"
    first = run_export(selected, out, band="all", shard_rows=4)
    names = [p.name for p in first.manifest.parts]
    assert len(names) >= 3
    cut, deleted = out / names[0], out / names[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    deleted.unlink()
    try:
        again = run_export(selected, out, band="all", shard_rows=4)
    except HardfocusError as exc:
        assert names[0] in str(exc) or names[1] in str(exc), f"refused, without naming a damaged part: {exc}"
        return
    problems, total = [], 0
    for part in again.manifest.parts:
        path = out / part.name
        if not path.exists():
            problems.append(f"{part.name}: missing")
            continue
        try:
            rows = pq.read_table(path).num_rows
        except Exception as exc:  # noqa: BLE001 - any failure to read the part whole is what is checked
            problems.append(f"{part.name}: unreadable ({type(exc).__name__})")
            continue
        total += rows
        if rows != part.rows:
            problems.append(f"{part.name}: {rows} rows, the manifest says {part.rows}")
    assert not problems and total == again.manifest.rows, (
        f"the rerun (skipped={again.skipped}) left a damaged export: {problems}; {total} rows readable of "
        f"{again.manifest.rows}")
