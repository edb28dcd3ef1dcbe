"""s3:// for real: score, select and train against an S3 server started here (moto), with the output lock,
a SIGKILLed scoring run and a killed selection on the object store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import polars as pl
import pytest
from typer.testing import CliRunner

from hardfocus.lock import OutputLock
from pipelines.cli import app
from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from tests.s3 import BUCKET, download, names, s3_fs, upload
from tests.scoring.helpers import assert_same_scores, make_corpus, read_scores
from tests.training.helpers import max_param_diff, parameters, small_config
from training import train
from training.data import load_training_data
from training.store import fetch_model

pytestmark = pytest.mark.s3

ROWS = 67  # make_corpus(): 37 Parquet rows + 29 JSONL lines + 1 bad JSON line


def _cfg(inputs: str, output: str, model: str, **kw) -> ScoreConfig:
    base = dict(inputs=[inputs], output=output, model=model, dtype="float32", device="cpu", group_column="domain",
                max_tokens=64, rows_per_unit=10, token_budget=512, executor="local")
    return ScoreConfig(**(base | kw))


def _env() -> dict:
    return os.environ | {"PYTHONPATH": os.getcwd()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3_server, tiny_model_dir):
    """The test corpus locally and in the bucket, its local scores (the reference) and its scores on s3."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    reference = score(_cfg(str(root / "in"), str(root / "reference"), tiny_model_dir), progress=False)
    url = upload(root / "in", f"s3://{BUCKET}/corpus-{os.getpid()}/in")
    scores_url = url.rsplit("/", 1)[0] + "/scores"
    on_s3 = score(_cfg(url, scores_url, tiny_model_dir), progress=False)
    return {"root": root, "in": url, "reference": reference, "scores": scores_url, "result": on_s3}


def test_score_with_inputs_and_output_on_s3_equals_a_local_run(corpus, tmp_path):
    result = corpus["result"]
    assert result.manifest.rows == corpus["reference"].manifest.rows == ROWS
    assert result.manifest.rows_by_status == corpus["reference"].manifest.rows_by_status
    assert all(s.url.startswith("s3://") for s in result.manifest.shards)
    listed = names(corpus["scores"])
    assert "manifest.json" in listed and ".scores.lock" not in names(corpus["scores"].rsplit("/", 1)[0])  # lock released
    assert not [n for n in listed if ".tmp-" in n]  # no temporary objects: parts are written in one PUT
    local = download(corpus["scores"], tmp_path / "scores")
    assert_same_scores(read_scores(local), read_scores(corpus["root"] / "reference"))
    assert read_scores(local)["sample_id"].n_unique() == ROWS

    again = score(_cfg(corpus["in"], corpus["scores"], result.manifest.model_path), progress=False)
    assert again.units_scored == 0  # a rerun sees every part on the store: nothing to do


@pytest.mark.ray
def test_ray_workers_reach_s3_through_the_environment(corpus, s3_url, tmp_path, tiny_model_dir, local_ray):
    """Scoring actors and Ray Data readers are other processes: they find the endpoint in the environment (the
    session's Ray started after the S3 fixture set it)."""
    on_ray = score(_cfg(corpus["in"], f"{s3_url}/scores", tiny_model_dir, executor="ray", actors=1), progress=False)
    assert on_ray.manifest.rows == ROWS
    local = download(f"{s3_url}/scores", tmp_path / "scores")
    assert_same_scores(read_scores(local), read_scores(corpus["root"] / "reference"))

    from training.ray_train import training_dataset

    selected = select(SelectConfig(scores=[corpus["scores"]], output=f"{s3_url}/selected", report=False), progress=False)
    assert training_dataset([f"{s3_url}/selected"]).count() == selected.summary.bands["kept"] > 0


def test_select_and_train_read_and_write_s3(corpus, s3_url, tmp_path, tiny_model_dir):
    out = f"{s3_url}/selected"
    run = CliRunner().invoke(app, ["-q", "select", corpus["scores"], "-o", out])
    assert run.exit_code == 0, run.output
    listed = names(out)
    assert "summary.json" in listed and "report.html" in listed and not [n for n in listed if "tmp" in n]
    local_sel = select(SelectConfig(scores=[str(corpus["root"] / "reference")], output=str(tmp_path / "local-sel")),
                       progress=False)
    remote = download(out, tmp_path / "remote-sel")
    summary = json.loads((remote / "summary.json").read_text())
    assert summary["bands"] == local_sel.summary.bands and summary["output_parts"] == local_sel.summary.output_parts
    a, b = pl.read_parquet(f"{remote}/part-*.parquet"), pl.read_parquet(f"{tmp_path / 'local-sel'}/part-*.parquet")
    assert a.select("sample_id", "weight").equals(b.select("sample_id", "weight"))

    again = CliRunner().invoke(app, ["-q", "select", corpus["scores"], "-o", out])  # the same selection: nothing to do
    assert again.exit_code == 0 and "already complete" in again.output
    other = CliRunner().invoke(app, ["-q", "select", corpus["scores"], "-o", out, "--keep", "0.4"])
    assert other.exit_code == 2 and "made with other settings (differs in: parameters.keep)" in other.output

    data = load_training_data([out])
    assert data.kinds == {out: "selected"} and len(data) == summary["bands"]["kept"]
    result = train(small_config([out], tmp_path / "model", model=tiny_model_dir), progress=False)
    assert result.steps == 4 and result.train_rows == len(data)
    assert (tmp_path / "model" / "config.json").exists()
    on_s3 = small_config([out], f"{s3_url}/model", model=tiny_model_dir)  # trained in a local staging dir, published
    published = train(on_s3, progress=False)
    assert published.output == f"{s3_url}/model" and published.steps == 4
    assert {"config.json", "model.safetensors", "train_log.jsonl", "train_manifest.json"} <= set(names(f"{s3_url}/model"))
    assert max_param_diff(parameters(fetch_model(f"{s3_url}/model")), parameters(str(tmp_path / "model"))) < 1e-6
    assert train(on_s3, progress=False).skipped  # the store's marker says it is done


def _lock_of(url: str) -> str:
    """The lock object of an output: ``.<name>.lock`` beside it."""
    parent, name = url.rstrip("/").rsplit("/", 1)
    return f"{parent}/.{name}.lock"


def _lock_record(url: str) -> dict:
    """The record of the lock of the output ``url``."""
    return _record_at(_lock_of(url))


def _record_at(path: str) -> dict:
    return json.loads(s3_fs().cat_file(path))


def _wait_until_old(path: str, ttl_s: float) -> None:
    """Until the store says the object at ``path`` is older than ``ttl_s`` (its Date against its Last-Modified)."""
    from email.utils import parsedate_to_datetime

    from hardfocus.lock import TIMESTAMP_RESOLUTION_S

    fs, deadline = s3_fs(), time.monotonic() + 60
    bucket, key, _ = fs.split_path(path)
    while True:
        head = fs.call_s3("head_object", Bucket=bucket, Key=key)
        age = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"]) - head["LastModified"]
        if age.total_seconds() > ttl_s + TIMESTAMP_RESOLUTION_S:
            return
        assert time.monotonic() < deadline, "the store's clock did not advance"
        time.sleep(0.1)


def test_a_second_score_run_is_refused_while_the_lock_is_held(corpus, s3_url, tiny_model_dir):
    fs = s3_fs()
    holder = OutputLock(fs, _lock_of(f"{s3_url}/scores").removeprefix("s3://"))
    holder.acquire()
    try:
        record = _lock_record(f"{s3_url}/scores")
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(HardfocusError, match=rf"another hardfocus run is writing to .*pid {os.getpid()}.*expires at"):
            score(_cfg(corpus["in"], f"{s3_url}/scores", tiny_model_dir), progress=False)
        assert not [n for n in names(f"{s3_url}/scores") if n.startswith("part-")]  # it wrote nothing
        assert _lock_record(f"{s3_url}/scores")["token"] == holder.token  # and left the holder's lock alone
    finally:
        holder.release()
    assert ".scores.lock" not in names(s3_url)  # released = deleted
    assert score(_cfg(corpus["in"], f"{s3_url}/scores", tiny_model_dir), progress=False).manifest.rows == ROWS


def test_exactly_one_of_concurrent_acquirers_gets_the_lock(s3_url):
    """If-None-Match: * decides, whatever the interleaving."""
    path = f"{s3_url}/.lock".removeprefix("s3://")
    locks = [OutputLock(s3_fs(), path) for _ in range(6)]
    won, refused = [], []
    barrier = threading.Barrier(len(locks))

    def take(lock):
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except HardfocusError:
            refused.append(lock)

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert _record_at(f"{s3_url}/.lock")["token"] == won[0].token
    won[0].release()


def test_a_stale_lock_is_taken_over_and_its_old_owner_cannot_delete_the_new_one(s3_url, monkeypatch):
    fs = s3_fs()
    path = f"{s3_url}/.lock".removeprefix("s3://")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    # this host (and boot, and PID namespace), a process that is gone, not yet expired: taken over at once (a
    # SIGKILLed run can be rerun)
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    fs.pipe_file(path, json.dumps({"host": socket.gethostname(), "boot_id": boot_id,
                                   "pid_namespace": os.readlink("/proc/self/ns/pid"), "pid": dead_pid, "token": "t0",
                                   "expires_at": time.time() + 3600}).encode())
    first = OutputLock(s3_fs(), path)
    first.acquire()
    assert _record_at(f"{s3_url}/.lock")["token"] == first.token
    first.release()
    # another host, expired (by the store's clock: its owner's TTL passed since the store last saw it): taken over
    fs.pipe_file(path, json.dumps({"host": "elsewhere", "pid": 1, "token": "t1", "ttl_s": 0.5,
                                   "expires_at": time.time() + 3600}).encode())
    _wait_until_old(path, 0.5)
    second = OutputLock(s3_fs(), path)
    second.acquire()
    second.release()
    # another host, not expired: refused, naming the owner and the expiry
    fs.pipe_file(path, json.dumps({"host": "elsewhere", "pid": 1, "token": "t2", "expires_at": time.time() + 3600}).encode())
    with pytest.raises(HardfocusError, match="host elsewhere, pid 1; its lock expires at"):
        OutputLock(s3_fs(), path).acquire()
    fs.rm_file(path)

    # a run whose heartbeat stopped for a TTL loses the lock to the next; its release leaves the new lock alone
    monkeypatch.setenv("HARDFOCUS_LOCK_TTL_S", "1")
    old = OutputLock(s3_fs(), path)
    old.acquire()
    old._stop.set()  # its heartbeat stops (a stalled process)
    old._thread.join()
    _wait_until_old(path, 1)
    new = OutputLock(s3_fs(), path)
    new.acquire()
    assert not old.lost  # it does not know yet ...
    with pytest.raises(OSError):  # ... its next refresh (If-Match on its old version) fails ...
        old._put(old._etag, create=False)
    old.release()  # ... and its release does not delete the new owner's lock
    assert _record_at(f"{s3_url}/.lock")["token"] == new.token
    new.release()
    assert ".lock" not in names(s3_url)


def test_the_heartbeat_refreshes_the_lock(s3_url, monkeypatch):
    monkeypatch.setenv("HARDFOCUS_LOCK_TTL_S", "3")
    monkeypatch.setenv("HARDFOCUS_LOCK_HEARTBEAT_S", "0.1")
    lock = OutputLock(s3_fs(), f"{s3_url}/.lock".removeprefix("s3://"))
    lock.acquire()
    try:
        first = _record_at(f"{s3_url}/.lock")["expires_at"]
        deadline = time.time() + 60
        while _record_at(f"{s3_url}/.lock")["expires_at"] == first:
            assert time.time() < deadline, "the heartbeat never refreshed the lock"
            time.sleep(0.05)
        assert _record_at(f"{s3_url}/.lock")["token"] == lock.token and not lock.lost
    finally:
        lock.release()


def test_local_lock_names_its_owner_and_is_deleted_on_release(tmp_path):
    import fsspec

    fs, path = fsspec.filesystem("file"), str(tmp_path / ".lock")
    first = OutputLock(fs, path)
    first.acquire()
    with pytest.raises(HardfocusError, match=rf"another hardfocus run is writing to .*host {socket.gethostname()}, pid {os.getpid()}"):
        OutputLock(fs, path).acquire()
    first.release()
    assert not (tmp_path / ".lock").exists()
    second = OutputLock(fs, path)
    second.acquire()
    second.release()


def test_a_store_without_conditional_writes_gets_a_best_effort_lock(monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")
    monkeypatch.setenv("HARDFOCUS_LOCK_HEARTBEAT_S", "0.05")
    path = f"/locks-{os.getpid()}/.lock"
    first = OutputLock(fs, path)
    first.acquire()
    assert not first._cas and json.loads(fs.cat_file(path))["token"] == first.token
    with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):
        OutputLock(fs, path).acquire()
    expires = json.loads(fs.cat_file(path))["expires_at"]
    deadline = time.time() + 60
    while json.loads(fs.cat_file(path))["expires_at"] == expires:  # the heartbeat refreshes it here too
        assert time.time() < deadline
        time.sleep(0.02)
    first.release()
    assert not fs.exists(path)


def test_a_failed_local_run_leaves_no_lock_file(tmp_path, tiny_model_dir):
    with pytest.raises(HardfocusError):
        score(_cfg(str(tmp_path / "missing"), str(tmp_path / "out"), tiny_model_dir), progress=False)
    assert not (tmp_path / ".out.lock").exists() and not (tmp_path / "out").exists()


# the CLI, with ScoresDir.write_part stopping for good before its 4th part: a kill with exactly 3 parts written
_STALLED_SCORE = """
import sys, time
from scoring.output import ScoresDir
write_part, written = ScoresDir.write_part, []
def stalled(self, name, table):
    if len(written) == 3:
        print("stalled", flush=True)
        time.sleep(3600)
    write_part(self, name, table)
    written.append(name)
ScoresDir.write_part = stalled
from pipelines.cli import app
sys.argv = ["hardfocus"] + sys.argv[1:]
app()
"""


def _killed_once_stalled(script: str, *args: str) -> subprocess.Popen:
    """Run ``script``, wait for it to print "stalled" (it stops for good at a chosen point), SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "stalled", proc.stderr.read()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc


def test_sigkill_of_a_score_run_on_s3_then_rerun(corpus, s3_url, tmp_path, tiny_model_dir, caplog):
    out = f"{s3_url}/scores"
    args = ["-q", "score", corpus["in"], "-o", out, "--model", tiny_model_dir, "--dtype", "float32", "--device", "cpu",
            "--group-column", "domain", "--max-tokens", "64", "--rows-per-unit", "5", "--token-budget", "512",
            "--executor", "local"]
    proc = _killed_once_stalled(_STALLED_SCORE, *args)
    before = names(out)
    parts_before = [n for n in before if n.startswith("part-")]
    assert parts_before and "manifest.json" not in before
    assert _lock_record(out)["pid"] == proc.pid  # the killed run's lock is left behind

    with caplog.at_level("WARNING", logger="hardfocus.lock"):  # the rerun, in-process (saves a CLI start)
        score(_cfg(corpus["in"], out, tiny_model_dir, rows_per_unit=5), progress=False)
    assert f"process {proc.pid} on this host is gone" in caplog.text  # the dead owner's lock was taken over at once
    after = names(out)
    assert ".scores.lock" not in names(s3_url) and "manifest.json" in after
    df = read_scores(download(out, tmp_path / "scores"))
    assert df.height == ROWS and df["sample_id"].n_unique() == ROWS  # nothing lost, nothing twice
    assert_same_scores(df, read_scores(corpus["root"] / "reference"))
    manifest = json.loads(s3_fs().cat_file(f"{out}/manifest.json"))
    last = manifest["runs"][-1]
    assert last["units_scored"] + last["units_reused"] == manifest["parts"] and last["units_reused"] > 0


# select over an existing complete selection (--overwrite), stopping for good after its first part
_STALLED_SELECT = """
import sys, threading, time
import selection.writer as writer
from selection import SelectConfig, select
write, calls, lock, written = writer._write, [], threading.Lock(), threading.Event()
def stalled(*args, **kwargs):  # the first file is uploaded, every later one stalls (parts are written on threads)
    with lock:
        calls.append(1)
        first = len(calls) == 1
    if first:
        try:
            write(*args, **kwargs)
        finally:  # a failed first write releases the others too: the test then fails on the listing, not by hanging
            written.set()
        return
    written.wait()  # "stalled" once the first file is uploaded: killed before, the run would leave no data to keep
    print("stalled", flush=True)
    time.sleep(3600)
writer._write = stalled
select(SelectConfig(scores=[sys.argv[1]], output=sys.argv[2], keep=0.4, overwrite=True, report=False), progress=False)
"""


def test_a_selection_killed_while_writing_to_s3_is_never_readable_as_complete(corpus, s3_url):
    out = f"{s3_url}/selected"
    complete = select(SelectConfig(scores=[corpus["scores"]], output=out, report=False), progress=False)
    assert complete.summary.output_parts >= 2  # so that a kill after the first part leaves the selection half written
    _killed_once_stalled(_STALLED_SELECT, corpus["scores"], out)
    # killed with its first file uploaded and the others stalled, after the old selection was cleared, summary first
    listed = names(out)
    assert "selection_job.json" in listed and "summary.json" not in listed
    assert set(listed) - {"selection_job.json"}, listed  # data to keep: a rerun with other settings must ask first
    with pytest.raises(HardfocusError, match="did not finish"):
        load_training_data([out])
    from training.ray_train import training_dataset

    with pytest.raises(HardfocusError, match="did not finish"):  # the Ray Train reader refuses it too
        training_dataset([out])
    with pytest.raises(HardfocusError, match="unfinished selection"):  # replaced only when asked
        select(SelectConfig(scores=[corpus["scores"]], output=out, report=False), progress=False)
    select(SelectConfig(scores=[corpus["scores"]], output=out, report=False, overwrite=True), progress=False)
    assert len(load_training_data([out])) == complete.summary.bands["kept"]
