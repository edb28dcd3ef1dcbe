"""Where shard tasks run: a Ray Data job (default), one Ray actor (a local Ray with one CPU actor), or in this
process. All yield one summary per unit and one per shard (see :mod:`scoring.units`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hardfocus.console import quiet_ray_data_console
from hardfocus.errors import HardfocusError
from hardfocus.models import is_local_spec
from hardfocus.ray_local import init_ray  # noqa: F401 - scoring.job starts Ray through here
from hardfocus.storage import absolute
from scoring.config import ScoreConfig
from scoring.units import ShardTask, UnitScorer, part_name, read_shard_task

log = logging.getLogger(__name__)

_TOKENIZE_MEMORY = 512 * 1024**2  # a unit's text and token ids, with room to spare
_MAX_INPUT_BLOCKS = 10_000  # beyond that, a block holds several shard tasks (read one after the other)
_ACTOR_RESTARTS = 3  # the one-actor job starts a new actor this many times after one dies (a kill, a lost node)


@dataclass(frozen=True)
class UnitWork:
    """What each executor runs: ``read`` (a shard task's row in, its unit records out) and ``scorer`` (built once per
    actor; a unit record in, its summaries out). The seam a benchmark of the orchestration alone fills with stand-ins
    (``benchmarks/scoring_units.py``); both must be importable by name where they run (Ray pickles them so)."""

    read: Callable = read_shard_task
    scorer: type = UnitScorer


WORK = UnitWork()


def run_local(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, fence=None, job: str = "",
              work: UnitWork = WORK) -> Iterator[dict]:
    """The same task and scorer functions as the Ray job, one after the other, in this process."""
    scorer = work.scorer(cfg, fingerprint, torch_threads=cfg.torch_threads or os.cpu_count(), compiled=compiled,
                         fence=fence, job=job)
    yield from _read_and_score([t.to_row() for t in tasks], work.read, scorer, cfg, fingerprint, job)


def _read_and_score(rows: list[dict], read: Callable, scorer, cfg: ScoreConfig, fingerprint: str, job: str
                    ) -> Iterator[dict]:
    for row in rows:
        for record in read(row, cfg, fingerprint, job):
            yield from scorer(record)


class ShardsScorer:
    """The actor of a local Ray with one scoring actor: it reads and tokenises the shards itself, then scores them.

    With one actor on one machine, Ray Data's separate read tasks buy no parallelism and cost the most on the
    smallest machines: their worker processes, Ray Data's coordinating actors and its executor thread in the
    driver took 3-4 s more of the whole command on a 2-core machine (the A/B in ``benchmarks/README.md``, "What the
    figures say").
    """

    def __init__(self, cfg: ScoreConfig, fingerprint: str, torch_threads: int, compiled: bool, fence, job: str,
                 work: UnitWork = WORK):
        self.cfg, self.fingerprint, self.job, self.read = cfg, fingerprint, job, work.read
        self.scorer = work.scorer(cfg, fingerprint, torch_threads, compiled=compiled, fence=fence, job=job)

    def score(self, rows: list[dict]) -> Iterator[dict]:  # a Ray streaming generator: each record leaves at once
        yield from _read_and_score(rows, self.read, self.scorer, self.cfg, self.fingerprint, self.job)


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def with_absolute_paths(cfg: ScoreConfig) -> ScoreConfig:
    """The config as Ray's workers get it: its local paths (the output, a model directory or GGUF file) absolute. A
    worker's working directory is the one its Ray was started in, not the driver's: a relative path there names
    another place, or nothing. (A chat template reaches them as its text: ``scoring.job.score`` reads the file.)"""
    update = {"output": absolute(cfg.output)}
    if is_local_spec(cfg.model):  # the alias stays the alias, a hub id a hub id
        update["model"] = absolute(cfg.model)
    return cfg.model_copy(update=update)


def run_ray(
    tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool, fence=None,
    job: str = "", work: UnitWork = WORK,
) -> Iterator[dict]:
    """Read+tokenise shards as CPU tasks, score with an actor pool (one model per actor), parts written by the actors;
    on a local Ray with one CPU actor, that actor reads its shards itself (:func:`_run_one_actor`)."""
    import ray

    quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.target_max_block_size
    ctx.enable_progress_bars = False  # hardfocus shows one progress bar instead
    # A task streams a whole shard: each unit it yields must leave as a block of its own, at once, so that
    # scoring starts on the first unit and a shard's tokens never pile up in one block.
    ctx.target_max_block_size = 1
    try:
        yield from _run_ray(tasks, with_absolute_paths(cfg), fingerprint, compiled, started_local, fence, job, work)
    finally:
        ctx.enable_progress_bars, ctx.target_max_block_size = saved


def _run_ray(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool, fence,
             job: str, work: UnitWork):
    import ray

    node_cpus = _largest_node_cpus()
    cpus = cfg.cpus_per_actor or (1.0 if cfg.gpus_per_actor else max(1.0, node_cpus - 1))
    if cfg.torch_threads:
        threads = cfg.torch_threads
    elif started_local and not cfg.gpus_per_actor:
        # tokenising is a small share of the work, so a local actor may use every core
        threads = max(1, (os.cpu_count() or 1) // cfg.actors)
    else:
        threads = max(1, math.ceil(cpus))
    one_actor = started_local and cfg.actors == 1 and not cfg.gpus_per_actor and not cfg.resources_per_actor
    log.info(
        "Ray: %d scoring actor(s) x %.3g CPU, %.3g GPU, %d torch threads%s%s",
        cfg.actors, cpus, cfg.gpus_per_actor, threads, ", torch.compile" if compiled else "",
        ", reading its shards itself" if one_actor else "",
    )
    if one_actor:
        yield from _run_one_actor(tasks, cfg, fingerprint, compiled, cpus, threads, fence, job, work)
        return
    ds = ray.data.from_items([t.to_row() for t in tasks], override_num_blocks=min(len(tasks), _MAX_INPUT_BLOCKS))
    # Tokenising runs as separate CPU tasks ahead of the model instead of inside the scoring actor
    # (which would stall a GPU): Ray Data fuses a task map into the next actor map only when their
    # resource requests are identical, and the memory request here makes them differ.
    ds = ds.flat_map(
        work.read, fn_kwargs={"cfg": cfg, "model_fingerprint": fingerprint, "job": job}, num_cpus=1,
        memory=_TOKENIZE_MEMORY
    )
    ds = ds.flat_map(  # a unit in; progress records while it is scored, then its summary
        work.scorer,
        fn_constructor_kwargs={"cfg": cfg, "model_fingerprint": fingerprint, "torch_threads": threads, "compiled": compiled,
                               "fence": fence, "job": job},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cpus,
        num_gpus=cfg.gpus_per_actor,
        resources=cfg.resources_per_actor or None,
    )
    yield from ds.iter_rows()


def _run_one_actor(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, cpus: float,
                   threads: int, fence, job: str, work: UnitWork) -> Iterator[dict]:
    """Score every task in one :class:`ShardsScorer` actor; if it dies, a new one finishes the unfinished shards.

    The retried tasks list the units whose summary already arrived as done, so their parts are reused, not scored
    again, and their summaries are not passed on twice (a unit whose part landed just before the kill, unseen,
    is scored again and its part replaced: one part per unit either way).
    """
    import ray

    actor_class = ray.remote(ShardsScorer).options(num_cpus=cpus, max_restarts=0, max_task_retries=0)
    pending = {t.to_row()["task"]: t for t in tasks}  # the driver's task key -> the task as it is to run now
    seen: dict[str, dict[int, str]] = {key: {} for key in pending}  # key -> unit start -> its part, summarised
    for attempt in range(_ACTOR_RESTARTS + 1):
        runs = {t.to_row()["task"]: key for key, t in pending.items()}
        actor = actor_class.remote(cfg, fingerprint, threads, compiled, fence, job, work)
        try:
            for ref in actor.score.remote([{"task": run} for run in runs]):
                summary = ray.get(ref)
                key = summary["task"] = runs[summary["task"]]
                if summary["kind"] in ("score", "reused"):
                    if summary["start"] in seen[key]:
                        continue
                    seen[key][summary["start"]] = part_name(pending[key].shard, summary["start"], summary["stop"])
                elif summary["kind"] == "end":
                    del pending[key]
                yield summary
            return
        except ray.exceptions.ActorDiedError as exc:
            if exc.actor_init_failed:
                raise  # a bug in its __init__ (a model it refuses arrives as an error record): it would fail again
            if attempt == _ACTOR_RESTARTS:
                raise HardfocusError(
                    f"the scoring actor died {attempt + 1} times (the last: {_first_line(exc)}); the parts it "
                    "finished are kept and the same command resumes. If the machine ran out of memory, lower "
                    "--token-budget or --rows-per-unit"
                ) from None
            log.warning("the scoring actor died (%s); a new one finishes %d shards", _first_line(exc), len(pending))
            pending = {key: _with_done(t, seen[key]) for key, t in pending.items()}
        finally:
            ray.kill(actor)


def _with_done(task: ShardTask, summarised: dict[int, str]) -> ShardTask:
    done = dict(zip(task.done, task.parts or (None,) * len(task.done))) | summarised
    starts = sorted(done)
    return ShardTask(task.shard, tuple(starts), tuple(done[s] for s in starts) if all(done.values()) else ())


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
