"""`hardfocus run`: one config through score -> select -> train -> eval, reruns skip what is up to date."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.run_config import load_run_config
from scoring import HardfocusError
from tests.hardfocus_run import invoke_run, stages_line, write_run_config

runner = CliRunner()


@pytest.fixture
def run_config(tmp_path, tiny_model_dir):
    return write_run_config(tmp_path, tiny_model_dir)


def test_run_skips_what_is_up_to_date(run_config, tmp_path):
    first = invoke_run(run_config)
    assert stages_line(first) == "stages run: score, select, train, eval; up to date: none"
    assert "selected 40 of 80 eligible rows" in first
    assert "trained 3 steps on 40 rows" in first
    assert "trained loss / ppl" in first and "(macro)" in first
    # every input row is in the band x label table; the kept band is the selection, the labels are the marked rows
    assert "'mark' by selection band:" in first
    from pipelines.run import run_pipeline

    bands = run_pipeline(load_run_config(run_config), "select", "select", progress=False).band_labels
    assert bands["rows"].sum() == 80
    assert bands.filter(pl.col("label") == "labelled")["rows"].sum() == 8
    assert bands.filter(pl.col("band") == "kept")["rows"].sum() == 40
    evaluation = json.loads((tmp_path / "work" / "eval" / "eval.json").read_text())
    assert [m["name"] for m in evaluation["models"]] == ["base", "trained"]

    assert stages_line(invoke_run(run_config)) == "stages run: none; up to date: score, select, train, eval"

    # a new temperature: selection, training and evaluation rerun; scoring does not
    changed = invoke_run(run_config, "--set", "select.temperature=0.5")
    assert stages_line(changed) == "stages run: select, train, eval; up to date: score"
    summary = json.loads((tmp_path / "work" / "selected" / "summary.json").read_text())
    assert summary["parameters"]["temperature"] == 0.5
    manifest = json.loads((tmp_path / "work" / "model" / "train_manifest.json").read_text())
    assert manifest["steps"] == 3

    # a partial run: only selection, with another band
    partial = invoke_run(run_config, "--set", "select.temperature=0.5", "--set", "select.keep=0.25", "--from", "select",
                         "--until", "select")
    assert stages_line(partial) == "stages run: select; up to date: none"
    assert json.loads((tmp_path / "work" / "selected" / "summary.json").read_text())["bands"]["kept"] == 20


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=3", "unknown key 'max_step'"),
        ("select.output=x", r"\[select\] may not set output"),
        ("scoring.max_tokens=3", "unknown table 'scoring'"),
        ("select.keep=2", r"\[select\]: 'keep': Input should be less than or equal to 1"),
        ("nonsense", "expected TABLE.KEY=VALUE"),
    ],
)
def test_config_errors_name_the_key(run_config, override, message):
    with pytest.raises(HardfocusError, match=message):
        load_run_config(run_config, [override])
    result = runner.invoke(app, ["run", str(run_config), "--set", override])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_shipped_configs_are_valid():
    from pathlib import Path

    import pipelines

    configs = Path(pipelines.__file__).parent / "configs"
    shipped = sorted(p.name for p in configs.glob("*.toml"))
    assert shipped == ["cluster.toml", "demo-chat.toml", "demo.toml"]  # a new one is checked here too
    for name in shipped:
        cfg = load_run_config(configs / name)
        assert cfg.eval_config() is not None and cfg.train_config().max_steps > 0
    assert load_run_config(configs / "demo-chat.toml").score_config().format != "text"  # conversations


def test_a_stage_range_is_checked_before_anything_runs():
    from pipelines.run_config import check_stage_range

    assert check_stage_range("select", "train") == ["select", "train"]
    with pytest.raises(HardfocusError, match=r"unknown stage 'trian': one of score, select, train, eval"):
        check_stage_range("score", "trian")
    with pytest.raises(HardfocusError, match="--from eval comes after --until select"):
        check_stage_range("eval", "select")


def test_a_workdir_under_home_written_with_a_tilde_is_not_a_directory_named_tilde(tmp_path, monkeypatch):
    """`workdir = "~/work"` in a run config (TOML has no shell to expand it) becomes ./~/work under the current
    directory; the classic clean-up of that, `rm -rf ~`, deletes the user's home."""
    from pipelines.run_config import load_run_config

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text('[run]\nworkdir = "~/work"\ndata = ["corpus"]\nmodel = "m"\n')
    try:
        cfg = load_run_config(config)
    except HardfocusError as exc:  # refusing it, naming the key, is as good
        assert "workdir" in str(exc)
        return
    assert not cfg.score_config().output.startswith("~"), cfg.score_config().output


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


def test_a_cut_short_run_state_does_not_break_hardfocus_run(tmp_path, tiny_model_dir):
    """Before: a run_state.json cut short crashed every later `hardfocus run` (JSONDecodeError). Each stage now
    records its identity in its own output; a run_state.json of an older version is never read."""
    from tests.hardfocus_run import invoke_run, stages_line, write_run_config

    config = write_run_config(tmp_path, tiny_model_dir)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "run_state.json").write_text('{"score": "3f2a')
    assert stages_line(invoke_run(config, "--until", "select")) == "stages run: score, select; up to date: none"
    assert stages_line(invoke_run(config, "--until", "select")) == "stages run: none; up to date: score, select"
