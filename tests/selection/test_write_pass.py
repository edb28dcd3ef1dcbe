"""The write pass of ``select`` (selection/writer.py) on Ray: with a Ray cluster configured (``ray_address`` /
``$RAY_ADDRESS``) the parts are written by Ray Data tasks, byte for byte what the thread pool writes; every
worker checks the output lock's fence before each write; ``ray_address`` is not part of the selection."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from hardfocus.errors import HardfocusError
from hardfocus.kinds import SELECTED
from hardfocus.lock import Fence
from hardfocus.stagedir import StageDir
from selection import SelectConfig, select
from selection.job import selection_identity
from selection.scores import open_scores
from selection.writer import Layout, PartJob, _write_on_worker, ray_cluster
from tests.selection.fake_scores import write_scores, write_windowed_scores
from tests.selection.test_by_document import _random_documents
from tests.selection.test_loss_spans import _add_spans

N = 97


def _scores(root: Path) -> Path:
    """Parts of 9 rows, some rows excluded (statuses, a NaN loss), two groups, loss_spans (null on some rows)."""
    rng = np.random.default_rng(5)
    losses = np.round(rng.gamma(4, 0.7, N), 3).tolist()
    losses[11] = float("nan")
    statuses = ["ok"] * N
    statuses[3], statuses[40], statuses[41] = "too_short", "empty", "error: RuntimeError: boom"
    groups = ["web" if i % 3 else "code" for i in range(N)]
    write_scores(root / "scores", losses, groups=groups, statuses=statuses, rows_per_part=9)
    _add_spans(root / "scores")
    return root / "scores"


def _files(selected: Path) -> dict[str, bytes]:
    """Every data file of a selected/: the training parts and the decisions parts."""
    return {str(p.relative_to(selected)): p.read_bytes() for p in sorted(selected.rglob("part-*.parquet"))}


def _same_selections(a: Path, b: Path) -> None:
    files_a, files_b = _files(a), _files(b)
    assert sorted(files_a) == sorted(files_b) and any(n.startswith("decisions/") for n in files_a)
    for name in files_a:  # the same rows, row for row (read back; NaN losses equal), and the same bytes
        assert pl.from_arrow(pq.read_table(b / name)).equals(pl.from_arrow(pq.read_table(a / name))), name
        assert files_a[name] == files_b[name], name
    assert (a / "summary.json").read_text() == (b / "summary.json").read_text()


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["plain", "windowed"])
def test_a_selection_written_on_ray_equals_the_thread_pool_one(tmp_path, local_ray, kind):
    if kind == "plain":
        scores, extra = _scores(tmp_path), {}
    else:  # by document: the window columns in the decisions
        scores = write_windowed_scores(tmp_path / "scores", _random_documents(40, seed=2), rows_per_part=6)
        extra = {"by": "document"}
    here = select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "threads"), report=False, **extra),
                  progress=False)
    # "auto" names a cluster; the local Ray of the tests is up already, so the write pass runs there
    on_ray = select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "ray"), report=False, ray_address="auto",
                                 **extra), progress=False)
    assert on_ray.summary == here.summary and here.summary.output_parts > 1
    _same_selections(tmp_path / "threads", tmp_path / "ray")


@pytest.mark.ray
@pytest.mark.s3
def test_ray_workers_write_a_selection_to_an_object_store(tmp_path, local_ray, s3_url):
    from tests.s3 import download

    scores = _scores(tmp_path)
    select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "threads"), report=False), progress=False)
    select(SelectConfig(scores=[str(scores)], output=f"{s3_url}/selected", report=False, ray_address="auto"),
           progress=False)
    _same_selections(tmp_path / "threads", download(f"{s3_url}/selected", tmp_path / "from-s3"))


@pytest.mark.ray
def test_ray_workers_stop_writing_once_the_lock_changed_hands(tmp_path, local_ray, monkeypatch):
    """The driver does not check the lock during a Ray write pass: each worker checks the fence it was given."""
    from hardfocus import stagedir

    scores = _scores(tmp_path)
    real = stagedir.StageDir.fence

    def taken_over(self):  # the fence of a run whose lock another run took over meanwhile
        fence = real(self)
        return Fence(fence.url, "another-run's-token", fence.name)

    monkeypatch.setattr(stagedir.StageDir, "fence", taken_over)
    with pytest.raises(HardfocusError, match="taken over by another run"):
        select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel"), report=False, ray_address="auto"),
               progress=False)
    assert not (tmp_path / "sel").exists() and not list(tmp_path.glob(".sel.tmp-*"))


def _one_job(tmp_path: Path) -> tuple[PartJob, Layout]:
    """The first score part's job (row 3 excluded, the rest kept), as write_selection sends it to a Ray worker."""
    parts = open_scores([str(_scores(tmp_path))])
    n = parts.rows[0]
    ranked = np.array([i for i in range(n) if i != 3], dtype=np.int64)
    loss = pq.read_table(parts.urls[0], columns=["loss"])["loss"].to_numpy(zero_copy_only=False).astype(np.float32)
    job = PartJob(index=0, url=parts.urls[0], rows=n, ranked=ranked, band=np.full(len(ranked), 1, np.uint8),
                  rank=np.linspace(0, 1, len(ranked), dtype=np.float32), score=loss[ranked], loss=loss[ranked],
                  weight=np.ones(len(ranked), np.float32), excluded=np.array([3]), reason=np.array([0], np.int32),
                  kept_part=0, place={"index": 0, "scores": 0, "part": Path(parts.urls[0]).name}, selection="sel-digest",
                  expected=parts.expected[0], loss_spans=True)
    return job, Layout(has_input_ids=True, has_loss_spans=True, windowed=False, reasons=("status: too_short",))


def test_a_worker_checks_the_fence_before_each_write(tmp_path):
    job, layout = _one_job(tmp_path)
    sel = tmp_path / "sel"
    out = StageDir(str(sel), SELECTED)
    with out.locked():
        (sel / "decisions").mkdir(parents=True)

        def write(job: PartJob, fence: Fence) -> dict:
            return _write_on_worker({"job": pickle.dumps(job)}, layout=layout, url=str(sel), fence=fence)

        result = write(job, Fence(out.fence().url, "not-this-run", out.fence().name))
        assert "taken over by another run" in result["error"] and result["index"] == 0
        assert list(sel.rglob("*.parquet")) == []  # nothing written
        changed = dataclasses.replace(job, loss=job.loss + 1)  # a part changed since it was ranked: refused
        assert "differ from the ones ranked" in write(changed, out.fence())["error"]
        assert write(job, out.fence()) == {"index": 0, "error": ""}
        decisions = pq.read_table(sel / "decisions" / "part-00000.parquet")
        assert decisions["band"].to_pylist() == ["kept"] * 3 + ["excluded"] + ["kept"] * (job.rows - 4)
        assert decisions["reason"].to_pylist()[3] == "status: too_short" and decisions["reason"].null_count == job.rows - 1
        kept = pq.read_table(sel / "part-00000.parquet")
        assert kept["row"].to_pylist() == job.ranked.tolist() and kept["loss_rank"].to_pylist() == job.rank.tolist()


def test_ray_address_names_a_cluster_or_none_and_is_not_part_of_the_selection(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_cluster(None) is None and ray_cluster("local") is None
    assert ray_cluster("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert ray_cluster(None) == "head:6379" and ray_cluster("ray://other:10001") == "ray://other:10001"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_cluster(None) is None

    scores = _scores(tmp_path)
    cfg = SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel"), report=False)
    parts = open_scores(cfg.scores)
    on_cluster = cfg.model_copy(update={"ray_address": "ray://head:10001"})
    assert selection_identity(on_cluster, parts, None) == selection_identity(cfg, parts, None)
    made = select(cfg, progress=False)
    assert "ray_address" not in made.summary.parameters
    assert select(on_cluster, progress=False).skipped  # found complete: Ray is not even reached
