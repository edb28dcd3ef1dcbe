"""Where shard tasks run: a Ray Data job (default) or in this process. Both yield one summary per unit and
one per shard (see :mod:`scoring.units`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import scoring
from scoring.config import ScoreConfig
from scoring.foundation.console import quiet_ray_data_console, ray_log_level
from scoring.foundation.errors import HardfocusError
from scoring.units import ShardTask, UnitScorer, read_shard_task

log = logging.getLogger(__name__)

_TOKENIZE_MEMORY = 512 * 1024**2  # a unit's text and token ids, with room to spare
_MAX_INPUT_BLOCKS = 10_000  # beyond that, a block holds several shard tasks (read one after the other)


def run_local(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool) -> Iterator[dict]:
    """The same task and scorer functions as the Ray job, one after the other, in this process."""
    scorer = UnitScorer(cfg, fingerprint, torch_threads=cfg.torch_threads or os.cpu_count(), compiled=compiled)
    for task in tasks:
        for record in read_shard_task(task.to_row(), cfg, fingerprint):
            yield from scorer(record)


def init_ray(address: str | None, packages: list[str] | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray; True if this call started it.

    On a cluster, ``packages`` (directories; default: this package) are shipped to the workers.
    """
    import ray

    if ray.is_initialized():
        return False
    level = ray_log_level()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ship this package to the cluster's workers, so nodes need only the dependencies installed;
        # a Ray job's driver (submitted with its runtime env, which Ray announces in this variable) has them already.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        runtime_env = None if in_job else {"py_modules": packages or [os.path.dirname(scoring.__file__)]}
        try:
            ray.init(address=address, logging_level=level, runtime_env=runtime_env)
        except ConnectionError as exc:
            raise HardfocusError(
                f"cannot connect to the Ray cluster at {address} ({exc.__cause__ or exc}); is it running? "
                "If it uses token authentication, set RAY_AUTH_MODE=token and provide the token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None
        log.info("connected to the Ray cluster at %s", address)
    else:
        # Ray starts its workers at niceness 15, below its own daemons and the driver: on a small machine
        # every wake-up of theirs then preempts a thread of the scoring actor's matmuls, which wait for it.
        ray.init(logging_level=level, include_dashboard=False, _system_config={"worker_niceness": 0, "enable_metrics_collection": False})
        log.info("started a local Ray (set RAY_ADDRESS or --ray-address to use a cluster)")
    return True


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def run_ray(
    tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool
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
        yield from _run_ray(tasks, cfg, fingerprint, compiled, started_local)
    finally:
        ctx.enable_progress_bars, ctx.target_max_block_size = saved


def _run_ray(tasks: list[ShardTask], cfg: ScoreConfig, fingerprint: str, compiled: bool, started_local: bool):
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
        read_shard_task, fn_kwargs={"cfg": cfg, "model_fingerprint": fingerprint}, num_cpus=1, memory=_TOKENIZE_MEMORY
    )
    ds = ds.flat_map(  # a unit in; progress records while it is scored, then its summary
        UnitScorer,
        fn_constructor_kwargs={"cfg": cfg, "model_fingerprint": fingerprint, "torch_threads": threads, "compiled": compiled},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cpus,
        num_gpus=cfg.gpus_per_actor,
        resources=cfg.resources_per_actor or None,
    )
    yield from ds.iter_rows()
