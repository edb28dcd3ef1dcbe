"""scoring/executors.py: the default path, a local Ray with one actor (``_run_one_actor``), reports an actor that
keeps dying, or a model the scorer refuses, in one error line; Ray's workers get the model spec the driver resolved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ENGLISH
from tests.reliability.test_faults import cmdline, descendants

ENV = os.environ | {"PYTHONPATH": os.getcwd()}
ENV.pop("RAY_ADDRESS", None)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _common(settings: dict) -> list[str]:
    return ["--model", settings["model"], "--dtype", settings["dtype"], "--group-column", settings["group_column"],
            "--max-tokens", str(settings["max_tokens"]), "--rows-per-unit", str(settings["rows_per_unit"]),
            "--token-budget", str(settings["token_budget"])]


@pytest.mark.ray
def test_an_actor_that_dies_more_often_than_it_is_replaced_fails_with_one_line_saying_so(tmp_path, scored_corpus):
    """The one-actor path replaces a dead actor three times; at the fourth death ``_run_one_actor`` re-raises Ray's
    ``ActorDiedError`` as it is, so ``hardfocus score`` exits 1 with a ~40-line traceback through the driver and Ray's
    internals, the CLI's way of reporting a bug in hardfocus. An actor that keeps dying (the OOM killer, a node
    that keeps losing it) is not a bug of hardfocus but a condition the user must act on: expected is one
    ``error:`` line (exit 2, a :class:`HardfocusError`) saying the scoring actor died ``_ACTOR_RESTARTS + 1`` times,
    with the last cause and that finished parts are kept so the same command resumes. (Each actor dies while it
    loads the model, so no part was written: a rerun is a plain run; resuming after a kill is test_faults'.)"""
    from scoring.executors import _ACTOR_RESTARTS

    deaths = _ACTOR_RESTARTS + 1
    common = _common(scored_corpus["settings"])
    out = tmp_path / "scores"
    proc = subprocess.Popen(_cli("-q", "score", str(scored_corpus["inputs"]), "-o", str(out), *common), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed: set[int] = set()
    try:
        deadline = time.time() + 300
        while len(killed) < deaths and proc.poll() is None:  # each new actor is killed while it loads the model
            assert time.time() < deadline, f"only {len(killed)} actors were killed"
            for pid in descendants(proc.pid):
                if pid not in killed and "ShardsScorer.__init__" in cmdline(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = stderr.decode()
    assert len(killed) == deaths, err[-3000:]
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error:") and f"{deaths} times" in last, err[-3000:]
    assert "resumes" in last and not (out / "manifest.json").exists()


def _tiny_cohere(path: Path, tokenizer_dir: str) -> str:
    """A 2-layer Cohere model (its logits are scaled by ``logit_scale``, which the chunked loss does not apply, so
    the scorer's self-check refuses it) with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, CohereConfig, CohereForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = CohereConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, logit_scale=0.5)
    torch.manual_seed(0)
    CohereForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.ray
def test_a_model_the_scorer_refuses_is_one_error_line_on_the_default_ray_path_too(tmp_path, tiny_model_dir):
    """The scorer's self-check raises a :class:`HardfocusError` ("the chunked loss ... does not reproduce this model's
    own loss ...; its architecture computes logits in a way hardfocus does not support yet") while the scorer is
    built. With ``--executor local`` that is one ``error:`` line and exit 2. On the default path (a local Ray, one
    actor) it is raised in ``ShardsScorer.__init__``; ``_run_one_actor`` sees ``actor_init_failed`` and re-raises
    Ray's ``ActorDiedError`` as it is: exit 1 and a traceback, the CLI's report of a bug, for a plain user error
    (a model hardfocus does not support). Expected: the same one line, exit 2, as in process (the way a read error
    already comes through Ray, ``test_a_corrupt_parquet_page_comes_through_ray_as_the_same_one_line_error``). The
    Ray Data path (``--actors 2``) has the same fault; this pins the default command."""
    model = _tiny_cohere(tmp_path / "cohere", tiny_model_dir)
    shard = tmp_path / "in" / "a.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"text": ENGLISH * 2}), shard)
    args = ["-q", "score", str(shard.parent), "--model", model, "--dtype", "float32", "--max-tokens", "32"]
    local = subprocess.run(_cli(*args, "-o", str(tmp_path / "local"), "--executor", "local"), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 2 and "does not reproduce" in local.stderr.strip().splitlines()[-1], local.stderr[-2000:]
    ray = subprocess.run(_cli(*args, "-o", str(tmp_path / "ray")), env=ENV, capture_output=True, text=True, timeout=300)
    assert ray.returncode == 2, ray.stderr[-3000:]
    assert "Traceback" not in ray.stderr, ray.stderr[-3000:]
    assert ray.stderr.strip().splitlines()[-1] == local.stderr.strip().splitlines()[-1]


# (a cluster named by RAY_ADDRESS takes the Ray Data job, not the one-actor path: asserted by
# tests/scoring/test_ray_cluster.py's run on a cluster, and the one-actor path's log line by tests/scoring/test_console.py)


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
