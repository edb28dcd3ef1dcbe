"""Found by review 8 (of the commit making ``training.train(cfg)`` the whole library call, the one config loader and
the absolute paths scoring's Ray workers get): each test fails on that commit and says what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
HARDFOCUS = str(Path(sys.executable).parent / "hardfocus")


def _same_size_shards(root: Path) -> tuple[Path, Path]:
    """Two directories each holding ``train.jsonl``: the same size and modification stamp, other texts (what two
    releases of a dataset unpacked from archives, or ``rsync -t``/``cp -p`` of a regenerated file, give)."""
    a = write_jsonl(root / "a" / "train.jsonl", [{"text": f"The river flows down to sea {i:03d}"} for i in range(20)])
    b = write_jsonl(root / "b" / "train.jsonl", [{"text": f"A cat sat on the warm mats, {i:03d}"} for i in range(20)])
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    stamp = a.stat()
    os.utime(b, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    return a.parent, b.parent


def test_raw_shards_of_another_directory_are_not_trained_on_the_first_ones_tokens(tmp_path, tiny_model_dir):
    """training/raw_shards.py (as_token_dir): the cache entry of raw shards is keyed by each shard's path *relative
    to the directory given*, its size and its modification stamp, not by where it is or what it holds. A second
    directory whose shard has the same name, size and stamp (another release unpacked from an archive, a copy made
    with ``cp -p``/``rsync -t`` of a regenerated file) reuses the first one's tokens: ``train(data=[b])`` exits fine,
    trained on the rows of ``a``. Expected: another directory (or other bytes) is another cache entry."""
    from training import TrainConfig, train

    a, b = _same_size_shards(tmp_path)

    def erm(data: Path, out: str):
        cfg = TrainConfig(data=[str(data)], output=str(tmp_path / out), model=tiny_model_dir, weighting="none",
                          max_steps=1, batch_size=4, precision="fp32", save_steps=100)
        train(cfg, progress=False)
        (tokens,) = json.loads((tmp_path / out / "train_manifest.json").read_text())["data"]
        return tokens

    assert erm(a, "model-a") != erm(b, "model-b"), "b trained on the tokens cached for a"


def test_raw_eval_shards_are_not_the_training_shards_tokens(tmp_path, tiny_model_dir):
    """The same cache key (training/raw_shards.py as_token_dir; ``role`` is only logged): raw ``eval_data`` whose
    shard has the name, size and stamp of a raw training shard is evaluated on the *training* rows' tokens, so the
    run's eval loss is a training loss. Expected: the held-out rows are the ones evaluated."""
    from training import TrainConfig, train

    a, b = _same_size_shards(tmp_path)
    cfg = TrainConfig(data=[str(a)], eval_data=[str(b)], output=str(tmp_path / "model"), model=tiny_model_dir,
                      weighting="none", max_steps=1, batch_size=4, precision="fp32", save_steps=100, eval_steps=1)
    train(cfg, progress=False)
    from training.sources import find_sources

    manifest = json.loads((tmp_path / "model" / "train_manifest.json").read_text())
    (train_tokens,) = manifest["data"]
    assert manifest["eval_data"] != find_sources([train_tokens]).identity, (
        f"the held-out rows were evaluated on the training rows' tokens ({train_tokens})")


def test_an_unknown_model_is_one_line_of_error(tmp_path):
    """hardfocus/models.py (_hub_snapshot): the error for a model spec that is no alias, file, directory or
    reachable hub id embeds the hub's exception text, which holds a newline, so ``hardfocus train`` prints it over
    two lines ("... (LocalEntryNotFoundError: Got: ConnectError: ...\\nAn error happened while trying to locate the
    files on the Hub, ...)"). Expected: one line of error (the first line of the hub's reason at most), exit 2,
    nothing written."""
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "The library was quiet."}] * 4)
    proc = subprocess.run(
        [HARDFOCUS, "train", "d", "-o", "out", "--model", "no-such-org/no-such-model", "--weighting", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model"), proc.stderr


def test_submit_ships_a_chat_template_file_given_with_set(tmp_path, monkeypatch):
    """pipelines/submit.py (job_command): ``hardfocus submit ... run cfg.toml --set run.chat_template=FILE`` ships
    the config and the config's own template files, but reads the config without the ``--set`` overrides the job
    will apply (load_config(path) with none), so a template file named by ``--set`` stays behind and the job fails
    on the cluster with "chat template file ... does not exist". Expected: the template ``--set`` names travels in
    the working_dir as one named in the config does."""
    from pipelines.submit import job_command

    monkeypatch.chdir(tmp_path)
    Path("tpl").mkdir()
    Path("tpl/chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    Path("run.toml").write_text('[run]\nworkdir = "/shared/w"\ndata = ["/shared/d"]\nformat = "messages"\n')
    for spelling in (["--set", "run.chat_template=tpl/chat.jinja"], ["--set=run.chat_template=tpl/chat.jinja"]):
        workdir = tmp_path / f"job{len(spelling)}"
        workdir.mkdir()
        job_command(["run", "run.toml", *spelling], workdir)
        assert (workdir / "tpl" / "chat.jinja").is_file(), sorted(p.name for p in workdir.rglob("*"))


def test_training_on_gpu_workers_planned_by_a_driver_without_one_is_bf16(tmp_path):
    """training/job.py (uses_bf16): with ``precision = "auto"``, ``use_gpu`` and Ray Train workers, a driver without a
    GPU (a cluster's CPU head node, `hardfocus submit`'s job driver) decides fp32 for the GPU workers: ``use_gpu or
    cuda visible`` leads to ``torch.cuda.is_available() and ...``, False in that driver. Scoring decides the same case
    as bf16 ("GPU actors may be planned by a driver without a GPU: auto there means cuda and bf16",
    scoring/job.py _device_and_dtype), so the two stages disagree and training on the cluster's GPUs runs in fp32.
    Expected: auto means bf16 for GPU workers planned on a driver without a GPU, as scoring decides."""
    import torch

    from scoring import ScoreConfig
    from scoring.job import _device_and_dtype
    from training import TrainConfig
    from training.job import uses_bf16

    if torch.cuda.is_available():
        pytest.skip("the case is a driver without a GPU")
    scoring = _device_and_dtype(ScoreConfig(inputs=["d"], output=str(tmp_path / "s"), executor="ray", gpus_per_actor=1))
    assert scoring["dtype"] == "bfloat16"  # scoring's word for the same case
    cfg = TrainConfig(data=["sel"], output=str(tmp_path / "m"), ray_workers=2, use_gpu=True, precision="auto")
    assert uses_bf16(cfg), "GPU workers planned by a CPU-only driver train in fp32"


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


def test_the_model_alias_stays_the_alias_for_rays_workers(tmp_path, monkeypatch):
    """scoring/executors.py:86 (with_absolute_paths): ``if os.path.exists(cfg.model)`` makes the model spec absolute
    when a file or folder of that name is in the current directory, but resolve_model reads the alias
    ``smollm2-135m`` *before* any path. With a ``./smollm2-135m`` folder (say the user trained into ``-o
    smollm2-135m``), the driver scores with the alias's model while every Ray worker gets '/…/smollm2-135m' and
    resolves that folder instead: "model directory ... has no config.json", or, where it holds a checkpoint, "model
    ... resolves to different weights on this node"; scoring on Ray fails where ``--executor local`` works.
    Expected: the workers get the spec the driver resolved (the alias stays the alias)."""
    from hardfocus.models import SMOLLM2_ALIAS
    from scoring import ScoreConfig
    from scoring.executors import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    Path(SMOLLM2_ALIAS).mkdir()
    cfg = ScoreConfig(inputs=["data"], output="scores", model=SMOLLM2_ALIAS, executor="ray")
    assert with_absolute_paths(cfg).model == SMOLLM2_ALIAS


def test_set_values_are_read_without_the_spaces_around_them_and_an_empty_workdir_is_refused(tmp_path):
    """Noticed by review 8: ``--set " run.workdir = x "`` kept the spaces in the workdir's name (the key was stripped,
    the value not), and ``--set run.workdir=`` was accepted, so every stage wrote straight into the current
    directory. Expected: values read as TOML without the spaces around them; an empty workdir refused, naming it."""
    from pipelines.run_config import load_run_config
    from scoring import HardfocusError

    config = tmp_path / "run.toml"
    config.write_text('[run]\nworkdir = "w"\ndata = ["d"]\n')
    assert load_run_config(config, [" run.workdir = x "]).run.workdir == "x"
    with pytest.raises(HardfocusError, match="run.workdir"):
        load_run_config(config, ["run.workdir="])
