"""TrainProgress on a fake clock: s/step and ETA from the steps run, heartbeat lines off a terminal."""

from __future__ import annotations

import logging

import pytest
from transformers import TrainerControl, TrainerState

from hardfocus.durations import duration
from training.progress import TrainProgress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(step: int, max_steps: int) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600 + 62, "1h01m02s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "training.progress"]


def test_speed_and_eta_count_from_the_step_the_run_started_at(caplog):
    """A run resumed at step 10 of 40, 3 s per step: s/step is 3, ETA is the remaining steps x 3."""
    clock = Clock()
    cb = TrainProgress(show_bar=False, heartbeat_s=1e9, clock=clock)
    args, control = None, TrainerControl()
    with caplog.at_level(logging.INFO, logger="training.progress"):
        cb.on_train_begin(args, _state(10, 40), control)
        for step in range(11, 16):
            clock.now += 3.0
            cb.on_step_end(args, _state(step, 40), control)
        cb.on_log(args, _state(15, 40), control, logs={"loss": 2.5, "weight_min": 0.5, "weight_mean": 1.0, "weight_max": 2.0})
        cb.on_log(args, _state(15, 40), control, logs={"eval_loss": 2.25})
        cb.on_log(args, _state(40, 40), control, logs={"train_runtime": 125.0, "train_loss": 2.0})
    lines = _messages(caplog)
    assert lines[0] == "training 40 steps (resuming at step 10)"
    assert lines[1] == f"step 15/40 | loss 2.5000 | weights min 0.500 mean 1.000 max 2.000 | 3.00 s/step | ETA {duration(25 * 3)}"
    assert lines[2] == "eval at step 15/40 | eval_loss 2.2500"
    assert lines[3] == "trained to step 40/40 in 2m05s, mean training loss 2.0000"
    assert len(lines) == 4  # the heartbeat never came due


def test_heartbeat_lines_between_log_records_when_there_is_no_bar(caplog):
    """Off a terminal, a step more than heartbeat_s after the last line gets a short line of its own."""
    clock = Clock()
    cb = TrainProgress(show_bar=True, heartbeat_s=10.0, clock=clock)  # pytest's stderr is no terminal: no bar
    args, control = None, TrainerControl()
    with caplog.at_level(logging.INFO, logger="training.progress"):
        cb.on_train_begin(args, _state(0, 8), control)
        for step in range(1, 9):
            clock.now += 4.0
            cb.on_step_end(args, _state(step, 8), control)
    assert cb.bar is None
    beats = [line for line in _messages(caplog) if line.startswith("step ")]
    # 4 s a step, a line due 10 s after the last: at step 3 (12 s), then at step 6 (12 s later)
    assert beats == [f"step 3/8 | 4.00 s/step | ETA {duration(20)}", f"step 6/8 | 4.00 s/step | ETA {duration(8)}"]


def test_no_line_before_a_step_has_run():
    cb = TrainProgress(show_bar=False, clock=Clock())
    cb.on_train_begin(None, _state(0, 5), TrainerControl())
    assert cb.sec_per_step(0) is None
