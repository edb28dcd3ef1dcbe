"""The export on Ray Data (a task per shard, records streamed back) writes exactly what the local executor writes;
and the whole chain on an object store: score, select and export with every input and output on s3 (moto)."""

from __future__ import annotations

import os

import pytest

from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import write_jsonl
from tests.exporting.conftest import write_corpus
from tests.exporting.helpers import run_export, snapshot
from tests.s3 import BUCKET, download, names, s3_fs, upload


@pytest.mark.ray
@pytest.mark.parametrize("resample", [None, 1.5])
def test_on_ray_the_parts_are_those_of_the_local_executor(selected_rows, local_ray, tmp_path, resample):
    local = run_export(selected_rows["selected"], tmp_path / "local", shard_rows=5, resample=resample)
    on_ray = run_export(selected_rows["selected"], tmp_path / "ray", shard_rows=5, resample=resample, executor="ray")
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    assert on_ray.manifest.model_dump(exclude={"versions"}) == local.manifest.model_dump(exclude={"versions"})


@pytest.mark.s3
def test_export_with_inputs_scores_selection_and_output_on_s3(s3_server, tiny_model_dir, tmp_path):
    """Shards, scores/, selected/ and the export all on the store: the stale check reads the store's ETag; parts are
    single PUTs (no temporary objects); a rerun finds the export complete. Equal to the same chain run locally."""
    write_corpus(tmp_path)
    common = dict(model=tiny_model_dir, executor="local", dtype="float32", device="cpu", group_column="domain",
                  max_tokens=64, rows_per_unit=9)
    root = f"s3://{BUCKET}/export-{os.getpid()}"
    inputs = upload(tmp_path / "in", f"{root}/in")
    runs = {}
    for where, base, shards in (("s3", root, inputs), ("local", str(tmp_path / "local"), str(tmp_path / "in"))):
        score(ScoreConfig(inputs=[f"{shards}/a"], output=f"{base}/scores-a", id_column="doc", **common), progress=False)
        score(ScoreConfig(inputs=[f"{shards}/b"], output=f"{base}/scores-b", **common), progress=False)
        select(SelectConfig(scores=[f"{base}/scores-a", f"{base}/scores-b"], output=f"{base}/selected", report=False),
               progress=False)
        runs[where] = run_export(f"{base}/selected", f"{base}/export", band="all", format="jsonl.zst", shard_rows=8)
    listed = names(f"{root}/export")
    assert "export.json" in listed and not [n for n in listed if ".tmp-" in n]
    assert ".export.lock" not in names(root)  # released
    assert snapshot(download(f"{root}/export", tmp_path / "got")) == snapshot(tmp_path / "local" / "export")
    assert runs["s3"].manifest.rows == runs["local"].manifest.rows == 72
    assert run_export(f"{root}/selected", f"{root}/export", band="all", format="jsonl.zst", shard_rows=8).skipped
    fs = s3_fs()
    fs.pipe_file(f"{inputs}/b/b.jsonl.zst".removeprefix("s3://"), fs.cat_file(f"{inputs}/b/b.jsonl.zst") + b"\n")
    from scoring import HardfocusError

    with pytest.raises(HardfocusError, match="b.jsonl.zst changed since it was scored"):
        run_export(f"{root}/selected", f"{root}/export-2")


@pytest.mark.ray
def test_export_on_ray_writes_a_relative_output_where_the_caller_is(tmp_path, tiny_model_dir, local_ray, monkeypatch):
    """exporting/job.py:62 (export hands ``cfg`` to the runner as given) and exporting/tasks.py:59 (each task opens
    ``ExportDir(cfg.output)`` on the worker): a relative output is resolved in the directory the Ray was started in,
    not the caller's. Scoring got this fixed in the commit (scoring.executors.with_absolute_paths), export did not.
    Where Ray's directory has a folder of the output's name, the export succeeds with the parts written *there*:
    ``./export`` holds export.json counting 20 rows and no part file. (Where it has none, the export fails with
    "cannot write part-00000-00000.parquet to export: [Errno 2] No such file or directory: '<ray's dir>/export/...'".)
    Expected: the parts in ``./export``, as with ``--executor local``. (The session's Ray was started in the
    repository's directory; this test works from another.)"""
    from exporting import ExportConfig, export
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select
    from tests.conftest import real_texts

    write_jsonl(tmp_path / "data" / "a.jsonl",
                [{"text": t, "group": "gx" if i % 2 else "gy"} for i, t in enumerate(real_texts(40, seed=11))])
    monkeypatch.chdir(tmp_path)
    score(ScoreConfig(inputs=["data"], output="scores", model=tiny_model_dir, executor="local", device="cpu",
                      dtype="float32", max_tokens=64, group_column="group"), progress=False)
    select(SelectConfig(scores=["scores"], output="selected"), progress=False)
    result = export(ExportConfig(selected="selected", output="export", executor="ray"), progress=False)
    parts = sorted(p.name for p in (tmp_path / "export").glob("part-*"))
    assert parts and len(parts) == len(result.manifest.parts)
