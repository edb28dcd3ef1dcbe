"""Problems found by a seventh adversarial review, of the one-actor scoring path (scoring/executors.py,
``_run_one_actor``: a local Ray with one CPU actor reads, tokenises and scores every shard itself; a dead actor is
replaced up to three times and finishes the unfinished shards on their written parts).

Reviewed at 5928fab (and 15ab180). What held up: one to three SIGKILLs of the actor in one run (mid-unit, while it
writes a part, during its model load, on a resume of a killed run), several shards mixing Parquet, Arrow, JSONL
(plain, .gz, .zst), empty shards and shards that end mid-unit, windowed long documents, ``--on-error stop`` after a
kill, and ``--actors 2`` (Ray Data): every row exactly once, the losses and the manifest's counts of an unkilled
``--executor local`` run. Each test below fails on the reviewed code for the reason its docstring gives.
"""

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

from scoring import ScoreConfig, score
from tests.conftest import ENGLISH
from tests.reliability.test_faults import cmdline, descendants
from tests.scoring.helpers import assert_same_scores, read_scores

ENV = os.environ | {"PYTHONPATH": os.getcwd()}
ENV.pop("RAY_ADDRESS", None)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _common(settings: dict) -> list[str]:
    return ["--model", settings["model"], "--dtype", settings["dtype"], "--group-column", settings["group_column"],
            "--max-tokens", str(settings["max_tokens"]), "--rows-per-unit", str(settings["rows_per_unit"]),
            "--token-budget", str(settings["token_budget"])]


# ---- the actor dying more often than it is replaced ------------------------------------------------------------


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


# ---- a HardfocusError raised while the actor starts ---------------------------------------------------------------


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


# ---- --overwrite and a shard that shrank after an interrupted run (units.read_shard_task; any executor) -----------


def test_overwrite_scores_again_a_shard_that_shrank_after_a_kill_mid_shard(tmp_path, tiny_model_dir):
    """docs/reliability.md: "a shard edited after a kill mid-shard ... a resume refuses the old shard's parts
    (``--overwrite`` scores the shard again)". With ``--overwrite``, ``reusable_parts`` does remove the old parts
    (their stamp names another version of the shard) and the task scores every row of the new shard; but
    ``read_shard_task`` then checks ``task.done`` (the starts of the parts just removed) against the new row count,
    and a shard that now has fewer rows than an old part's start fails with "holds parts ... past its last row ...
    pass --overwrite", though --overwrite was passed and those parts are gone. (Outside the one-actor change: every
    executor reads shards through ``read_shard_task``.) Expected: the shard scored again, as a fresh run scores it."""
    shard = tmp_path / "in" / "a.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"text": [f"{ENGLISH[i % 6]} {i}" for i in range(30)]}), shard)
    cfg = ScoreConfig(inputs=[str(shard.parent)], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=32, rows_per_unit=5)
    score(cfg, progress=False)
    scores = tmp_path / "scores"
    # the state a SIGKILL mid-shard leaves: parts, no done marker, no manifest
    for marker in (scores / "done").glob("*.json"):
        marker.unlink()
    (scores / "manifest.json").unlink()
    pq.write_table(pa.table({"text": [f"short text {i}" for i in range(12)]}), shard)  # the user edits the shard
    score(cfg.model_copy(update={"overwrite": True}), progress=False)
    fresh = score(cfg.model_copy(update={"output": str(tmp_path / "fresh")}), progress=False)
    assert fresh.manifest.rows == 12
    assert_same_scores(read_scores(scores), read_scores(tmp_path / "fresh"))
