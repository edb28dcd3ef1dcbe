"""The CLI: typed config from TOML with flag overrides, and one-line errors that say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import build_score_config
from scoring import HardfocusError
from tests.conftest import write_jsonl

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
HARDFOCUS = str(Path(sys.executable).parent / "hardfocus")


def test_help_lists_every_score_flag():
    result = runner.invoke(app, ["score", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--output", "--config", "--text-column", "--id-column", "--group-column", "--model", "--max-tokens",
                 "--token-budget", "--executor", "--actors", "--gpus-per-actor", "--overwrite"):
        assert flag in result.output


def test_help_and_a_refused_flag_load_no_stage_library():
    """--help, a config error and `submit` (whose Ray client is imported when it runs) must not pay for torch,
    transformers and Ray (~7 s on 2 cores)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipelines.cli import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['score', '--help']).exit_code == 0\n"
        "assert r.invoke(app, ['select', 'scores', '--temperature', '-1']).exit_code == 2\n"
        "import pipelines.submit\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray', 'polars') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_toml_config_with_flag_overrides(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[score]\ninputs = ["a.jsonl"]\noutput = "out"\nmax_tokens = 128\nactors = 2\n')
    cfg = build_score_config(cfg_file, {"max_tokens": 256, "actors": None, "inputs": None})
    assert (cfg.inputs, cfg.output, cfg.max_tokens, cfg.actors) == (["a.jsonl"], "out", 256, 2)


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[score]\ninputs = ["a"]\noutput = "o"\nmax_token = 3\n', "unknown key 'max_token'"),
        ('[scoring]\nx = 1\n', "unknown key 'scoring'"),
        ('[score]\ninputs = ["a"]\n', "'output' is required \\(--output\\)"),
        ('[score]\ninputs = ["a"]\noutput = "o"\nmax_tokens = 1\n', "'max_tokens': Input should be greater than or equal to 2"),
        ("[score\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, toml, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(toml)
    with pytest.raises(HardfocusError, match=message):
        build_score_config(cfg_file, {})


def test_a_misspelt_key_gets_a_suggestion(tmp_path):
    from pipelines.config import build_select_config
    from pipelines.run_config import load_run_config

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[select]\nscores = ["s"]\noutput = "o"\ntempreature = 0.5\n')
    with pytest.raises(HardfocusError, match=r"unknown key 'tempreature' \(did you mean 'temperature'\?\)"):
        build_select_config(cfg_file, {})
    cfg_file.write_text('[scoring]\nx = 1\n')
    with pytest.raises(HardfocusError, match=r"unknown key 'scoring' \(did you mean 'score'\?\)"):
        build_select_config(cfg_file, {})
    cfg_file.write_text('[select]\nzzz = 1\n')  # nothing close: no guess
    with pytest.raises(HardfocusError, match=r"unknown key 'zzz'$"):
        build_select_config(cfg_file, {"scores": ["s"], "output": "o"})

    run_file = tmp_path / "run.toml"
    run_file.write_text(f'[run]\nworkdir = "{tmp_path}/w"\ndata = ["d"]\n')
    for override, message in [
        ("select.tempreature=0.5", r"\[select\]: unknown key 'tempreature' \(did you mean 'temperature'\?\)"),
        ("run.workdri=x", r"unknown key 'run.workdri' \(did you mean 'workdir'\?\)"),
        ("sellect.keep=0.2", r"unknown table 'sellect' \(did you mean 'select'\?\)"),
    ]:
        with pytest.raises(HardfocusError, match=message):
            load_run_config(run_file, [override])


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.jsonl", "-o", "{tmp}/o"], "input '{tmp}/missing.jsonl' does not exist"),
        (["{tmp}/d.jsonl", "-o", "{tmp}/o", "--text-column", "body"], "has no field 'body' (fields: text)"),
        (["{tmp}/d.jsonl", "-o", "{tmp}/o", "--model", "{tmp}/nothing-here"], "unknown model"),
        (["{tmp}/d.jsonl", "-o", "{tmp}/o", "--model", "{tmp}/m.gguf"], "GGUF file '{tmp}/m.gguf' does not exist"),
        (["{tmp}/d.jsonl"], "'output' is required (--output)"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, tiny_model_dir, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_jsonl(tmp_path / "d.jsonl", [{"text": "hello world"}])
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", tiny_model_dir]
    result = runner.invoke(app, ["score", *args, "--executor", "local"])
    assert result.exit_code == 2, result.output
    assert message.format(tmp=tmp_path) in result.output
    assert "Traceback" not in result.output


def test_score_command_end_to_end(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "d.jsonl", [{"text": f"the number {i} is here"} for i in range(5)] + [{"text": ""}])
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[score]\nmodel = "{tiny_model_dir}"\nexecutor = "local"\ndtype = "float32"\n')
    result = runner.invoke(app, ["-q", "score", str(tmp_path / "d.jsonl"), "-o", str(tmp_path / "o"), "-c", str(cfg_file)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["rows_by_status"] == {"empty": 1, "ok": 5} and manifest["dtype"] == "float32"


def test_select_and_report_commands(tmp_path):
    import numpy as np

    from tests.selection.fake_scores import write_scores

    rng = np.random.default_rng(0)
    write_scores(tmp_path / "scores", rng.gamma(4, 0.7, 50).tolist(), rng.choice(["a", "b"], 50).tolist())
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[select]\ndrop_top = 0.2\nkeep = 0.4\ntemperature = 0.5\n")
    result = runner.invoke(app, ["-q", "select", str(tmp_path / "scores"), "-o", str(tmp_path / "sel"), "-c", str(cfg_file),
                                 "--per-group"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    kept = sum(int(g["eligible"] * 0.4) for g in summary["groups"].values())  # per group: each keeps floor(40%)
    assert f"selected {kept} of 50 eligible rows" in result.output
    assert summary["parameters"]["per_group"] is True and summary["parameters"]["drop_top"] == 0.2
    assert summary["parameters"]["temperature"] == 0.5 and summary["bands"]["kept"] == kept

    again = runner.invoke(app, ["select", str(tmp_path / "scores"), "-o", str(tmp_path / "sel")])
    assert again.exit_code == 2 and "holds a selection made with other settings" in again.output
    assert "pass --overwrite to replace it" in again.output

    out = tmp_path / "scores-report"
    rep = runner.invoke(app, ["-q", "report", str(tmp_path / "scores"), "-o", str(out)])
    assert rep.exit_code == 0, rep.output
    assert 'alt="weight vs loss"' not in (out / "report.html").read_text()  # no selection: no weights
    rep = runner.invoke(app, ["-q", "report", str(tmp_path / "scores"), str(tmp_path / "sel"), "-o", str(out)])
    assert rep.exit_code == 0 and 'alt="weight vs loss"' in (out / "report.html").read_text()
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_batching_and_the_buffer_from_a_toml_train_table_with_a_flag_on_top(tmp_path):
    """Found by a review: batching and shuffle_buffer come from a [train] table, a flag overrides it, 0 is refused."""
    from pipelines.config import build_train_config

    toml = tmp_path / "hardfocus.toml"
    toml.write_text('[train]\ndata = ["sel"]\noutput = "out"\nbatching = "packed"\nshuffle_buffer = 16\n')
    cfg = build_train_config(toml, {"shuffle_buffer": 32})
    assert (cfg.batching, cfg.shuffle_buffer) == ("packed", 32)
    toml.write_text('[train]\ndata = ["sel"]\noutput = "out"\nshuffle_buffer = 0\n')
    with pytest.raises(HardfocusError, match="shuffle_buffer"):
        build_train_config(toml, {})


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
