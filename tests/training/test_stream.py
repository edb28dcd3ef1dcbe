"""training.stream: every row once per epoch, grouping that removes padding, bounded windows, an exact resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.contracts.scores import LOSS_SPANS_TYPE
from scoring import HardfocusError
from tests.selection.fake_scores import write_scores
from tests.stamps import rewrite_keeping_stamp, write_sibling_part
from tests.training.helpers import mixed_length_sequences, write_parts_dir, write_selected
from training.sources import find_sources
from training.stream import PartWindows, TrainingStream, window_batches, window_size


def rows_of(batch: list[dict]) -> list[tuple[int, ...]]:
    return [tuple(np.asarray(r["input_ids"]).tolist()) for r in batch]


def several_parts(root: Path, n_parts: int = 3, rows: int = 23, seed: int = 0) -> tuple[str, list[tuple[int, ...]]]:
    """A selected/ directory of ``n_parts`` parts of ``rows`` distinct rows each (the first token numbers the row)."""
    seqs = [[1000 + i, *s] for i, s in enumerate(mixed_length_sequences(n_parts * rows, vocab=290, seed=seed))]
    path = write_selected(root, seqs[:rows])
    for p in range(1, n_parts):
        table = pq.read_table(root / "part-00000.parquet").slice(0, 0)
        chunk = seqs[p * rows:(p + 1) * rows]
        table = pa.table({c: (pa.array(chunk, pa.list_(pa.int32())) if c == "input_ids" else
                              pa.array(np.ones(rows, np.float32)) if c == "weight" else
                              pa.array(np.zeros(rows, np.float32)) if c in ("loss", "loss_rank") else
                              pa.array([f"s{p}-{i}" for i in range(rows)]) if c == "sample_id" else
                              pa.array(["g"] * rows)) for c in table.column_names}, schema=table.schema)
        write_sibling_part(root / "part-00000.parquet", root / f"part-{p:05d}.parquet", table, {"index": p})
    summary = (root / "summary.json").read_text().replace('"output_parts": 1', f'"output_parts": {n_parts}')
    (root / "summary.json").write_text(summary.replace(f'"kept": {rows}', f'"kept": {n_parts * rows}'))
    return path, [tuple(s) for s in seqs]


def stream(path: str, batch_size: int = 4, buffer: int = 10, order: str = "grouped", seed: int = 3,
           start: int = 0) -> TrainingStream:
    return TrainingStream(PartWindows(find_sources([path]), seed), collate=lambda rows: rows, batch_size=batch_size,
                          shuffle_buffer=buffer, seed=seed, order=order, max_seq_len=512, start_batch=start)


@pytest.mark.parametrize("order", ["random", "grouped"])
def test_window_batches_take_every_row_once(order):
    lengths = np.random.default_rng(0).integers(2, 500, 1003)
    batches = window_batches(lengths, 8, np.random.default_rng(1), order)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
    assert [len(b) for b in batches].count(3) == 1 and all(len(b) in (3, 8) for b in batches)
    again = window_batches(lengths, 8, np.random.default_rng(1), order)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # a function of the seed


def test_grouping_leaves_little_padding_and_keeps_lengths_mixed_across_steps():
    """Real positions over computed ones (batch x longest), computed independently of the stream's code."""
    lengths = np.minimum(np.random.default_rng(0).lognormal(np.log(140), 0.8, 4000).astype(int) + 2, 512)

    def real_share(batches):
        return sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)

    random = real_share(window_batches(lengths, 8, np.random.default_rng(1), "random"))
    grouped_batches = window_batches(lengths, 8, np.random.default_rng(1), "grouped")
    assert random < 0.7 and real_share(grouped_batches) > 0.9
    longest = [lengths[b].max() for b in grouped_batches]
    assert np.corrcoef(np.arange(len(longest)), longest)[0, 1] ** 2 < 0.05  # steps do not run long to short


@pytest.mark.parametrize("order", ["random", "grouped"])
def test_each_epoch_takes_every_row_once_in_windows_of_the_buffer(tmp_path, order):
    path, seqs = several_parts(tmp_path / "sel")  # 69 rows in 3 parts; windows of 8 rows (10 rounded to batches)
    s = stream(path, buffer=10, order=order)
    assert s.window_rows == 8
    batches = list(itertools.islice(s.batch_rows(), 2 * 18))  # 8 windows of 2 batches, a last of 5 rows: 18
    first, second = batches[:18], batches[18:]
    assert sorted(r for b in first for r in rows_of(b)) == sorted(seqs)
    assert sorted(r for b in second for r in rows_of(b)) == sorted(seqs)
    assert [r for b in first for r in rows_of(b)] != [r for b in second for r in rows_of(b)]  # reshuffled
    windows = list(PartWindows(find_sources([path]), 3).windows(0, 8, 0))
    assert [w.num_rows for w in windows] == [8] * 8 + [5]


@pytest.mark.parametrize("start", [1, 5, 17, 18, 19, 40])
def test_a_stream_started_at_batch_k_is_the_uninterrupted_stream_from_k(tmp_path, start):
    """Within a window, at a window's start, at the short last batch of an epoch, in the next epoch, two epochs on."""
    path, _ = several_parts(tmp_path / "sel")
    uninterrupted = [rows_of(b) for b in itertools.islice(stream(path).batch_rows(), start + 6)]
    resumed = [rows_of(b) for b in itertools.islice(stream(path, start=start).batch_rows(), 6)]
    assert resumed == uninterrupted[start:]


def test_a_resume_counts_batches_where_the_rows_per_epoch_are_unknown(tmp_path):
    """A Ray shard's rows are not known up front: the stream skips by counting, to the same batches."""
    path, _ = several_parts(tmp_path / "sel")
    known = PartWindows(find_sources([path]), 3)

    class Unknown:
        rows = None

        def windows(self, epoch, window_rows, start_row):
            assert start_row == 0
            return known.windows(epoch, window_rows, 0)

    def unknown(start):
        return TrainingStream(Unknown(), lambda rows: rows, 4, 10, 3, "grouped", 512, start_batch=start)

    expected = [rows_of(b) for b in itertools.islice(stream(path, start=23).batch_rows(), 5)]
    assert [rows_of(b) for b in itertools.islice(unknown(23).batch_rows(), 5)] == expected


def test_scores_rows_that_are_not_ok_are_not_streamed_and_parts_are_skipped_by_their_ok_rows(tmp_path):
    status = ["ok" if i % 3 else "too_short" for i in range(30)]
    seqs = [[1000 + i, 5, 6 + i % 4] for i in range(30)]  # distinct rows
    scores = write_scores(tmp_path / "scores", losses=list(np.linspace(1, 3, 30)), statuses=status,
                          rows_per_part=10, columns={"input_ids": seqs})
    sources = find_sources([str(scores)])
    assert sources.rows == 20 and sum(sources.sources[0].part_rows) == 20
    s = TrainingStream(PartWindows(sources, 1), lambda rows: rows, 4, 8, 1, "random", 512)
    epoch = [r for b in itertools.islice(s.batch_rows(), 5) for r in rows_of(b)]
    assert sorted(epoch) == sorted(tuple(q) for q, st in zip(seqs, status) if st == "ok")
    resumed = TrainingStream(PartWindows(sources, 1), lambda rows: rows, 4, 8, 1, "random", 512, start_batch=3)
    assert [rows_of(b) for b in itertools.islice(resumed.batch_rows(), 4)] == \
        [rows_of(b) for b in itertools.islice(s.batch_rows(), 7)][3:]


def test_a_part_that_changed_while_streamed_is_refused(tmp_path):
    path, _ = several_parts(tmp_path / "sel")
    sources = find_sources([path])
    part = Path(sources.sources[0].parts[1])
    pq.write_table(pq.read_table(part).slice(0, 20), part)  # 3 rows fewer than when the run started
    with pytest.raises(HardfocusError, match="changed while being trained on"):
        list(itertools.islice(TrainingStream(PartWindows(sources, 3), lambda r: r, 4, 10, 3, "random", 512)
                              .batch_rows(), 40))


def test_window_size_is_whole_batches():
    assert window_size(65536, 8) == 65536 and window_size(10, 4) == 8 and window_size(3, 4) == 4


def test_a_bad_row_met_mid_stream_stops_the_run_in_one_line_without_a_model(tiny_model_dir, tmp_path):
    """Rows are checked as they are read: a row of one token in a later window fails the run when it is reached."""
    from tests.training.helpers import small_config
    from training import train

    seqs = mixed_length_sequences(24, vocab=290, seed=9)
    seqs[-1] = seqs[-1][:1]
    data = write_selected(tmp_path / "sel", seqs)
    out = tmp_path / "out"
    with pytest.raises(HardfocusError, match="have fewer than 2 tokens") as failed:
        train(small_config([data], out, max_steps=8, shuffle_buffer=8, model=tiny_model_dir), progress=False)
    assert "\n" not in str(failed.value)
    assert not (out / "model.safetensors").exists() and not (out / "train_manifest.json").exists()


@pytest.mark.parametrize("batching", ["grouped", "random", "packed"])
def test_a_run_logs_the_tokens_it_trained_on_and_their_share_of_the_positions_computed(tiny_model_dir, tmp_path, caplog,
                                                                                       batching):
    """Against the stream's own first batches, summed here: real tokens, and batch x longest positions (packed: none
    padded)."""
    import logging
    import re

    from tests.training.helpers import small_config
    from training import train

    data = write_selected(tmp_path / "sel", mixed_length_sequences(40, vocab=290, seed=4))
    cfg = small_config([data], tmp_path / "out", max_steps=6, batching=batching, model=tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="training.job"):
        train(cfg, progress=False)
    order = "grouped" if batching == "grouped" else "random"
    batches = list(itertools.islice(TrainingStream(PartWindows(find_sources([data]), 0), lambda r: r, 4, 65536, 0, order,
                                                   512).batch_rows(), 6))
    tokens = sum(len(r["input_ids"]) for b in batches for r in b)
    positions = tokens if batching == "packed" else sum(len(b) * max(len(r["input_ids"]) for r in b) for b in batches)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("trained on"))
    found = re.match(r"trained on ([\d,]+) tokens \(([\d.]+)% of the positions", line)
    assert int(found.group(1).replace(",", "")) == tokens
    assert float(found.group(2)) == pytest.approx(100 * tokens / positions, abs=0.05)
    import json

    logged = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged if "loss" in r][-1] == pytest.approx(24 / 40)  # 6 steps x 4 of 40 rows


def _mixed_sources(root: Path) -> tuple[list[str], list[tuple[int, ...]]]:
    """selected/ (int32 ids), scores/ (a third of its rows not ok, one part with no ok row) and a token directory
    whose parts differ: large_list<int64> ids with loss_spans, list<int32> ids without, a weight of float64."""
    rows: list[tuple[int, ...]] = []
    sel = [[2000 + i, *s] for i, s in enumerate(mixed_length_sequences(9, vocab=290, seed=21))]
    write_selected(root / "sel", sel, weights=np.linspace(0.5, 1.5, 9).tolist())
    rows += [tuple(s) for s in sel]
    status = ["too_short"] * 5 + ["ok" if i % 3 else "too_short" for i in range(10)]
    seqs = [[3000 + i, 5, 6 + i % 4] for i in range(15)]
    write_scores(root / "scores", losses=list(np.linspace(1, 3, 15)), statuses=status, rows_per_part=5,
                 columns={"input_ids": seqs})
    rows += [tuple(s) for s, st in zip(seqs, status) if st == "ok"]
    a = [[4000 + i, 7, 8, 9] for i in range(4)]
    b = [[5000 + i, 10, 11] for i in range(3)]
    spans = pa.array([[{"start": 1, "stop": 3}]] * 4, LOSS_SPANS_TYPE)
    write_parts_dir(root / "tokens", [
        pa.table({"input_ids": pa.array(a, pa.large_list(pa.int64())), "loss_spans": spans,
                  "weight": pa.array([1.0, 2.0, 0.5, 1e-3], pa.float64())}),
        pa.table({"input_ids": pa.array(b, pa.list_(pa.int32()))}),
    ])
    rows += [tuple(s) for s in a + b]
    return [str(root / "sel"), str(root / "scores"), str(root / "tokens")], rows


@pytest.mark.parametrize("buffer,batch_size", [(1, 4), (3, 4), (5, 2), (10**6, 3), (1, 40)])
@pytest.mark.parametrize("order", ["random", "grouped"])
def test_mixed_sources_stream_every_row_once_per_epoch_and_resume_exactly(tmp_path, buffer, batch_size, order):
    """Windows mix the sources' parts (other columns, other id types, no ok row at all), a buffer below the batch
    size, a batch larger than the data: each of three epochs holds every trainable row once, and a stream started at
    any batch is the uninterrupted stream from there."""
    paths, expected = _mixed_sources(tmp_path)
    sources = find_sources(paths)
    assert sources.rows == len(expected) == 9 + 6 + 7

    def stream(start=0):
        return TrainingStream(PartWindows(sources, 5), lambda r: r, batch_size, buffer, 5, order, 512, start_batch=start)

    window = max(batch_size, buffer // batch_size * batch_size)
    per_epoch = sum(-(-min(window, len(expected) - s) // batch_size) for s in range(0, len(expected), window))
    batches = [rows_of(b) for b in itertools.islice(stream().batch_rows(), 3 * per_epoch + 2)]
    for e in range(3):
        epoch = [r for b in batches[e * per_epoch:(e + 1) * per_epoch] for r in b]
        assert sorted(epoch) == sorted(expected), f"epoch {e}"
    for start in sorted({1, per_epoch - 1, per_epoch, per_epoch + 1, 2 * per_epoch + 1}):
        resumed = [rows_of(b) for b in itertools.islice(stream(start).batch_rows(), 3 * per_epoch + 2 - start)]
        assert resumed == batches[start:], f"started at batch {start}"


def test_a_part_rewritten_with_as_many_rows_while_streamed_is_refused(tmp_path):
    """The in-memory path read every part once, right after ``find_sources`` checked it; the stream reads each part
    again every epoch, for as long as the run lasts, and ``PartWindows`` only compares the number of trainable rows
    with the footer's count. A part rewritten meanwhile with as many rows (a selection redone into the same
    directory, a token directory regenerated) is trained on from the next epoch on without a word: the run mixes
    two data sets, and its manifest names only the first. Expected: a part is checked to be the file
    ``find_sources`` saw (its size and modification stamp, or its footer), and one that is not is refused, as one
    whose row count changed is. Fixed so: the part's size and modification stamp are compared with what
    ``find_sources`` saw, and the next epoch is refused naming the part."""
    seqs = [[1000 + i, 5, 6, 7] for i in range(12)]
    path = write_selected(tmp_path / "sel", seqs)
    sources = find_sources([path])
    part = Path(sources.sources[0].parts[0])
    stream = TrainingStream(PartWindows(sources, 0), lambda r: r, 4, 8, 0, "random", 512)
    batches = stream.batch_rows()
    first_epoch = [r for b in itertools.islice(batches, 3) for r in rows_of(b)]
    assert sorted(first_epoch) == sorted(map(tuple, seqs))
    table = pq.read_table(part)
    other = pa.array([[2000 + i, 9, 9] for i in range(12)], pa.list_(pa.int32()))
    pq.write_table(table.set_column(table.schema.get_field_index("input_ids"), "input_ids", other), part)
    with pytest.raises(HardfocusError, match=r"part-00000\.parquet' is not the file it was when the run started"):
        list(itertools.islice(batches, 3))  # the second epoch


def test_a_part_deleted_while_streamed_stops_the_run_in_one_line(tmp_path):
    """Found by a review: a part deleted after the sources were checked stops the stream in one line naming it."""
    path = write_selected(tmp_path / "sel", [[1000 + i, 5, 6, 7] for i in range(12)])
    sources = find_sources([path])
    Path(sources.sources[0].parts[0]).unlink()
    with pytest.raises(HardfocusError) as failed:
        list(itertools.islice(TrainingStream(PartWindows(sources, 0), lambda r: r, 4, 8, 0, "random", 512)
                              .batch_rows(), 3))
    assert "\n" not in str(failed.value) and "part-00000.parquet" in str(failed.value)


@pytest.mark.s3
def test_parts_on_an_object_store_stream_as_the_local_copy_does_across_epochs_and_a_resume(s3_url, tmp_path):
    """Found by a review (pinned): parts on a store stream the local copy's batches, across epochs and from a resume."""
    from tests.s3 import upload

    paths, _ = _mixed_sources(tmp_path / "local")
    remote = [upload(p, f"{s3_url}/{Path(p).name}") for p in paths]

    def stream(where, start=0):
        return TrainingStream(PartWindows(find_sources(where), 2), lambda r: r, 4, 8, 2, "grouped", 512,
                              start_batch=start)

    local = [rows_of(b) for b in itertools.islice(stream(paths).batch_rows(), 14)]
    assert [rows_of(b) for b in itertools.islice(stream(remote).batch_rows(), 14)] == local
    assert [rows_of(b) for b in itertools.islice(stream(remote, start=5).batch_rows(), 9)] == local[5:]


@pytest.mark.s3
def test_a_part_on_an_object_store_rewritten_with_as_many_rows_while_streamed_is_refused(s3_url, tmp_path):
    """As for a local part (above), on a store: a part of ``selected/`` overwritten between two epochs with as many
    rows (other token ids) is trained on from the next epoch on. A check of the part's ETag must not take it from
    s3fs's cached listing (the one ``find_sources`` made), or it never sees the new object. Expected: refused. Fixed
    so: the part's version on the store (its ETag) is compared with what ``find_sources`` saw."""
    from tests.s3 import s3_fs, upload

    seqs = [[1000 + i, 5, 6, 7] for i in range(12)]
    url = upload(write_selected(tmp_path / "sel", seqs), f"{s3_url}/sel")
    sources = find_sources([url])
    batches = TrainingStream(PartWindows(sources, 0), lambda r: r, 4, 8, 0, "random", 512).batch_rows()
    first_epoch = [r for b in itertools.islice(batches, 3) for r in rows_of(b)]
    assert sorted(first_epoch) == sorted(map(tuple, seqs))
    local = tmp_path / "sel" / "part-00000.parquet"
    table = pq.read_table(local)
    other = pa.array([[2000 + i, 9, 9, 9] for i in range(12)], pa.list_(pa.int32()))
    pq.write_table(table.set_column(table.schema.get_field_index("input_ids"), "input_ids", other), local)
    s3_fs().put_file(str(local), f"{url}/part-00000.parquet")  # another process rewrites the object
    with pytest.raises(HardfocusError, match=r"part-00000\.parquet' is not the file it was when the run started"):
        list(itertools.islice(batches, 3))  # the second epoch


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
    rewrite_keeping_stamp(part, lambda t: t.set_column(
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
