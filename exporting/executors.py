"""Where the export's tasks run: a Ray Data job (default, like scoring: one task per shard, as many at once as the
cluster has CPUs) or, with ``--executor local``, one after the other in this process. Both yield the tasks' records."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator

from exporting.config import ExportConfig
from hardfocus.console import native_stderr_to_file, quiet_ray_data_console
from hardfocus.ray_local import init_ray

Task = Callable[..., Iterator[dict]]
Runner = Callable[[Task, list[dict], dict], Iterator[dict]]
_MAX_BLOCKS = 10_000  # beyond that, a block holds several tasks (run one after the other)


def _packages() -> list[str]:
    """What a cluster's workers need of hardfocus beside the foundation: this package."""
    import exporting

    return [os.path.dirname(exporting.__file__)]


def _records(rows: Iterator[dict]) -> Iterator[dict]:
    for row in rows:
        yield json.loads(row["record"])


def run_local(fn: Task, rows: list[dict], kwargs: dict) -> Iterator[dict]:
    for row in rows:
        yield from _records(fn(row, **kwargs))


def run_ray(fn: Task, rows: list[dict], kwargs: dict) -> Iterator[dict]:
    """``fn`` over ``rows`` as a Ray Data ``flat_map``: each task's records reach the driver as it yields them."""
    import ray

    if not rows:
        return
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.target_max_block_size
    ctx.enable_progress_bars = False  # the export shows one progress bar instead
    ctx.target_max_block_size = 1  # every record leaves its task at once: progress as parts are written
    try:
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), _MAX_BLOCKS))
        records = ds.flat_map(fn, fn_kwargs=kwargs, num_cpus=1).iter_rows()
        yield from _records(records)
    finally:
        ctx.enable_progress_bars, ctx.target_max_block_size = saved


@contextlib.contextmanager
def runner(cfg: ExportConfig) -> Iterator[Runner]:
    """The executor ``cfg`` asks for, with Ray started (or joined) for the block and shut down after if started here."""
    if cfg.executor == "local":
        yield run_local
        return
    with native_stderr_to_file():
        started = init_ray(cfg.ray_address, packages=_packages())
        quiet_ray_data_console()
        try:
            yield run_ray
        finally:
            if started:
                import ray

                ray.shutdown()
