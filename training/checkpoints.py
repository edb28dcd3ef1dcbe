"""Which Trainer checkpoint a run may resume from, and the marker that says a checkpoint was written whole.

The Trainer writes ``checkpoint-N`` file by file (weights, optimizer, scheduler, RNG states, then
``trainer_state.json``) and rotates old checkpoints away; a kill in the middle leaves a directory that
``get_last_checkpoint`` still picks, and every rerun then crashes loading it. Here:

- :class:`MarkComplete` (a callback; ``on_save`` fires once ``_save_checkpoint`` returned) fsyncs the
  checkpoint's files and directory, then writes :data:`COMPLETE_MARKER` into it (temp file, fsync, rename):
  a checkpoint with the marker is whole and on disk.
- :func:`resumable_checkpoint` picks the newest checkpoint that is complete: marked, or (a checkpoint
  written before markers existed, or by a run killed between its save and the marker) one whose
  ``trainer_state.json`` reads and names its step and whose weights' headers and sizes agree. Either way
  the weights are checked (a few KB read per file), so a marked checkpoint whose weights were damaged
  later is skipped too. Newer, incomplete ones are named in the log and skipped (and removed when asked).
- :func:`finish_from_checkpoint` ends a run whose newest complete checkpoint is already at
  ``max_steps`` (killed after its last checkpoint, before its manifest) without training a step more.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path

import fsspec
from transformers import TrainerCallback

from hardfocus.storage import commit_json, fsync_dir, fsync_tree

log = logging.getLogger(__name__)

COMPLETE_MARKER = "hardfocus_complete.json"
TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR-<step>
# what a checkpoint holds beside the model save_model writes: the state to resume from
_RESUME_STATE = re.compile(r"^(optimizer|scheduler|scaler|rng_state)[\w.-]*\.(pt|pth|bin)$")


class MarkComplete(TrainerCallback):
    """After the Trainer wrote ``checkpoint-<step>`` (on the process that saves), make it durable, then mark it."""

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)


def mark_complete(checkpoint: Path, step: int) -> None:
    """fsync every file of ``checkpoint`` and its directories, then commit the marker (a durable write)."""
    fsync_tree(str(checkpoint))
    fsync_dir(str(checkpoint.parent))  # the checkpoint's own name
    commit_json(fsspec.filesystem("file"), str(checkpoint / COMPLETE_MARKER), {"step": step})


def resumable_checkpoint(checkpoints_dir: str | Path, discard_incomplete: bool = False) -> str | None:
    """The newest complete ``checkpoint-N`` in ``checkpoints_dir`` (None: none, or no such directory).

    Newer checkpoints that are not complete are logged as skipped; with ``discard_incomplete`` they are also
    removed (the resumed run writes those steps again, and the Trainer's rotation, which counts directories,
    would otherwise keep a broken one and delete a good one).
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()), reverse=True
    )
    skipped, chosen = [], None
    for step, path in found:
        why = incomplete_because(path, step)
        if why is None:
            chosen = path
            break
        skipped.append((path, why))
    for path, why in skipped:
        log.warning("skipping checkpoint %s: %s (cut short by a kill while it was written?)%s", path, why,
                    "; removed" if discard_incomplete else "")
        if discard_incomplete:
            shutil.rmtree(path, ignore_errors=True)  # every process of a multi-process launch may get here
    return str(chosen) if chosen is not None else None


def incomplete_because(checkpoint: Path, step: int) -> str | None:
    """Why ``checkpoint`` (of ``step``) cannot be resumed from, or None when it is complete."""
    marker = checkpoint / COMPLETE_MARKER
    if marker.exists():
        try:
            marked = json.loads(marker.read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            marked = None
        if marked != step:
            return f"its {COMPLETE_MARKER} is unreadable or names another step"
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError) as exc:
        return f"{TRAINER_STATE} is unreadable ({exc})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{TRAINER_STATE} does not name step {step}"
    return _weights_problem(checkpoint)


def _weights_problem(checkpoint: Path) -> str | None:
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return f"{index.name} is unreadable"
    elif (checkpoint / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif any((checkpoint / name).exists() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        return None  # torch pickles: no header to check; trainer_state.json is written after them
    else:
        return "no model weights"
    for name in files:
        problem = _safetensors_problem(checkpoint / name)
        if problem:
            return f"{name} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is whole: its header reads and its tensors end where the file ends."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "is cut short (its header runs past the end)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, struct.error):
        return "has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) != size:
        return f"is cut short ({size} bytes, its header describes {8 + n + max(ends, default=0)})"
    return None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The step a complete checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])


def finish_from_checkpoint(checkpoint: str | Path, out: str | Path) -> tuple[int, list[dict]]:
    """Make the checkpoint's model the run's final model in ``out`` without training; returns (steps, log history).

    The checkpoint's model files are what ``trainer.save_model`` writes (the Trainer saves checkpoints with it):
    model, config, tokenizer, training arguments. They are copied; the resume state (optimizer, scheduler, RNG,
    trainer state, marker) is not. The training log drops records after the checkpoint's step, as a resume does.
    """
    from training.output import TRAIN_LOG
    from training.trainer import JsonLogCallback

    checkpoint, out = Path(checkpoint), Path(out)
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and not _RESUME_STATE.match(path.name) and path.name not in (TRAINER_STATE, COMPLETE_MARKER):
            shutil.copyfile(path, out / path.name)
    JsonLogCallback(out / TRAIN_LOG).trim(state["global_step"])
    log.info("%s is at step %d, the last: its model is the final model (nothing left to train)", checkpoint,
             state["global_step"])
    return state["global_step"], state.get("log_history", [])
