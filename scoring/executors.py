"""Where shard tasks run: a Ray Data job (default) or in this process. Both yield one summary per unit and
one per shard (see :mod:`scoring.units`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

from scoring.config import ScoreConfig
from scoring.foundation.console import quiet_ray_data_console
from scoring.foundation.ray_local import init_ray  # noqa: F401 - scoring.job starts Ray through here
from scoring.units import ShardTask, UnitScorer, read_shard_task

log = logging.getLogger(__name__)

_TOKENIZE_MEMORY = 512 * 1024**2  # a unit's text and token ids, with room to spare
_MAX_INPUT_BLOCKS = 10_000  # beyond that, a block holds several shard tasks (read one after the other)


def run_local(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, fence=None, job: str = ""
              ) -> Iterator[dict]:
    """The same task and scorer functions as the Ray job, one after the other, in this process."""
    scorer = UnitScorer(cfg, fingerprint, torch_threads=cfg.torch_threads or os.cpu_count(), compiled=compiled,
                        fence=fence, job=job)
    for task in tasks:
        for record in read_shard_task(task.to_row(), cfg, fingerprint, job):
            yield from scorer(record)


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def run_ray(
    tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool, fence=None,
    job: str = "",
) -> Iterator[dict]:
    """Read+tokenise shards as CPU tasks, score with an actor pool (one model per actor), parts written by the actors."""
    import ray

    quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.target_max_block_size
    ctx.enable_progress_bars = False  # hardfocus shows one progress bar instead
    # A task streams a whole shard: each unit it yields must leave as a block of its own, at once, so that
    # scoring starts on the first unit and a shard's tokens never pile up in one block.
    ctx.target_max_block_size = 1
    try:
        yield from _run_ray(tasks, cfg, fingerprint, compiled, started_local, fence, job)
    finally:
        ctx.enable_progress_bars, ctx.target_max_block_size = saved


def _run_ray(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool, fence,
             job: str):
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
    log.info(
        "Ray: %d scoring actor(s) x %.3g CPU, %.3g GPU, %d torch threads%s",
        cfg.actors, cpus, cfg.gpus_per_actor, threads, ", torch.compile" if compiled else "",
    )
    ds = ray.data.from_items([t.to_row() for t in tasks], override_num_blocks=min(len(tasks), _MAX_INPUT_BLOCKS))
    # Tokenising runs as separate CPU tasks ahead of the model instead of inside the scoring actor
    # (which would stall a GPU): Ray Data fuses a task map into the next actor map only when their
    # resource requests are identical, and the memory request here makes them differ.
    ds = ds.flat_map(
        read_shard_task, fn_kwargs={"cfg": cfg, "model_fingerprint": fingerprint, "job": job}, num_cpus=1,
        memory=_TOKENIZE_MEMORY
    )
    ds = ds.flat_map(  # a unit in; progress records while it is scored, then its summary
        UnitScorer,
        fn_constructor_kwargs={"cfg": cfg, "model_fingerprint": fingerprint, "torch_threads": threads, "compiled": compiled,
                               "fence": fence, "job": job},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cpus,
        num_gpus=cfg.gpus_per_actor,
        resources=cfg.resources_per_actor or None,
    )
    yield from ds.iter_rows()
