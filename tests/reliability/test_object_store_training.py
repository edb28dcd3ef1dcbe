"""Training and `hardfocus run` with their outputs on s3:// (an S3 server started here, moto): the model is
trained in a local staging directory and published with its marker last; Ray Train streams selected/ from the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from scoring import HardfocusError
from tests.conftest import real_texts, write_jsonl
from tests.s3 import download, names, s3_fs, upload
from tests.scoring.helpers import assert_same_scores, read_scores
from tests.test_run import stages_line
from tests.training.helpers import max_param_diff, mixed_length_sequences, parameters, small_config, write_selected
from training import train
from training.store import fetch_model

pytestmark = pytest.mark.s3


@pytest.mark.ray
def test_ray_train_reads_selected_from_s3(s3_url, tmp_path, tiny_model_dir):
    """A Ray Train worker streams selected/ from the store and follows the in-process run on the same data."""
    import ray

    kept = 20
    seqs = mixed_length_sequences(kept, vocab=290, seed=3)
    local = write_selected(tmp_path / "selected", seqs, weights=np.linspace(0.5, 1.5, kept).tolist())
    out = upload(local, f"{s3_url}/selected")
    # full-batch steps: the same gradient whatever order the rows arrive in
    common = dict(weighting="static", max_steps=3, batch_size=kept, optim="sgd", learning_rate=0.5, model=tiny_model_dir)
    single = train(small_config([out], tmp_path / "single", **common), tiny_model_dir, bf16=False, progress=False)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")  # after the fixture set the environment
    try:
        on_ray = train(small_config([out], tmp_path / "ray", ray_workers=1, **common), tiny_model_dir, bf16=False,
                       progress=False)
    finally:
        ray.shutdown()
    losses = [[r["loss"] for r in map(json.loads, open(x.log_file)) if "loss" in r] for x in (single, on_ray)]
    assert on_ray.steps == 3 and on_ray.train_rows == single.train_rows == kept > 8
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and len(losses[0]) == 3
    assert max_param_diff(parameters(on_ray.output), parameters(single.output)) < 1e-5


def _run_config(tmp_path, model: str) -> Path:
    texts = real_texts(60, seed=3)
    rows = [{"text": t, "group": "code" if "def " in t or "import" in t else "prose"} for t in texts]
    write_jsonl(tmp_path / "corpus" / "train" / "a.jsonl", rows[:48])
    write_jsonl(tmp_path / "corpus" / "heldout" / "a.jsonl", rows[48:])
    path = tmp_path / "run.toml"
    path.write_text(f"""
[run]
workdir = "{tmp_path / 'work'}"
data = ["{tmp_path / 'corpus' / 'train'}"]
heldout = ["{tmp_path / 'corpus' / 'heldout'}"]
model = "{model}"
[score]
executor = "local"
dtype = "float32"
max_tokens = 64
[select]
keep = 0.5
[train]
max_steps = 3
batch_size = 4
precision = "fp32"
learning_rate = 1e-3
[eval]
dtype = "float32"
max_tokens = 64
""")
    return path


def _run(*args) -> str:
    result = CliRunner().invoke(app, ["-q", "run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return stages_line(result.output)


def test_run_with_its_workdir_on_s3_equals_a_local_run(s3_url, tmp_path, tiny_model_dir):
    """Scores, selection, model and evaluation on the store equal a local run's; reruns skip by the store's markers;
    a model whose upload did not finish (no train_manifest.json) is never taken as trained."""
    config, work = _run_config(tmp_path, tiny_model_dir), f"{s3_url}/work"
    assert _run(config) == "stages run: score, select, train, eval; up to date: none"
    on_s3 = ["--set", f'run.workdir="{work}"']
    assert _run(config, *on_s3) == "stages run: score, select, train, eval; up to date: none"
    local, remote = tmp_path / "work", download(work, tmp_path / "from-s3")
    listed = names(work)
    assert "run_state.json" in listed and "model/train_manifest.json" in listed and "eval/eval.json" in listed
    assert not [n for n in listed if n.startswith(("model/checkpoints", "model/tokenized", "model/ray_results"))]

    assert_same_scores(read_scores(remote / "scores"), read_scores(local / "scores"))
    a, b = (pl.read_parquet(f"{d}/selected/part-*.parquet").select("sample_id", "weight") for d in (remote, local))
    assert a.height == 24 and a.equals(b)
    assert max_param_diff(parameters(str(remote / "model")), parameters(str(local / "model"))) < 1e-6
    assert max_param_diff(parameters(str(local / "model")), parameters(tiny_model_dir)) > 1e-4  # it trained
    models = [json.loads((d / "eval" / "eval.json").read_text())["models"] for d in (remote, local)]
    assert [m["name"] for m in models[0]] == ["base", "trained"]
    for ours, theirs in zip(*models):
        for group, values in theirs["groups"].items():
            assert ours["groups"][group]["loss"] == pytest.approx(values["loss"], rel=1e-5)

    assert _run(config, *on_s3) == "stages run: none; up to date: score, select, train, eval"
    s3_fs().rm_file(f"{work}/model/train_manifest.json")  # as if the upload had been killed before its marker
    with pytest.raises(HardfocusError, match="no finished training run"):
        fetch_model(f"{work}/model")
    # the train stage is not up to date without its marker: it runs (the staged run is complete: it is uploaded
    # again); evaluation's key is unchanged and its marker is there
    assert _run(config, *on_s3, "--from", "train") == "stages run: train; up to date: eval"
    assert "model/train_manifest.json" in names(work)
    assert max_param_diff(parameters(fetch_model(f"{work}/model")), parameters(str(local / "model"))) < 1e-6
