"""Progress while a unit is scored: records before its part lands, and readable log lines off a terminal."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq

import scoring.progress
import scoring.units
from hardfocus.models import resolve_model
from hardfocus.readers import find_shards
from scoring import ScoreConfig, score
from scoring.units import ShardTask, UnitScorer, part_name, read_shard_task
from tests.scoring.helpers import make_corpus


def _cfg(tmp_path, model, **kw) -> ScoreConfig:
    base = dict(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=model, dtype="float32",
                device="cpu", max_tokens=64, rows_per_unit=20, executor="local", token_budget=128)
    return ScoreConfig(**(base | kw))


def test_a_unit_reports_rows_and_tokens_while_it_is_scored(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(scoring.units, "PROGRESS_EVERY_S", 0.0)  # a record after every micro-batch
    make_corpus(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir)
    (tmp_path / "scores").mkdir()
    fingerprint = resolve_model(tiny_model_dir).fingerprint
    shard = next(s for s in find_shards(cfg.inputs) if s.rel == "one.parquet")
    scorer = UnitScorer(cfg, fingerprint, torch_threads=1)
    unit = next(r for r in read_shard_task(ShardTask(shard).to_row(), cfg, fingerprint) if r["kind"] == "score")
    part = tmp_path / "scores" / part_name(shard, unit["start"], unit["stop"])

    records, part_existed = [], []
    for record in scorer(unit):
        records.append(record)
        part_existed.append(part.exists())
    *progress, final = records
    assert final["kind"] == "score" and [r["kind"] for r in progress] == ["progress"] * len(progress)
    assert len(progress) >= 3 and not any(part_existed[:-1]) and part_existed[-1]  # reported before the part landed

    scores = pq.read_table(part).to_pylist()
    ok = [r for r in scores if r["status"] == "ok"]
    rows = [r["scored"] for r in progress]
    tokens = [json.loads(r["counts"])["tokens"] for r in progress]
    consumed = [r["consumed"] for r in progress]
    assert rows == sorted(rows) and 0 < rows[0] and rows[-1] < len(ok) == final["scored"]
    assert tokens == sorted(tokens) and tokens[-1] < sum(r["n_tokens"] for r in ok)
    assert unit["begin"] <= consumed[0] and consumed == sorted(consumed) and consumed[-1] < unit["consumed"]
    # each micro-batch's rows are whole rows: the tokens reported are those of some set of scored rows
    lengths = sorted(r["n_tokens"] for r in ok)
    assert all(sum(lengths[:n]) <= t <= sum(lengths[-n:]) for n, t in zip(rows, tokens))


def test_off_a_terminal_the_job_logs_progress_lines(tmp_path, tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(scoring.units, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(scoring.progress, "LOG_EVERY_S", 0.0)
    make_corpus(tmp_path)
    with caplog.at_level(logging.INFO, logger="scoring.job"):
        result = score(_cfg(tmp_path, tiny_model_dir), progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring: ")]
    assert len(lines) >= 5
    shares = [float(line.split("%")[0].removeprefix("scoring: ")) for line in lines]
    rows = [int(line.split(" rows")[0].rsplit(" ", 1)[1].replace(",", "")) for line in lines]
    assert shares == sorted(shares) and shares[-1] == 100
    assert rows == sorted(rows) and rows[-1] == result.manifest.rows_by_status["ok"]  # the rows the model ran on
    assert "ETA" in lines[0]
