"""The ``hardfocus`` command line. It only parses arguments and calls the stage libraries."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
import typer.core

from exporting.config import ExportConfig
from hardfocus.errors import HardfocusError
from pipelines.demo_corpus import CorpusKind
from pipelines.evaluation.config import EvalConfig
from pipelines.flags import config_command
from pipelines.run_config import STAGES, check_stage_range, load_run_config
from scoring.config import ScoreConfig
from selection.config import SelectConfig
from training.config import TrainConfig

# The stage libraries (torch, transformers, Ray, the Trainer: ~7 s of imports on 2 cores) are imported inside
# the command that runs them, so `--help`, a refused flag and `submit` answer in about a second.


class FullSummaries(typer.core.TyperGroup):
    """``hardfocus --help`` lists each command with its whole first paragraph, wrapped, not cut at 45 characters."""

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or " ".join((command.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    cls=FullSummaries,
    help="Hard-sample selection and IR-DRO reweighting for light continual training of LLMs (arXiv 2402.14270).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
log = logging.getLogger("hardfocus")
Stage = Literal[tuple(STAGES)]  # typer lists the choices in the help and refuses others
# option spellings other than --field-name; every other flag comes from its config field (pipelines/flags.py)
CLI_NAMES = {
    "output": ("--output", "-o"),
    "add_special_tokens": ("--add-special-tokens/--no-special-tokens",),
    "keep_input_ids": ("--keep-input-ids/--no-input-ids",),
    "per_group": ("--per-group/--global",),
}


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings and errors only, no progress bar")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def user_errors(fn):
    """Print a HardfocusError as one line and exit 2; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HardfocusError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _show_progress() -> bool:
    return logging.getLogger().level <= logging.INFO


@app.command("score")
@user_errors
@config_command(ScoreConfig, "score", positional="inputs", names=CLI_NAMES)
def score_command(cfg: ScoreConfig) -> None:
    """Run the base model over the shards and write one row per input row: loss, tokens, status."""
    from scoring.job import score, scores_summary_line

    result = score(cfg, progress=_show_progress())
    typer.echo(scores_summary_line(result))


@app.command("select")
@user_errors
@config_command(SelectConfig, "select", positional="scores", names=CLI_NAMES)
def select_command(cfg: SelectConfig) -> None:
    """Keep the moderately-high-loss band (drop the highest-loss noise) and compute IR-DRO weights."""
    from selection.job import select, summary_text

    result = select(cfg, progress=_show_progress())
    typer.echo(summary_text(result.summary, result.output))
    if result.skipped:
        typer.echo(f"{result.output}: this selection of these scores is already complete; nothing to do")


@app.command("report")
@user_errors
def report_command(
    scores: Annotated[str, typer.Argument(help="a scores/ directory")],
    selected: Annotated[Optional[str], typer.Argument(help="a selected/ directory made from it: adds bands and weights")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="where to write report.html  [default: the selected/, else the scores/ directory]")] = None,
) -> None:
    """Plot the loss distribution of a scores/ directory (and the bands and weights of a selection)."""
    from selection.job import build_report

    typer.echo(build_report([scores], selected, output))


@app.command("train")
@user_errors
@config_command(TrainConfig, "train", positional="data", names=CLI_NAMES)
def train_command(cfg: TrainConfig) -> None:
    """Continual training on selected/ shards with static and/or online IR-DRO weights (HF Trainer, or Ray Train)."""
    from training import train
    from training.output import train_summary_line

    result = train(cfg, progress=_show_progress())
    typer.echo(train_summary_line(result))


@app.command("eval")
@user_errors
@config_command(EvalConfig, "eval", names=CLI_NAMES | {"models": ("--model", "-m"), "data": ("--data", "-d")})
def eval_command(cfg: EvalConfig) -> None:
    """Held-out loss and perplexity per group, several models side by side (e.g. base vs trained)."""
    from pipelines.evaluation import EVAL_FILE, comparison_table, evaluate

    results = evaluate(cfg, progress=_show_progress())
    typer.echo(comparison_table(results.models))
    typer.echo(f"held-out evaluation: {Path(cfg.output) / EVAL_FILE}")


@app.command("export")
@user_errors
@config_command(ExportConfig, "export", positional="selected", names=CLI_NAMES)
def export_command(cfg: ExportConfig) -> None:
    """Write the rows of a band (kept by default) with every source column and their weight, for another trainer."""
    from exporting.job import export, export_summary_line

    typer.echo(export_summary_line(export(cfg, progress=_show_progress())))


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path, typer.Argument(help="TOML with [run] (workdir, data, heldout, model) and [score] [select] [train] [eval]")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override one key: TABLE.KEY=VALUE (repeatable)")] = None,
    from_: Annotated[Stage, typer.Option("--from", help="first stage to run")] = "score",
    until: Annotated[Stage, typer.Option("--until", help="last stage to run")] = "eval",
) -> None:
    """score -> select -> train -> eval from one config; stages whose inputs and parameters are unchanged are skipped."""
    check_stage_range(from_, until)  # before loading anything
    cfg = load_run_config(config, set_ or [])
    from hardfocus.durations import duration
    from pipelines.evaluation import comparison_table
    from pipelines.labels import format_band_labels
    from pipelines.run import run_pipeline
    from selection.job import summary_text
    from training.output import train_summary_line

    result = run_pipeline(cfg, from_, until, progress=_show_progress())
    ran = [f"{name} ({duration(result.seconds[name])})" if name in result.seconds else name for name in result.ran]
    typer.echo(f"stages run: {', '.join(ran) or 'none'}; up to date: {', '.join(result.skipped) or 'none'}")
    wd = cfg.workdir
    typer.echo(f"outputs: scores {wd / 'scores'} | selected {wd / 'selected'} (report.html) | model {wd / 'model'} | eval {wd / 'eval'}")
    if result.selection is not None:
        typer.echo(summary_text(result.selection, str(wd / "selected")))
    if result.band_labels is not None:
        typer.echo(format_band_labels(result.band_labels, cfg.run.label_column))
    if result.training is not None:
        typer.echo(train_summary_line(result.training))
    if result.evaluation:
        typer.echo("held-out loss / perplexity per group, base model vs trained:")
        typer.echo(comparison_table(result.evaluation))


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def submit_command(
    ctx: typer.Context,
    address: Annotated[str, typer.Option("--address", help="the Ray dashboard, e.g. http://head-node:8265 (default: $RAY_ADDRESS)",
                                         envvar="RAY_ADDRESS")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="stream the job's log and return its exit status")] = True,
) -> None:
    """Run a stage or `run` on a Ray cluster as a Ray job: `hardfocus submit --address URL run cluster.toml`."""
    from pipelines.submit import submit

    code = submit(address, list(ctx.args), wait=wait, echo=typer.echo)
    raise typer.Exit(code)


@app.command("demo-corpus")
@user_errors
def demo_corpus_command(
    out_dir: Annotated[Path, typer.Argument(help="directory to write train/ and heldout/ <group>.jsonl files into")],
    kind: Annotated[CorpusKind, typer.Option(help="text: documents ('text'); chat: human conversations ('messages')")] = CorpusKind.TEXT,
    docs_per_group: Annotated[int, typer.Option(help="documents (chat: conversations) per group (training + held-out)")] = 150,
    max_chars: Annotated[int, typer.Option(help="longest document, in characters (text only)")] = 4000,
    max_turns: Annotated[int, typer.Option(help="most messages kept per conversation (chat only)")] = 12,
    heldout_frac: Annotated[float, typer.Option(help="share of each group held out, by source file (chat: by conversation)")] = 0.2,
    noise_frac: Annotated[float, typer.Option(help="share of injected noise in the training split (marked in 'noise')")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build a real corpus with a held-out split: text (license texts, Debian copyright files, Python sources and
    docstrings) or chat (the Chit Chat Challenge's human conversations, grouped by starter topic)."""
    from pipelines.demo_corpus import build_demo_corpus

    counts = build_demo_corpus(out_dir, docs_per_group, max_chars, seed, heldout_frac, noise_frac, kind, max_turns)
    if not counts["train"]:
        raise HardfocusError("no demo source text was found on this machine")
    unit = "conversations" if kind is CorpusKind.CHAT else "documents"
    typer.echo(
        f"{sum(counts['train'].values())} training {unit} ({sum(counts['noise'].values())} injected noise) and "
        f"{sum(counts['heldout'].values())} held-out {unit} in {len(counts['train'])} groups: {out_dir}"
    )


def run() -> None:  # pragma: no cover - console-script shim for `python -m pipelines.cli`
    app(prog_name="hardfocus")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
