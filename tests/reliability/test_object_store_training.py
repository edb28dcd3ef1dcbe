"""`hardfocus run` with its workdir on s3:// (an S3 server started here, moto): the model is trained in a local
staging directory and published with its marker last. (Ray Train streaming selected/ from the store:
tests/training/test_ray_train.py.)"""

from __future__ import annotations

import json

import polars as pl
import pytest

from scoring import HardfocusError
from tests.hardfocus_run import invoke_run, stages_line, write_run_config
from tests.s3 import download, names, s3_fs
from tests.scoring.helpers import assert_same_scores, read_scores
from tests.training.helpers import max_param_diff, parameters
from training.store import fetch_model

pytestmark = pytest.mark.s3


def _run(*args) -> str:
    return stages_line(invoke_run(*args))


def test_run_with_its_workdir_on_s3_equals_a_local_run(s3_url, tmp_path, tiny_model_dir):
    """Scores, selection, model and evaluation on the store equal a local run's; reruns skip by the store's markers;
    a model whose upload did not finish (no train_manifest.json) is never taken as trained."""
    config, work = write_run_config(tmp_path, tiny_model_dir), f"{s3_url}/work"
    assert _run(config) == "stages run: score, select, train, eval; up to date: none"
    on_s3 = ["--set", f'run.workdir="{work}"']
    assert _run(config, *on_s3) == "stages run: score, select, train, eval; up to date: none"
    local, remote = tmp_path / "work", download(work, tmp_path / "from-s3")
    listed = names(work)
    assert "model/train_manifest.json" in listed and "eval/eval.json" in listed and "selected/summary.json" in listed
    assert not [n for n in listed if n.startswith(("model/checkpoints", "model/tokenized", "model/ray_results"))]

    assert_same_scores(read_scores(remote / "scores"), read_scores(local / "scores"))
    a, b = (pl.read_parquet(f"{d}/selected/part-*.parquet").select("sample_id", "weight") for d in (remote, local))
    assert a.height == 40 and a.equals(b)
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
