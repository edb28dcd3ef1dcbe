"""Config files are typed: a value of the wrong TOML type, or a key that should be a table and is not, is a one-line
error naming the key, in `hardfocus run` configs (with --set) and in a single stage's --config file alike."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import build_score_config, build_select_config
from pipelines.run_config import load_run_config
from scoring import HardfocusError

runner = CliRunner()


def _run_toml(tmp_path, text: str) -> str:
    """``text`` with its ``{run}`` replaced by a [run] table (top-level keys such as ``score = 5`` go before it)."""
    path = tmp_path / "run.toml"
    run = f'[run]\nworkdir = "{tmp_path / "work"}"\ndata = ["{tmp_path / "corpus"}"]\n'
    path.write_text(text.replace("{run}", run))
    return str(path)


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output  # a user error: a bug exits 1 with its traceback
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


RUN_CASES = [  # (the file, --set overrides, the error)
    ('{run}[score]\nmax_tokens = "64"\n', [], r"\[score\]: 'max_tokens': Input should be a valid integer, not a string \"64\""),
    ("{run}[score]\nmax_tokens = 64.0\n", [], r"\[score\]: 'max_tokens': Input should be a valid integer, not a float 64.0"),
    ('{run}[score]\nkeep_input_ids = "true"\n', [], r"'keep_input_ids': Input should be a valid boolean, not a string \"true\""),
    ('{run}[train]\nlearning_rate = "1e-3"\n', [], r"\[train\]: 'learning_rate': Input should be a valid number"),
    ("{run}", ['score.max_tokens="64"'], r"\[score\]: 'max_tokens': Input should be a valid integer, not a string"),
    ("score = 5\n{run}", ["score.max_tokens=3"],
     r"'score' must be a table \(\[score\] with its keys below it\), not an integer 5"),
    ("score = 5\n{run}", [], r"'score' must be a table"),
    ('eval = "x"\n{run}', [], r"'eval' must be a table"),
]


@pytest.mark.parametrize("text, overrides, message", RUN_CASES, ids=[
    "string for int", "float for int", "string for bool", "string for float", "--set string for int",
    "--set into a non-table", "non-table stage", "non-table eval",
])
def test_run_config_values_are_typed(tmp_path, text, overrides, message):
    path = _run_toml(tmp_path, text)
    with pytest.raises(HardfocusError, match=message):
        load_run_config(path, overrides)
    args = ["run", path, *(a for o in overrides for a in ("--set", o))]
    assert "error: " in _error_line(runner.invoke(app, args))


def test_a_run_table_that_is_not_a_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('run = "x"\n[score]\nmax_tokens = 64\n')
    with pytest.raises(HardfocusError, match=r"config file '.*run.toml': 'run' must be a table .*not a string \"x\""):
        load_run_config(path)
    assert "'run' must be a table" in _error_line(runner.invoke(app, ["run", str(path)]))


def test_values_of_the_right_type_still_load(tmp_path):
    """An integer where a float is expected is a float; tables and arrays of the right types load; --set too."""
    path = _run_toml(tmp_path, '{run}[score]\nmax_tokens = 64\nresources_per_actor = {scorer = 1}\n'
                                '[select]\ntemperature = 1\n[train]\nlearning_rate = 1\nmax_grad_norm = 0\n')
    cfg = load_run_config(path, ["select.keep=0.25", "train.max_steps=3", 'run.model="m"'])
    score, select, train = cfg.score_config(), cfg.select_config(), cfg.train_config()
    assert score.max_tokens == 64 and score.resources_per_actor == {"scorer": 1.0}
    assert select.temperature == 1.0 and isinstance(select.temperature, float) and select.keep == 0.25
    assert train.learning_rate == 1.0 and train.max_steps == 3 and train.model == "m"
    with pytest.raises(HardfocusError, match=r"'max_steps': Input should be a valid integer, not a float 3.5"):
        load_run_config(path, ["train.max_steps=3.5"])  # the same file, one --set of the wrong type


SCORE_CASES = [  # (the file, the error): `hardfocus score --config`
    ('[score]\ninputs = ["a.jsonl"]\noutput = "o"\nmax_tokens = "64"\n',
     r"config file '.*c.toml' \[score\] with flags: 'max_tokens': Input should be a valid integer, not a string \"64\""),
    ('[score]\ninputs = ["a.jsonl"]\noutput = "o"\nactors = 2.0\n', r"'actors': Input should be a valid integer, not a float"),
    ('[score]\ninputs = ["a.jsonl"]\noutput = "o"\noverwrite = 1\n',
     r"'overwrite': Input should be a valid boolean, not an integer 1"),
    ("score = 5\n", r"config file '.*c.toml': 'score' must be a table \(\[score\] with its keys below it\), not an integer 5"),
    ('run = "x"\n[score]\ninputs = ["a.jsonl"]\noutput = "o"\n', r"'run' must be a table"),
]


@pytest.mark.parametrize("toml, message", SCORE_CASES, ids=[
    "string for int", "float for int", "int for bool", "non-table stage", "non-table run",
])
def test_a_stage_config_file_is_typed(tmp_path, toml, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(toml)
    with pytest.raises(HardfocusError, match=message):
        build_score_config(cfg_file, {})
    line = _error_line(runner.invoke(app, ["score", "--config", str(cfg_file)]))
    assert line.startswith("error: config file") and line.removeprefix("error: ") == _message(cfg_file)


def _message(cfg_file) -> str:
    with pytest.raises(HardfocusError) as raised:
        build_score_config(cfg_file, {})
    return str(raised.value)


def test_flags_typed_by_the_cli_are_not_affected(tmp_path):
    """Flags on top of a typed file: typer's ints, floats, booleans and lists pass the strict check."""
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[select]\nscores = ["s"]\noutput = "o"\ntemperature = 2\nper_group = true\n')
    cfg = build_select_config(cfg_file, {"keep": 0.3, "per_group": False, "scores": ["a", "b"], "max_weight": 4.0})
    assert (cfg.temperature, cfg.keep, cfg.per_group, cfg.scores, cfg.max_weight) == (2.0, 0.3, False, ["a", "b"], 4.0)
    cfg_file.write_text('[select]\nscores = ["s"]\noutput = "o"\nper_group = "yes"\n')
    with pytest.raises(HardfocusError, match=r"'per_group': Input should be a valid boolean, not a string \"yes\""):
        build_select_config(cfg_file, {})
