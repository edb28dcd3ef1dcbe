"""Readable training progress: one log line per logged step, a bar only on a terminal.

The Trainer's own ``ProgressCallback``/``PrinterCallback`` print each log record as a raw dict and,
off a terminal, show nothing between records: a long run looks hung. ``TrainProgress`` replaces
them. Every log record becomes one ``logging`` line (step/total, loss, weight statistics, s/step,
ETA; evaluation and the end of training have their own lines). A tqdm bar is drawn only when stderr
(where the bar and the log go) is a terminal; otherwise a short heartbeat line is logged at most
every ``heartbeat_s`` seconds between records, so a redirected log keeps moving.
"""

from __future__ import annotations

import logging
import sys
import time

from transformers import TrainerCallback

from hardfocus.durations import duration

log = logging.getLogger(__name__)


def step_line(step: int, total: int, logs: dict, sec_per_step: float | None) -> str:
    """The line of one training log record; the values are those written to ``train_log.jsonl``."""
    parts = [f"step {step}/{total}", f"loss {logs['loss']:.4f}"]
    if "weighted_loss" in logs:
        parts.append(f"weighted {logs['weighted_loss']:.4f}")
    if "weight_min" in logs:
        parts.append(f"weights min {logs['weight_min']:.3f} mean {logs['weight_mean']:.3f} max {logs['weight_max']:.3f}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.3g}")
    parts.append(_speed(step, total, sec_per_step))
    return " | ".join(parts)


def _speed(step: int, total: int, sec_per_step: float | None) -> str:
    if sec_per_step is None:
        return "s/step n/a | ETA n/a"
    return f"{sec_per_step:.2f} s/step | ETA {duration(sec_per_step * (total - step))}"


class TrainProgress(TrainerCallback):
    """Log lines for rank 0's log records; a tqdm bar when ``show_bar`` and stderr is a terminal."""

    def __init__(self, show_bar: bool = True, heartbeat_s: float = 60.0, clock=time.monotonic):
        self.show_bar = show_bar
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.bar = None
        self._redirect = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.start_step, self.start_time = state.global_step, self.clock()
        self.last_line = self.start_time
        if self.show_bar and sys.stderr.isatty():
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()  # log lines print above the bar, not through it
            self._redirect.__enter__()
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)
        log.info("training %d steps%s", state.max_steps,
                 f" (resuming at step {state.global_step})" if state.global_step else "")

    def sec_per_step(self, step: int) -> float | None:
        """Mean wall seconds per optimiser step run by this process (a resumed run counts from its start)."""
        done = step - self.start_step
        return (self.clock() - self.start_time) / done if done > 0 else None

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        elif self.clock() - self.last_line >= self.heartbeat_s:
            self._emit(f"step {state.global_step}/{state.max_steps} | "
                       f"{_speed(state.global_step, state.max_steps, self.sec_per_step(state.global_step))}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step, total = state.global_step, state.max_steps
        if "loss" in logs:
            self._emit(step_line(step, total, logs, self.sec_per_step(step)))
        elif "eval_loss" in logs:
            self._emit(f"eval at step {step}/{total} | eval_loss {logs['eval_loss']:.4f}")
        elif "train_runtime" in logs:
            mean = f", mean training loss {logs['train_loss']:.4f}" if "train_loss" in logs else ""
            self._emit(f"trained to step {step}/{total} in {duration(logs['train_runtime'])}{mean}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def _emit(self, line: str) -> None:
        log.info(line)
        self.last_line = self.clock()
