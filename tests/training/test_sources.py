"""One reader of training data: the in-process path and the Ray Train path find, check and refuse the same.

Both entry points (``load_training_data`` and ``training_dataset``) are fed the same directories:
unfinished ones, a mix of stages in one directory, parts that do not match their contract, rows
that cannot be trained on. They raise the same errors, and on good data they yield the same rows.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.parts import stamped
from scoring import HardfocusError, score
from selection import SelectConfig, select
from tests.scoring.helpers import TEXTS, score_config, write_texts
from tests.selection.fake_scores import write_scores
from tests.stamps import rewrite_keeping_stamp, rewrite_part, write_sibling_part
from tests.training.helpers import mixed_length_sequences, write_parts_dir, write_selected, write_token_part
from tests.training.test_loss_spans import response_spans, with_spans
from training.data import load_training_data
from training.sources import find_sources


def _rewrite(directory: str | Path, change) -> str:
    """Apply ``change`` to the table of the directory's first part."""
    part = sorted(Path(directory).glob("part-*.parquet"))[0]
    rewrite_part(part, change(pq.read_table(part)))  # as a stage that wrote such a table would have
    return str(directory)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def bad_directories(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (training data paths, the error both readers must raise)."""
    seqs = mixed_length_sequences(6, vocab=290, seed=1)
    good = write_selected(tmp / "good", seqs)
    scores = write_scores(tmp / "scores", [1.0] * 6, rows_per_part=3)
    cut = tmp / "cut"
    cut.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array(seqs, pa.list_(pa.int32()))}), cut / "part-0.parquet")
    (cut / "part-1.parquet").write_bytes((cut / "part-0.parquet").read_bytes()[:60])  # tokens, the second part cut short
    score_part = sorted(scores.glob("part-*.parquet"))[0]
    mixed = write_selected(tmp / "mixed", seqs)
    (Path(mixed) / "part-00000.parquet").write_bytes(score_part.read_bytes())
    unfinished_scores = tmp / "unfinished-scores"
    unfinished_scores.mkdir()
    (unfinished_scores / score_part.name).write_bytes(score_part.read_bytes())
    return {
        "unfinished selection": ([good, write_selected(tmp / "partial", seqs, with_summary=False)], "did not finish; rerun `hardfocus select`"),
        "unfinished scoring": ([str(unfinished_scores)], "the scoring did not finish"),
        "a part cut short": ([str(cut)], r"cannot read '.*part-1.parquet' of .*damaged after it was written"),
        "scores parts in a selected/": ([mixed], r"part-00000.parquet is a part of scores, not of selected"),
        "weight as text": ([_rewrite(write_selected(tmp / "w", seqs), lambda t: _set(t, "weight", pa.array(["1"] * 6)))],
                           "column 'weight' is string, expected float"),
        "no input_ids": ([_rewrite(write_selected(tmp / "noids", seqs), lambda t: t.drop_columns(["input_ids"]))],
                         "has no input_ids column"),
        "spans of another type": ([_rewrite(write_selected(tmp / "sp", seqs), lambda t: t.append_column("loss_spans", pa.array(["x"] * 6)))],
                                  "column 'loss_spans' is string, expected"),
        "empty finished scores/": ([str(_empty_scores(tmp / "empty"))], "finished scores/ directory without rows"),
        "not a directory": ([str(tmp / "nowhere")], "is not a directory"),
    }


def _empty_scores(path: Path) -> Path:
    """A finished scores/ of an input without rows: its manifest, no part."""
    one_row = write_scores(path.with_name("one-row"), [1.0])
    manifest = json.loads((one_row / "manifest.json").read_text())
    path.mkdir()
    (path / "job.json").write_text((one_row / "job.json").read_text())
    (path / "manifest.json").write_text(json.dumps(manifest | {"parts": 0, "rows": 0, "shards": []}))
    return path


def bad_rows(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Directories whose footers are fine but some rows are not: caught where the rows are read."""
    seqs = mixed_length_sequences(6, vocab=290, seed=2)
    short = [s[:] for s in seqs]
    short[4] = short[4][:1]
    spans = response_spans(seqs, seed=1, plain_every=0)
    no_target = [*spans[:3], [{"start": 0, "stop": 1}], *spans[4:]]
    backwards = [*spans[:5], [{"start": 4, "stop": 2}]]
    null_weight = _rewrite(write_selected(tmp / "nullw", seqs), lambda t: _set(t, "weight", pa.array([1.0] * 5 + [None], pa.float32())))
    return {
        "a row of one token": ([write_selected(tmp / "short", short)], "have fewer than 2 tokens"),
        "spans without a target": ([with_spans(write_selected(tmp / "nt", seqs), no_target)], "select no target token"),
        "spans backwards": ([with_spans(write_selected(tmp / "bw", seqs), backwards)], re.escape("0 <= start <= stop")),
        "a null weight": ([null_weight], "have a null weight"),
    }


@pytest.mark.parametrize("case", ["unfinished selection", "unfinished scoring", "a part cut short", "scores parts in a selected/",
                                  "weight as text", "no input_ids", "spans of another type", "empty finished scores/",
                                  "not a directory"])
def test_in_process_reader_refuses_bad_directories(tmp_path, case):
    paths, message = bad_directories(tmp_path)[case]
    with pytest.raises(HardfocusError, match=message):
        load_training_data(paths)


def test_weights_are_checked_when_the_sources_are_found(tmp_path):
    """The weight column (4 bytes a row) is read up front: a streamed run refuses a bad weight before its first step."""
    paths, message = bad_rows(tmp_path)["a null weight"]
    with pytest.raises(HardfocusError, match=message):
        find_sources(paths)


@pytest.mark.parametrize("case", ["a row of one token", "spans without a target", "spans backwards"])
def test_in_process_reader_refuses_bad_rows(tmp_path, case):
    paths, message = bad_rows(tmp_path)[case]
    find_sources(paths)  # the footers are fine ...
    with pytest.raises(HardfocusError, match=message):  # ... the rows are not
        load_training_data(paths)


def test_sources_count_the_rows_the_reader_reads(tmp_path):
    """The driver's counts (footers, and the status column of scores/) equal what is read, without reading it."""
    seqs = mixed_length_sequences(9, vocab=290, seed=3)
    sel = write_selected(tmp_path / "sel", seqs, weights=np.linspace(0.5, 1.5, 9).tolist())
    statuses = ["ok", "empty", "ok", "ok", "too_short", "ok", "ok", "ok", "error: x", "ok"]
    scores = str(write_scores(tmp_path / "scores", [1.0] * 10, statuses=statuses, rows_per_part=4))
    sources = find_sources([sel, scores])
    assert [s.kind for s in sources.sources] == ["selected", "scores"] and not sources.has_weights
    data = load_training_data(sources)
    assert sources.rows == len(data) == 9 + statuses.count("ok") and sources.not_ok == data.not_ok == 3
    assert data.table.column("weight").to_pylist()[:9] == pytest.approx(np.linspace(0.5, 1.5, 9))
    assert data.table.column("weight").to_pylist()[9:] == [1.0] * statuses.count("ok")  # scores/: ERM


# --- the same through Ray Data ----------------------------------------------------------------------


def _ray_rows(paths: list[str]) -> list[dict]:
    from training.ray_train import training_dataset

    return training_dataset(paths).take_all()


def _user_error(exc: BaseException) -> HardfocusError | None:
    """The HardfocusError under Ray's wrappers (a Ray Data task raised it)."""
    from training.ray_train import user_error

    return user_error(exc)


@pytest.mark.ray
def test_ray_reader_refuses_what_the_in_process_reader_refuses(local_ray, tmp_path):
    # every refusal of a directory, and one of a row: the rows go through the same training_rows in both
    # paths (test_in_process_reader_refuses_bad_rows has them all); here the error must come out of a Ray task
    cases = bad_directories(tmp_path / "dirs") | {"a row of one token": bad_rows(tmp_path / "rows")["a row of one token"]}
    for case, (paths, message) in cases.items():
        with pytest.raises(HardfocusError) as in_process:
            load_training_data(paths)
        with pytest.raises(Exception) as on_ray:  # noqa: PT011 - Ray wraps errors raised in its tasks
            _ray_rows(paths)
        error = _user_error(on_ray.value)  # itself when raised in the driver; from under RayTaskError when in a task
        assert error is not None, f"{case}: {on_ray.value!r}"
        assert str(error) == str(in_process.value), case
        assert re.search(message, str(error)), case


@pytest.mark.ray
def test_ray_reader_yields_the_rows_of_the_in_process_reader(local_ray, tmp_path):
    """Selected (with and without spans, one directory mixing both), scores (not-ok rows) and int64 token parts."""
    seqs = mixed_length_sequences(12, vocab=290, seed=4)
    spans = response_spans(seqs, seed=5)
    chat = with_spans(write_selected(tmp_path / "chat", seqs[:8], weights=np.linspace(0.5, 1.5, 8).tolist()), spans[:8])
    plain = Path(chat) / "part-00001.parquet"  # a plain-text part beside the conversation part
    other = pq.read_table(Path(write_selected(tmp_path / "plain", seqs[8:])) / "part-00000.parquet")
    write_sibling_part(Path(chat) / "part-00000.parquet", plain, other, {"index": 1})
    summary = json.loads((Path(chat) / "summary.json").read_text())  # it counts both parts, as select's would
    (Path(chat) / "summary.json").write_text(json.dumps(summary | {"bands": {"kept": 12}, "output_parts": 2}))
    scores = str(write_scores(tmp_path / "scores", [1.0] * 7, statuses=["ok", "empty"] + ["ok"] * 5, rows_per_part=3))
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array(seqs[:3], pa.list_(pa.int64()))}), tokens / "part-00000.parquet")
    paths = [chat, scores, str(tokens)]

    def key(row):
        return (list(row["input_ids"]), row["weight"], json.dumps(row["loss_spans"], default=int))

    expected = load_training_data(paths).table.select(["input_ids", "weight", "loss_spans"]).to_pylist()
    got = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in _ray_rows(paths)]
    got = [r | {"loss_spans": None if r["loss_spans"] is None else [dict(s) for s in r["loss_spans"]]} for r in got]
    assert len(expected) == 12 + 6 + 3 and any(r["loss_spans"] for r in expected)
    assert sorted(map(key, got)) == sorted(map(key, expected))


def test_a_selection_summary_that_is_json_but_not_an_object_is_named_not_a_traceback(tmp_path):
    """Found by a review: a selection's summary.json that is JSON but not an object (``[]``) is refused naming it."""
    from tests.training.helpers import write_selected
    from training.sources import find_sources

    sel = write_selected(tmp_path / "sel", [[5, 6, 7, 8]] * 4)
    (tmp_path / "sel" / "summary.json").write_text("[]")
    with pytest.raises(HardfocusError, match="summary.json"):
        find_sources([sel])


def test_train_refuses_a_data_directory_given_twice(tmp_path):
    """`select S S` is refused ("every row would count twice"); `train sel sel/` trains every row twice."""
    from tests.training.helpers import write_selected
    from training.sources import find_sources

    sel = write_selected(tmp_path / "sel", [[5, 6, 7, 8]] * 4)
    with pytest.raises(HardfocusError, match="twice"):
        find_sources([sel, sel + "/"])


def test_train_on_a_scores_directory_refuses_a_part_copied_in_from_another_one(tmp_path, tiny_model_dir):
    """The first review's fix (a part stamped with its job) is checked by `select` only: `train scores/` (ERM on
    everything scored ok) reads the same directory through training/sources.py, which compares part and row counts
    with the manifest and nothing else, and trains on the token ids of another scoring run, exit 0."""
    from training.sources import find_sources

    write_texts(tmp_path / "in" / "a.jsonl", TEXTS)
    score(score_config([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    score(score_config([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8}),
          progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    part.write_bytes((tmp_path / "B" / part.name).read_bytes())
    with pytest.raises(HardfocusError, match=part.name):
        find_sources([str(tmp_path / "A")])


def test_a_weight_column_of_text_is_refused_in_one_line(tmp_path):
    """``_check_part`` accepts a weight column whose type casts to float32 on an empty array (a string column
    does), and ``find_sources`` then casts the real values up front (``chunk.cast(pa.float32())``), which raises
    ``pyarrow.lib.ArrowInvalid: Failed to parse string: 'high' as a scalar of type float`` out of ``find_sources``:
    a traceback from ``hardfocus train``, not a one-line refusal naming the directory and the column.
    Expected: a :class:`HardfocusError` naming the weight column (as for a column of the wrong type)."""
    ids = pa.array([[5, 6, 7], [8, 9, 10, 11]], pa.list_(pa.int32()))
    path = write_parts_dir(tmp_path / "tokens", [pa.table({"input_ids": ids, "weight": ["1.5", "high"]})])
    try:
        find_sources([path])
    except HardfocusError as exc:
        assert "weight" in str(exc) and "\n" not in str(exc)
    except Exception as exc:  # noqa: BLE001 - the finding: anything else escapes as a traceback
        pytest.fail(f"find_sources raised {type(exc).__module__}.{type(exc).__name__}: {exc}")
    else:
        pytest.fail("a weight column holding 'high' was accepted")


@pytest.mark.parametrize("bad", [5000, -1])
def test_token_ids_outside_the_models_vocabulary_are_refused_naming_the_directory(tmp_path, tiny_model_dir, bad):
    """Token ids with no tokenizer recorded (a token directory of parts) are not checked against the model: an id
    >= the vocabulary size (or negative) crashes the first forward pass with a raw `IndexError: index out of range
    in self` (on a GPU: a device-side assert that takes the process down). The footers' statistics give the
    maximum and minimum id for free."""
    from tests.training.helpers import small_config
    from training import train

    sequences = np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist()
    sequences[3][5] = bad
    write_token_part(tmp_path / "tokens", sequences)
    with pytest.raises(HardfocusError, match="tokens"):
        train(small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=2, weighting="none", model=tiny_model_dir), progress=False)


def test_a_training_part_copied_in_from_another_selection_of_the_same_scores_is_refused(two_scored_shards, tmp_path):
    """Finding 4 of the foundation issue: two selections of the same scores that differ only in temperature keep the
    same rows with other weights; B's training part copied over A's had the row count A's summary records and no part
    said which selection it belonged to, so training on A read B's weights. Each training part is stamped with its
    selection's identity, and every reader of selected/ checks it."""
    for name, temperature in (("A", 1.0), ("B", 0.25)):
        select(SelectConfig(scores=[two_scored_shards["scores"]], output=str(tmp_path / name), report=False,
                            temperature=temperature), progress=False)
    load_training_data(find_sources([str(tmp_path / "A")]))  # whole, as written
    shutil.copyfile(tmp_path / "B" / "part-00000.parquet", tmp_path / "A" / "part-00000.parquet")
    refusal = r"the training part .*A/part-00000\.parquet was written by another run than the one this output records"
    with pytest.raises(HardfocusError, match=refusal):
        load_training_data(find_sources([str(tmp_path / "A")]))


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


def test_a_training_part_that_lost_its_loss_spans_column_is_refused(tmp_path):
    """A conversation's training part records ``loss_spans`` (the assistant turns the loss is taken on) in its stamp. A
    rewrite that drops the column and keeps the metadata (``pq.write_table(t.drop_columns(["loss_spans"]))``) is
    read without a word: training asks the verified reader only for the columns the footer's schema has, so it reads
    ``input_ids`` and ``weight`` (both digests match) and trains on every token, prompts and system turns included
    (seen end to end: `hardfocus train` on such a selection exits 0). Expected: a part that lacks a column its stamp
    records was changed after it was written, and is refused naming it."""
    from training.data import load_training_data

    selected = _conversation_selection(tmp_path / "sel")
    rewrite_keeping_stamp(tmp_path / "sel" / "part-00000.parquet", lambda t: t.drop_columns(["loss_spans"]))
    with pytest.raises(HardfocusError, match="part-00000.parquet"):
        load_training_data([selected])


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
