"""The ``hardfocus`` command line. It only parses arguments and calls the stage libraries."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.config import build_score_config, build_select_config
from pipelines.demo_corpus import build_demo_corpus
from scoring import HardfocusError, score
from scoring.job import summary_line
from selection import build_report, select
from selection.job import summary_text

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


def _show_progress() -> bool:
    return logging.getLogger().level <= logging.INFO


@app.command("score")
@user_errors
def score_command(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="shard files, directories or globs (Parquet, JSONL[.gz|.zst]; local or fsspec URLs)", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="scores/ directory to write")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [score] table sets defaults for every flag")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="column holding the text  [default: text]")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="unique id column  [default: '<shard>#<row>']")] = None,
    group_column: Annotated[Optional[str], typer.Option(help="domain/source column carried into the scores")] = None,
    model: Annotated[Optional[str], typer.Option(help="hub id, checkpoint dir, .gguf file or 'smollm2-135m'  [default: smollm2-135m]")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto | bfloat16 | float32 | float16  [default: auto = bf16 where native]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda[:N]  [default: auto]")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="longer documents are truncated and flagged  [default: 1024]")] = None,
    add_special_tokens: Annotated[Optional[bool], typer.Option("--add-special-tokens/--no-special-tokens", help="let the tokenizer add BOS/EOS  [default: add]")] = None,
    token_budget: Annotated[Optional[int], typer.Option(help="padded tokens per forward micro-batch  [default: 16384]")] = None,
    chunk_tokens: Annotated[Optional[int], typer.Option(help="positions per logits chunk  [default: 256]")] = None,
    compile: Annotated[Optional[str], typer.Option(help="torch.compile the model: auto | on | off  [default: auto = on from 8 MiB of input per actor]")] = None,
    rows_per_unit: Annotated[Optional[int], typer.Option(help="rows per resumable unit / part file  [default: 2000]")] = None,
    keep_input_ids: Annotated[Optional[bool], typer.Option("--keep-input-ids/--no-input-ids", help="store input_ids for training  [default: keep]")] = None,
    executor: Annotated[Optional[str], typer.Option(help="ray | local  [default: ray]")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address  [default: $RAY_ADDRESS, else local Ray]")] = None,
    actors: Annotated[Optional[int], typer.Option(help="scoring actors, one model each  [default: 1]")] = None,
    cpus_per_actor: Annotated[Optional[float], typer.Option(help="[default: 1 with GPUs, else all CPUs of a node but one]")] = None,
    gpus_per_actor: Annotated[Optional[float], typer.Option(help="[default: 0]")] = None,
    torch_threads: Annotated[Optional[int], typer.Option(help="[default: the actor's CPUs; all cores on local Ray]")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="replace scores of another configuration in --output")] = None,
) -> None:
    """Run the base model over the shards and write one row per input row: loss, tokens, status."""
    overrides = {k: v for k, v in locals().items() if k != "config"}
    cfg = build_score_config(config, overrides)
    result = score(cfg, progress=_show_progress())
    typer.echo(summary_line(result.manifest, result.output))


@app.command("select")
@user_errors
def select_command(
    scores: Annotated[Optional[list[str]], typer.Argument(help="scores/ directories written by `hardfocus score`", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="selected/ directory to write")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file; its [select] table sets defaults for every flag")] = None,
    drop_top: Annotated[Optional[float], typer.Option(help="fraction of highest-loss samples dropped as noise  [default: 0.1]")] = None,
    keep: Annotated[Optional[float], typer.Option(help="fraction kept after the dropped band  [default: 0.5]")] = None,
    per_group: Annotated[Optional[bool], typer.Option("--per-group/--global", help="rank and weight within each group  [default: global]")] = None,
    weighting: Annotated[Optional[str], typer.Option(help="irdro | none  [default: irdro]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="IR-DRO temperature r  [default: 1.0]")] = None,
    max_weight: Annotated[Optional[float], typer.Option(help="clip weights here, renormalising to mean 1  [default: none]")] = None,
    report: Annotated[Optional[bool], typer.Option("--report/--no-report", help="write report.html  [default: write]")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="replace an existing --output")] = None,
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


@app.command("demo-corpus")
@user_errors
def demo_corpus_command(
    out_dir: Annotated[Path, typer.Argument(help="directory to write <group>.jsonl files into")],
    docs_per_group: Annotated[int, typer.Option(help="documents per group")] = 150,
    max_chars: Annotated[int, typer.Option(help="longest document, in characters")] = 4000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build a small real corpus (license texts, Debian copyright files, Python sources and docstrings)."""
    counts = build_demo_corpus(out_dir, docs_per_group, max_chars, seed)
    if not counts:
        raise HardfocusError("no demo source text was found on this machine")
    typer.echo(f"{sum(counts.values())} documents in {len(counts)} groups: {out_dir}")


def run() -> None:  # pragma: no cover - console-script shim for `python -m pipelines.cli`
    app(prog_name="hardfocus")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
