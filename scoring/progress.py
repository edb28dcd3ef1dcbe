"""Scoring progress a person can read: a bar on a terminal, a log line every half minute elsewhere.

It moves by input bytes (the only total known before scoring: planning never reads whole shards) as
units are scored, micro-batch by micro-batch, and shows rows, tokens, tokens/s and an ETA.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

from hardfocus.durations import duration

log = logging.getLogger("scoring.job")

LOG_EVERY_S = 30.0


class ScoringProgress:
    def __init__(self, total_bytes: float, enabled: bool):
        self.total = max(total_bytes, 1.0)
        self.enabled = enabled
        self.started = self.last_log = time.perf_counter()
        self.done = 0.0
        interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, disable=not interactive, mininterval=1.0,
                        dynamic_ncols=True)
        self.logs = enabled and not interactive

    def update(self, done_bytes: float, rows: int, tokens: int) -> None:
        if done_bytes > self.done:
            self.bar.update(done_bytes - self.done)
            self.done = done_bytes
        elapsed = time.perf_counter() - self.started
        self.bar.set_postfix_str(f"{rows:,} rows, {tokens:,} tokens, {tokens / max(elapsed, 1e-9):,.0f} tok/s",
                                 refresh=False)
        if self.logs and time.perf_counter() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.perf_counter()
            share = self.done / self.total
            eta = f", ETA {duration(elapsed * (1 - share) / share)}" if share > 0 else ""
            log.info("scoring: %.0f%% of the input, %s rows, %s tokens, %.0f tokens/s, %s elapsed%s",
                     100 * share, f"{rows:,}", f"{tokens:,}", tokens / max(elapsed, 1e-9), duration(elapsed), eta)

    def close(self) -> None:
        self.bar.close()
