"""Bad inputs: each ends in a clear error naming the file (and row), or a per-row status with exact accounting.

Policy (`--on-error`): rows that cannot be read as text (invalid JSON, bad UTF-8, a non-string text,
a missing field in one JSON row), NaN losses, duplicate ids and empty shards are recorded (status,
warning, manifest counts) under `record` (the default) and stop the job, naming file and row, under
`stop`. Whole-shard problems (missing, unreadable, corrupt, no such column, wrong column type) and
unwritable outputs stop the job in both modes: their rows cannot be counted. `empty` and `too_short`
are data, never errors.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from scoring import HardfocusError, ScoreConfig, score
from tests.conftest import ENGLISH, write_jsonl


def run(tmp_path, model, inputs, on_error="record", **kw):
    cfg = ScoreConfig(inputs=[str(i) for i in inputs], output=str(tmp_path / "scores"), model=model, executor="local",
                      dtype="float32", on_error=on_error, **kw)
    return score(cfg, progress=False)


def scores(tmp_path) -> pl.DataFrame:
    return pl.read_parquet(f"{tmp_path / 'scores'}/part-*.parquet").sort("shard", "row")


def good_rows(n=4):
    return [{"text": ENGLISH[i % len(ENGLISH)], "id": f"id{i}"} for i in range(n)]


def test_empty_input_file(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in" / "a.jsonl", good_rows())
    (tmp_path / "in" / "empty.jsonl").write_text("")
    with pytest.raises(HardfocusError, match=r"empty.jsonl has no rows"):
        run(tmp_path, tiny_model_dir, [tmp_path / "in"], on_error="stop")
    result = run(tmp_path, tiny_model_dir, [tmp_path / "in"])
    assert result.manifest.rows == 4
    assert {s.rel: s.rows for s in result.manifest.shards} == {"a.jsonl": 4, "empty.jsonl": 0}


def test_glob_that_matches_nothing(tmp_path, tiny_model_dir):
    with pytest.raises(HardfocusError, match=r"the glob '.*\*\.parquet' matches no file"):
        run(tmp_path, tiny_model_dir, [f"{tmp_path}/*.parquet"])


def test_unreadable_file(tmp_path, tiny_model_dir, monkeypatch):
    shard = write_jsonl(tmp_path / "in" / "secret.jsonl", good_rows())
    shard.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make opening it fail the way it fails for everyone else
        import fsspec

        real_open = fsspec.open

        def denying_open(url, *args, **kwargs):
            if str(url).endswith("secret.jsonl"):
                raise PermissionError(13, "Permission denied", str(url))
            return real_open(url, *args, **kwargs)

        monkeypatch.setattr(fsspec, "open", denying_open)
    for mode in ("record", "stop"):
        with pytest.raises(HardfocusError, match=r"cannot read JSON Lines shard .*secret.jsonl.*Permission denied"):
            run(tmp_path, tiny_model_dir, [shard], on_error=mode)


def test_truncated_parquet(tmp_path, tiny_model_dir):
    path = tmp_path / "in" / "cut.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"text": ENGLISH * 20}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for mode in ("record", "stop"):
        with pytest.raises(HardfocusError, match=r"cannot read Parquet shard .*cut.parquet.*is the file complete"):
            run(tmp_path, tiny_model_dir, [path], on_error=mode)


@pytest.mark.parametrize(
    "bad_line, status",
    [
        (b'{"text": "unterminated\n', "error: invalid JSON"),
        (b'{"text": "caf\xe9 au lait"}\n', "invalid_utf8"),
        (b'{"text": 42}\n', "error: field 'text' is int, not a string"),
        (b'{"body": "no text field"}\n', "error: no field 'text'"),
    ],
)
def test_bad_json_rows_recorded_or_stopped(tmp_path, tiny_model_dir, bad_line, status):
    path = tmp_path / "in" / "d.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good_rows(3)) + bad_line + b'{"text": "after"}\n')
    with pytest.raises(HardfocusError, match=rf"d.jsonl row 3: {status}"):
        run(tmp_path, tiny_model_dir, [path], on_error="stop")
    result = run(tmp_path, tiny_model_dir, [path], overwrite=True)
    df = scores(tmp_path)
    assert df.height == 5 == result.manifest.rows  # every line accounted for
    assert df["status"][3].startswith(status) and df["loss"][3] is None
    assert df["status"].to_list()[:3] == ["ok"] * 3 and df["status"][4] in ("ok", "too_short")


def test_missing_and_wrongly_typed_text_column(tmp_path, tiny_model_dir):
    path = tmp_path / "in" / "p.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"body": ENGLISH, "n": list(range(len(ENGLISH)))}), path)
    with pytest.raises(HardfocusError, match=r"p.parquet has no column 'text' \(columns: body, n\); pass --text-column"):
        run(tmp_path, tiny_model_dir, [path])
    with pytest.raises(HardfocusError, match=r"column 'n' of shard .*p.parquet is int64, not text"):
        run(tmp_path, tiny_model_dir, [path], text_column="n")


def test_null_and_whitespace_texts_are_data_not_errors(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in" / "d.jsonl", good_rows(2) + [{"text": None}, {"text": " \n\t "}, {"text": ""}])
    run(tmp_path, tiny_model_dir, [tmp_path / "in"], on_error="stop")  # stop mode does not stop for them
    assert scores(tmp_path)["status"].to_list() == ["ok", "ok", "empty", "empty", "empty"]


def test_duplicate_ids(tmp_path, tiny_model_dir):
    rows = good_rows(4)
    rows[3]["id"] = "id1"
    write_jsonl(tmp_path / "in" / "d.jsonl", rows)
    with pytest.raises(HardfocusError, match=r"1 rows share a sample id .*id1.*must be unique"):
        run(tmp_path, tiny_model_dir, [tmp_path / "in"], on_error="stop", id_column="id")
    result = run(tmp_path, tiny_model_dir, [tmp_path / "in"], id_column="id", overwrite=True)
    assert result.manifest.duplicate_ids == 1 and result.manifest.duplicate_id_examples == ["id1"]
    assert result.manifest.rows == 4


def test_a_single_5mb_document_is_truncated_not_a_crash(tmp_path, tiny_model_dir):
    huge = " ".join(ENGLISH) * (5_000_000 // len(" ".join(ENGLISH)))
    write_jsonl(tmp_path / "in" / "d.jsonl", [{"text": huge}] + good_rows(2))
    run(tmp_path, tiny_model_dir, [tmp_path / "in"], max_tokens=256)
    df = scores(tmp_path)
    assert df["truncated"].to_list() == [True, False, False]
    assert df["n_tokens"][0] == 255 and df["status"].to_list() == ["ok"] * 3


def test_schema_drift_between_shards(tmp_path, tiny_model_dir):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ENGLISH, "group": ["a"] * 6, "extra": list(range(6))}), tmp_path / "in" / "1.parquet")
    pq.write_table(pa.table({"text": ENGLISH[:3]}), tmp_path / "in" / "2.parquet")
    # an extra column is ignored; the group column missing from one shard stops the job, naming that shard
    with pytest.raises(HardfocusError, match=r"2.parquet has no column 'group'.*pass --group-column"):
        run(tmp_path, tiny_model_dir, [tmp_path / "in"], group_column="group")
    # without groups both shards are fine; the parts scored with groups before the error are replaced
    with pytest.raises(HardfocusError, match=r"made with other settings \(differs in: group_column\)"):
        run(tmp_path, tiny_model_dir, [tmp_path / "in"])
    result = run(tmp_path, tiny_model_dir, [tmp_path / "in"], overwrite=True)
    assert result.manifest.rows == 9


def test_output_directory_that_is_not_writable(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in" / "d.jsonl", good_rows())
    (tmp_path / "file").write_text("a file, not a directory")
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "file" / "scores"), model=tiny_model_dir,
                      executor="local")
    with pytest.raises(HardfocusError, match=r"cannot write to output directory .*file/scores"):
        score(cfg, progress=False)


def test_running_out_of_disk_while_writing(tmp_path, tiny_model_dir):
    """A file-size limit makes the part write fail: a clear error, no partial part, and a rerun completes."""
    write_jsonl(tmp_path / "in" / "d.jsonl", [{"text": t} for t in ENGLISH * 40])
    out = tmp_path / "scores"
    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write past the limit then fails with EFBIG
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from pipelines.cli import app\n"
        f"app(['score', '{tmp_path / 'in'}', '-o', '{out}', '--model', '{tiny_model_dir}', '--executor', 'local', '--dtype', 'float32',"
        " '--rows-per-unit', '120'])\n"
    )
    # no .pyc writes: they would hit the limit before the scores do
    env = os.environ | {"PYTHONPATH": os.getcwd(), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: cannot write" in done.stderr and "File too large" in done.stderr
    assert not list(out.glob(".tmp*")) and not (out / "manifest.json").exists()
    for part in out.glob("part-*.parquet"):  # whatever did get written is whole
        assert pq.read_metadata(part).num_rows == 120
    result = run(tmp_path, tiny_model_dir, [tmp_path / "in"], rows_per_unit=120)
    assert result.manifest.rows == 240 == scores(tmp_path)["sample_id"].n_unique()


@pytest.fixture(scope="module")
def nan_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[:, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan-model")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path)


def test_a_model_that_produces_nan_losses(tmp_path, nan_model_dir):
    write_jsonl(tmp_path / "in" / "d.jsonl", good_rows(3))
    with pytest.raises(HardfocusError, match=r"d.jsonl row 0: the model's loss is not finite \(nan\)"):
        run(tmp_path, nan_model_dir, [tmp_path / "in"], on_error="stop")
    result = run(tmp_path, nan_model_dir, [tmp_path / "in"], overwrite=True)
    df = scores(tmp_path)
    assert df["status"].to_list() == ["error: non-finite loss"] * 3 and df["loss"].null_count() == 3
    assert result.manifest.rows == 3 and result.manifest.rows_by_status == {"error": 3}
    # the positions were scored (their count is exact), only the loss is not a number
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nan_model_dir)
    assert df["n_tokens"].to_list() == [len(tokenizer(r["text"])["input_ids"]) - 1 for r in good_rows(3)]
    assert df["nll_sum"].null_count() == 3


@pytest.mark.ray
def test_stop_mode_error_comes_through_ray_as_itself(tmp_path, tiny_model_dir, local_ray):
    path = tmp_path / "in" / "d.jsonl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wb") as f:
        f.write(b'{"text": "fine"}\n{broken\n')
    cfg = ScoreConfig(inputs=[str(path)], output=str(tmp_path / "scores"), model=tiny_model_dir, executor="ray",
                      on_error="stop")
    with pytest.raises(HardfocusError, match=r"d.jsonl.gz row 1: error: invalid JSON") as info:
        score(cfg, progress=False)
    assert "Traceback" not in str(info.value) and "RayTaskError" not in str(info.value)
