"""The ``hardfocus`` command line. It only parses arguments and calls the stage libraries."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.config import build_eval_config, build_score_config, build_select_config, build_train_config
from pipelines.demo_corpus import CorpusKind, build_demo_corpus
from pipelines.evaluate import EVAL_FILE, evaluate
from pipelines.labels import format_band_labels
from pipelines.run import check_stage_range, run_pipeline
from pipelines.run_config import STAGES, load_run_config
from pipelines.submit import submit
from pipelines.train import run_train
from scoring import HardfocusError, ScoreConfig, score
from scoring.job import scores_summary_line
from selection import SelectConfig, build_report, select
from selection.job import summary_text
from training import TrainConfig
from training.config import EvalConfig
from training.evaluate import comparison_table
from training.job import train_summary_line

app = typer.Typer(
    help="Hard-sample selection and IR-DRO reweighting for light continual training of LLMs (arXiv 2402.14270).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
log = logging.getLogger("hardfocus")


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


def flag(model: type, name: str, *decls: str):
    """A typer option whose help is the config field's description and default: one source for both."""
    field = model.model_fields[name]
    default = "required" if field.is_required() else field.default
    suffix = "" if default is None else f"  [default: {default}]"  # a None default is explained in the description
    return typer.Option(*decls, help=f"{field.description or ''}{suffix}".strip())


def _show_progress() -> bool:
    return logging.getLogger().level <= logging.INFO


@app.command("score")
@user_errors
def score_command(
    inputs: Annotated[Optional[list[str]], typer.Argument(help=ScoreConfig.model_fields["inputs"].description, show_default=False)] = None,
    output: Annotated[Optional[str], flag(ScoreConfig, "output", "--output", "-o")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [score] table sets defaults for every flag")] = None,
    format: Annotated[Optional[str], flag(ScoreConfig, "format")] = None,
    text_column: Annotated[Optional[str], flag(ScoreConfig, "text_column")] = None,
    prompt_column: Annotated[Optional[str], flag(ScoreConfig, "prompt_column")] = None,
    response_column: Annotated[Optional[str], flag(ScoreConfig, "response_column")] = None,
    system_column: Annotated[Optional[str], flag(ScoreConfig, "system_column")] = None,
    messages_column: Annotated[Optional[str], flag(ScoreConfig, "messages_column")] = None,
    chat_template: Annotated[Optional[str], flag(ScoreConfig, "chat_template")] = None,
    id_column: Annotated[Optional[str], flag(ScoreConfig, "id_column")] = None,
    group_column: Annotated[Optional[str], flag(ScoreConfig, "group_column")] = None,
    model: Annotated[Optional[str], flag(ScoreConfig, "model")] = None,
    dtype: Annotated[Optional[str], flag(ScoreConfig, "dtype")] = None,
    device: Annotated[Optional[str], flag(ScoreConfig, "device")] = None,
    max_tokens: Annotated[Optional[int], flag(ScoreConfig, "max_tokens")] = None,
    add_special_tokens: Annotated[Optional[bool], flag(ScoreConfig, "add_special_tokens", "--add-special-tokens/--no-special-tokens")] = None,
    token_budget: Annotated[Optional[int], flag(ScoreConfig, "token_budget")] = None,
    chunk_tokens: Annotated[Optional[int], flag(ScoreConfig, "chunk_tokens")] = None,
    compile: Annotated[Optional[str], flag(ScoreConfig, "compile")] = None,
    rows_per_unit: Annotated[Optional[int], flag(ScoreConfig, "rows_per_unit")] = None,
    keep_input_ids: Annotated[Optional[bool], flag(ScoreConfig, "keep_input_ids", "--keep-input-ids/--no-input-ids")] = None,
    on_error: Annotated[Optional[str], flag(ScoreConfig, "on_error")] = None,
    executor: Annotated[Optional[str], flag(ScoreConfig, "executor")] = None,
    ray_address: Annotated[Optional[str], flag(ScoreConfig, "ray_address")] = None,
    actors: Annotated[Optional[int], flag(ScoreConfig, "actors")] = None,
    cpus_per_actor: Annotated[Optional[float], flag(ScoreConfig, "cpus_per_actor")] = None,
    gpus_per_actor: Annotated[Optional[float], flag(ScoreConfig, "gpus_per_actor")] = None,
    torch_threads: Annotated[Optional[int], flag(ScoreConfig, "torch_threads")] = None,
    overwrite: Annotated[Optional[bool], flag(ScoreConfig, "overwrite", "--overwrite")] = None,
) -> None:
    """Run the base model over the shards and write one row per input row: loss, tokens, status."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    cfg = build_score_config(config, overrides)
    result = score(cfg, progress=_show_progress())
    typer.echo(scores_summary_line(result))


@app.command("select")
@user_errors
def select_command(
    scores: Annotated[Optional[list[str]], typer.Argument(help=SelectConfig.model_fields["scores"].description, show_default=False)] = None,
    output: Annotated[Optional[str], flag(SelectConfig, "output", "--output", "-o")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [select] table sets defaults for every flag")] = None,
    drop_top: Annotated[Optional[float], flag(SelectConfig, "drop_top")] = None,
    keep: Annotated[Optional[float], flag(SelectConfig, "keep")] = None,
    per_group: Annotated[Optional[bool], flag(SelectConfig, "per_group", "--per-group/--global")] = None,
    weighting: Annotated[Optional[str], flag(SelectConfig, "weighting")] = None,
    temperature: Annotated[Optional[float], flag(SelectConfig, "temperature")] = None,
    max_weight: Annotated[Optional[float], flag(SelectConfig, "max_weight")] = None,
    report: Annotated[Optional[bool], flag(SelectConfig, "report", "--report/--no-report")] = None,
    overwrite: Annotated[Optional[bool], flag(SelectConfig, "overwrite", "--overwrite")] = None,
) -> None:
    """Keep the moderately-high-loss band (drop the highest-loss noise) and compute IR-DRO weights."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    cfg = build_select_config(config, overrides)
    result = select(cfg, progress=_show_progress())
    typer.echo(summary_text(result.summary, result.output))


@app.command("report")
@user_errors
def report_command(
    scores: Annotated[str, typer.Argument(help="a scores/ directory")],
    selected: Annotated[Optional[str], typer.Argument(help="a selected/ directory made from it: adds bands and weights")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="where to write report.html  [default: the selected/, else the scores/ directory]")] = None,
) -> None:
    """Plot the loss distribution of a scores/ directory (and the bands and weights of a selection)."""
    typer.echo(build_report([scores], selected, output))


@app.command("train")
@user_errors
def train_command(
    data: Annotated[Optional[list[str]], typer.Argument(help=TrainConfig.model_fields["data"].description, show_default=False)] = None,
    output: Annotated[Optional[str], flag(TrainConfig, "output", "--output", "-o")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [train] table sets defaults for every flag")] = None,
    model: Annotated[Optional[str], flag(TrainConfig, "model")] = None,
    weighting: Annotated[Optional[str], flag(TrainConfig, "weighting")] = None,
    online_method: Annotated[Optional[str], flag(TrainConfig, "online_method")] = None,
    temperature: Annotated[Optional[float], flag(TrainConfig, "temperature")] = None,
    online_window: Annotated[Optional[int], flag(TrainConfig, "online_window")] = None,
    online_drop_top: Annotated[Optional[float], flag(TrainConfig, "online_drop_top")] = None,
    max_steps: Annotated[Optional[int], flag(TrainConfig, "max_steps")] = None,
    batch_size: Annotated[Optional[int], flag(TrainConfig, "batch_size")] = None,
    gradient_accumulation_steps: Annotated[Optional[int], flag(TrainConfig, "gradient_accumulation_steps")] = None,
    max_seq_len: Annotated[Optional[int], flag(TrainConfig, "max_seq_len")] = None,
    optim: Annotated[Optional[str], flag(TrainConfig, "optim")] = None,
    learning_rate: Annotated[Optional[float], flag(TrainConfig, "learning_rate")] = None,
    lr_scheduler: Annotated[Optional[str], flag(TrainConfig, "lr_scheduler")] = None,
    warmup_ratio: Annotated[Optional[float], flag(TrainConfig, "warmup_ratio")] = None,
    weight_decay: Annotated[Optional[float], flag(TrainConfig, "weight_decay")] = None,
    max_grad_norm: Annotated[Optional[float], flag(TrainConfig, "max_grad_norm")] = None,
    seed: Annotated[Optional[int], flag(TrainConfig, "seed")] = None,
    precision: Annotated[Optional[str], flag(TrainConfig, "precision")] = None,
    logging_steps: Annotated[Optional[int], flag(TrainConfig, "logging_steps")] = None,
    save_steps: Annotated[Optional[int], flag(TrainConfig, "save_steps")] = None,
    save_total_limit: Annotated[Optional[int], flag(TrainConfig, "save_total_limit")] = None,
    eval_data: Annotated[Optional[list[str]], flag(TrainConfig, "eval_data")] = None,
    eval_steps: Annotated[Optional[int], flag(TrainConfig, "eval_steps")] = None,
    resume: Annotated[Optional[str], flag(TrainConfig, "resume")] = None,
    overwrite: Annotated[Optional[bool], flag(TrainConfig, "overwrite", "--overwrite")] = None,
    ray_workers: Annotated[Optional[int], flag(TrainConfig, "ray_workers")] = None,
    cpus_per_worker: Annotated[Optional[float], flag(TrainConfig, "cpus_per_worker")] = None,
    use_gpu: Annotated[Optional[bool], flag(TrainConfig, "use_gpu", "--use-gpu")] = None,
    ray_address: Annotated[Optional[str], flag(TrainConfig, "ray_address")] = None,
    format: Annotated[Optional[str], flag(TrainConfig, "format")] = None,
    text_column: Annotated[Optional[str], flag(TrainConfig, "text_column")] = None,
    prompt_column: Annotated[Optional[str], flag(TrainConfig, "prompt_column")] = None,
    response_column: Annotated[Optional[str], flag(TrainConfig, "response_column")] = None,
    system_column: Annotated[Optional[str], flag(TrainConfig, "system_column")] = None,
    messages_column: Annotated[Optional[str], flag(TrainConfig, "messages_column")] = None,
    chat_template: Annotated[Optional[str], flag(TrainConfig, "chat_template")] = None,
    group_column: Annotated[Optional[str], flag(TrainConfig, "group_column")] = None,
) -> None:
    """Continual training on selected/ shards with static and/or online IR-DRO weights (HF Trainer, or Ray Train)."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    cfg = build_train_config(config, overrides)
    result = run_train(cfg, progress=_show_progress())
    typer.echo(train_summary_line(result))


@app.command("eval")
@user_errors
def eval_command(
    model: Annotated[Optional[list[str]], flag(EvalConfig, "models", "--model", "-m")] = None,
    data: Annotated[Optional[list[str]], flag(EvalConfig, "data", "--data", "-d")] = None,
    output: Annotated[Optional[str], flag(EvalConfig, "output", "--output", "-o")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [eval] table sets defaults for every flag")] = None,
    format: Annotated[Optional[str], flag(EvalConfig, "format")] = None,
    text_column: Annotated[Optional[str], flag(EvalConfig, "text_column")] = None,
    prompt_column: Annotated[Optional[str], flag(EvalConfig, "prompt_column")] = None,
    response_column: Annotated[Optional[str], flag(EvalConfig, "response_column")] = None,
    system_column: Annotated[Optional[str], flag(EvalConfig, "system_column")] = None,
    messages_column: Annotated[Optional[str], flag(EvalConfig, "messages_column")] = None,
    chat_template: Annotated[Optional[str], flag(EvalConfig, "chat_template")] = None,
    group_column: Annotated[Optional[str], flag(EvalConfig, "group_column")] = None,
    max_tokens: Annotated[Optional[int], flag(EvalConfig, "max_tokens")] = None,
    dtype: Annotated[Optional[str], flag(EvalConfig, "dtype")] = None,
    executor: Annotated[Optional[str], flag(EvalConfig, "executor")] = None,
) -> None:
    """Held-out loss and perplexity per group, several models side by side (e.g. base vs trained)."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "model")} | {"models": model}
    cfg = build_eval_config(config, overrides)
    results = evaluate(cfg, progress=_show_progress())
    typer.echo(comparison_table(results))
    typer.echo(f"held-out evaluation: {Path(cfg.output) / EVAL_FILE}")


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path, typer.Argument(help="TOML with [run] (workdir, data, heldout, model) and [score] [select] [train] [eval]")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override one key: TABLE.KEY=VALUE (repeatable)")] = None,
    from_: Annotated[str, typer.Option("--from", help=f"first stage to run: {', '.join(STAGES)}")] = "score",
    until: Annotated[str, typer.Option("--until", help="last stage to run")] = "eval",
) -> None:
    """score -> select -> train -> eval from one config; stages whose inputs and parameters are unchanged are skipped."""
    check_stage_range(from_, until)  # before loading anything
    cfg = load_run_config(config, set_ or [])
    result = run_pipeline(cfg, from_, until, progress=_show_progress())
    typer.echo(f"stages run: {', '.join(result.ran) or 'none'}; up to date: {', '.join(result.skipped) or 'none'}")
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
