"""The export on Ray Data (a task per shard, records streamed back) writes exactly what the local executor writes;
and the whole chain on an object store: score, select and export with every input and output on s3 (moto)."""

from __future__ import annotations

import os

import pytest

from scoring import ScoreConfig, score
from selection import SelectConfig, select
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
