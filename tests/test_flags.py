"""The CLI's flags come from the config models: a field added to a model gets its flag with nothing else edited."""

from __future__ import annotations

import typing
from typing import Literal

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from pipelines.cli import CLI_NAMES, app
from pipelines.evaluation.config import EvalConfig
from pipelines.flags import config_command
from scoring import ScoreConfig
from selection import SelectConfig
from training import TrainConfig

runner = CliRunner()
COMMANDS = {"score": ScoreConfig, "select": SelectConfig, "train": TrainConfig, "eval": EvalConfig}


class ExtendedScoreConfig(ScoreConfig):
    """ScoreConfig with fields of the kinds a later change adds: a switch, a choice, an optional path, a table."""

    ifd_like: bool = Field(False, description="a new switch")
    score_kind: Literal["loss", "ifd", "both"] = Field("loss", description="a new choice")
    reference_model: str | None = Field(None, description="a new optional model")
    weights_by_group: dict[str, float] = Field(default_factory=dict, description="a new table")
    layers: list[int] = Field(default_factory=list, description="a new repeated number")


def capturing_app(model, table: str, positional: str | None = None) -> tuple[typer.Typer, list]:
    """A one-command app built like the real ones, handing back the config it was called with."""
    built, captured = typer.Typer(rich_markup_mode=None), []

    @built.command()
    @config_command(model, table, positional=positional, names=CLI_NAMES)
    def command(cfg) -> None:
        captured.append(cfg)

    return built, captured


def test_a_field_added_to_a_model_gets_its_flag(tmp_path):
    built, captured = capturing_app(ExtendedScoreConfig, "score", positional="inputs")
    args = ["a.jsonl", "b.jsonl", "-o", "out", "--ifd-like", "--score-kind", "both", "--reference-model", "ref",
            "--weights-by-group", "{code = 2.5, prose = 1}", "--layers", "3", "--layers", "7", "--max-tokens", "64"]
    result = runner.invoke(built, args)
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert isinstance(cfg, ExtendedScoreConfig)
    assert (cfg.inputs, cfg.output, cfg.ifd_like, cfg.score_kind, cfg.reference_model) == (
        ["a.jsonl", "b.jsonl"], "out", True, "both", "ref")
    assert cfg.weights_by_group == {"code": 2.5, "prose": 1.0} and cfg.layers == [3, 7] and cfg.max_tokens == 64

    help_text = " ".join(runner.invoke(built, ["--help"], terminal_width=200).output.split())
    assert "--ifd-like / --no-ifd-like a new switch [default: False]" in help_text
    assert "--score-kind <loss|ifd|both> a new choice [default: loss]" in help_text
    bad = runner.invoke(built, ["a", "-o", "o", "--score-kind", "ifdd"])
    assert bad.exit_code == 2 and "'ifdd' is not one of 'loss', 'ifd', 'both'" in bad.output
    bad_table = runner.invoke(built, ["a", "-o", "o", "--weights-by-group", "{code ="])
    assert bad_table.exit_code == 2 and "is not a TOML value" in bad_table.output


def test_flags_override_the_toml_table_only_when_given(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[train]\ndata = ["sel"]\noutput = "m"\neval_data = ["h"]\noverwrite = true\nmax_steps = 7\n'
                        'weighting = "online"\n')
    built, captured = capturing_app(TrainConfig, "train", positional="data")
    assert runner.invoke(built, ["-c", str(cfg_file)]).exit_code == 0
    cfg = captured[-1]  # nothing given: the file's values, then the model's defaults
    assert (cfg.data, cfg.eval_data, cfg.overwrite, cfg.max_steps, cfg.weighting) == (["sel"], ["h"], True, 7, "online")
    assert cfg.batch_size == TrainConfig.model_fields["batch_size"].default
    result = runner.invoke(built, ["other", "-c", str(cfg_file), "--no-overwrite", "--eval-data", "x", "--eval-data", "y",
                                   "--weighting", "none"])
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert (cfg.data, cfg.eval_data, cfg.overwrite, cfg.max_steps, cfg.weighting) == (["other"], ["x", "y"], False, 7, "none")


@pytest.mark.parametrize("args, field, value", [
    (["--no-special-tokens"], "add_special_tokens", False),
    (["--add-special-tokens"], "add_special_tokens", True),
    (["--no-input-ids"], "keep_input_ids", False),
    (["--overwrite"], "overwrite", True),
])
def test_kept_spellings_of_score_switches(args, field, value):
    built, captured = capturing_app(ScoreConfig, "score", positional="inputs")
    result = runner.invoke(built, ["in", "-o", "out", *args])
    assert result.exit_code == 0, result.output
    assert getattr(captured[-1], field) is value


def test_per_group_and_global():
    built, captured = capturing_app(SelectConfig, "select", positional="scores")
    for flag, value in (("--per-group", True), ("--global", False)):
        assert runner.invoke(built, ["s", "-o", "o", flag]).exit_code == 0
        assert captured[-1].per_group is value


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_config_field_of_every_stage_is_a_flag_or_argument(command):
    click_app = typer.main.get_command(app)
    params = {p.name for p in click_app.commands[command].params}
    assert set(COMMANDS[command].model_fields) | {"config"} == params


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_choices_and_no_placeholder_defaults(command):
    help_text = " ".join(runner.invoke(app, [command, "--help"], terminal_width=200).output.split())
    for name, field in COMMANDS[command].model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is Literal:  # independent of the builder: straight from the annotation
            assert f"<{'|'.join(typing.get_args(annotation))}>" in help_text, name
    for placeholder in ("[default: required]", "PydanticUndefined", "[default: None]"):
        assert placeholder not in help_text
    assert "[required]" in help_text  # every stage has a required output


def test_run_stage_range_lists_its_choices():
    help_text = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    assert help_text.count("<score|select|train|eval>") == 2
    bad = runner.invoke(app, ["run", "x.toml", "--from", "trian"])
    assert bad.exit_code == 2 and "'trian' is not one of" in bad.output


def test_top_level_help_shows_each_summary_whole():
    commands = runner.invoke(app, ["--help"], terminal_width=100).output.split("Commands:")[1]
    help_text = " ".join(commands.split())
    assert "..." not in help_text
    for info in app.registered_commands:
        summary = " ".join(info.callback.__doc__.split("\n\n")[0].split())
        assert summary in help_text, info.name


def test_train_help_lists_the_batching_and_buffer_flags_and_refuses_another_batching():
    """Found by a review: ``train --help`` lists --batching and --shuffle-buffer; a batching not offered exits 2."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert shown.exit_code == 0 and "--batching" in shown.output and "--shuffle-buffer" in shown.output
    refused = runner.invoke(app, ["train", "sel", "-o", "out", "--batching", "padded"])
    assert refused.exit_code == 2
