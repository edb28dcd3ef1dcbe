"""What a path is: the kinds of stage output (their job files and markers, how they are recognised) and
:func:`identify`, which tells a stage's output, a directory of part files, a model checkpoint and anything else
apart, from one listing and the small files a stage's names point at.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.storage import fresh, list_names, normalized, read_json, redact


@dataclass(frozen=True)
class StageKind:
    """What a stage's output directory is called, which files mark it, and how to recognise them.

    A job file written now says ``{"stage": name, "identity": ...}``; ``legacy_job`` and ``marker_keys`` are the
    keys by which the job files and markers of earlier versions (which carry no tag) are still recognised. A
    directory that merely holds a file of one of these names is not taken for a stage's output.
    """

    name: str  # scores, selected, model, eval, tokens, export
    marker: str  # written last: the directory is complete iff it exists
    job: str  # the identity, written first
    staged: bool  # replaced whole through a staging directory (locally) instead of written in place
    noun: str  # what it holds, in messages
    marker_keys: frozenset[str]  # keys every marker of this kind has
    writes: tuple[str, ...]  # the names (patterns) it writes: replacing it removes these, and refuses anything else
    legacy_job: Callable[[dict], bool] | None = None  # recognises an untagged job file of an earlier version
    replace_clears: bool = True  # replacing empties it; else its parts replace themselves by their own identity

    def __str__(self) -> str:
        return f"{self.name}/"


SCORES = StageKind(
    "scores", "manifest.json", "job.json", staged=False, noun="scores",
    marker_keys=frozenset({"model_fingerprint", "tokenizer_fingerprint", "parts", "shards"}),
    writes=("part-*.parquet", "done", "job.json", "manifest.json", "report.html"),  # `hardfocus report` may add one
    legacy_job=lambda job: isinstance(job.get("identity"), dict) and "model_fingerprint" in job["identity"]
    and isinstance(job.get("runs"), list),
)
SELECTED = StageKind("selected", "summary.json", "selection_job.json", staged=True, noun="selection",
                     marker_keys=frozenset({"parameters", "bands", "output_parts"}),
                     writes=("part-*.parquet", "decisions", "summary.json", "selection_job.json", "report.html"))
MODEL = StageKind(
    "model", "train_manifest.json", "train_job.json", staged=False, noun="training run",
    marker_keys=frozenset({"steps", "train_rows"}),
    # what save_pretrained writes (config, weights, tokenizer files, a chat template, remote code) and training's own
    writes=("*.json", "*.jsonl", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja", "*.py", "checkpoints",
            "ray_results", "tokenized"),  # tokenized/: raw shards tokenised there by earlier versions
    legacy_job=lambda job: isinstance(job.get("config"), dict) and isinstance(job.get("model_path"), str),
)
EVAL = StageKind("eval", "eval.json", "eval_job.json", staged=False, noun="evaluation",
                 marker_keys=frozenset({"models", "data"}), writes=("eval.json", "eval_job.json", "scores-*"),
                 replace_clears=False)
TOKENS = StageKind("tokens", "tokenized.json", "tokenize_job.json", staged=True, noun="tokenised shards",
                   marker_keys=frozenset({"identity", "rows_per_status"}),
                   writes=("part-*.parquet", "tokenized.json", "tokenize_job.json"))
EXPORT = StageKind("export", "export.json", "export_job.json", staged=False, noun="exported shards",
                   marker_keys=frozenset({"selection_digest", "bands", "shards", "parts"}),
                   writes=("part-*", "spill", "export.json", "export_job.json"))  # spill/: --resample's phase one
KINDS = (SCORES, SELECTED, MODEL, EVAL, TOKENS, EXPORT)


# ---- what a path is ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathInfo:
    """What :func:`identify` found at a path.

    ``kind``: ``absent``, ``file``, ``empty`` (a directory without entries), a stage kind's name (its job file
    or marker is there and reads as that stage's), ``parts`` (``part-*.parquet`` and no marker: a token directory,
    or an interrupted selection of an older version), ``checkpoint`` (a Hugging Face model: ``config.json``), or
    ``other``.
    """

    url: str
    kind: str
    complete: bool = False
    names: tuple[str, ...] = ()

    @property
    def stage(self) -> StageKind | None:
        return next((k for k in KINDS if k.name == self.kind), None)

    def describe(self) -> str:
        stage = self.stage
        if stage is not None:
            return f"{'a finished' if self.complete else 'an unfinished'} {stage.name}/ directory ({stage.noun})"
        shown = ", ".join(sorted(self.names)[:3]) + (", ..." if len(self.names) > 3 else "")
        return {
            "absent": "absent", "file": "a file", "empty": "an empty directory",
            "parts": f"a directory of part files without a marker ({shown})",
            "checkpoint": "a model checkpoint (config.json)",
        }.get(self.kind, f"a directory that no hardfocus stage wrote ({shown})")


def visible(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(".")]


def _is_marker(fs, path: str, kind: StageKind) -> bool:
    """Whether the kind's marker in ``path`` is an object with the keys its markers have."""
    obj = read_json(fs, posixpath.join(path, kind.marker), what="the file")
    return isinstance(obj, dict) and kind.marker_keys <= set(obj)


def _is_job(fs, path: str, kind: StageKind) -> bool:
    """Whether the kind's job file in ``path`` says it is this stage's (its tag, or an earlier version's shape).
    A damaged one of a stage's own names is a :class:`HardfocusError` naming it (:func:`read_json`)."""
    obj = read_json(fs, posixpath.join(path, kind.job), what="the file")
    if not isinstance(obj, dict):
        return False
    return obj.get("stage") == kind.name or "stage" not in obj and kind.legacy_job is not None and kind.legacy_job(obj)


def identify(url: str) -> PathInfo:
    """Say what ``url`` is, from one listing and, where a stage's file names are there, those small files."""
    fs, path = url_to_fs(url)
    path = normalized(fs, path)
    fresh(fs, posixpath.dirname(path))
    if not fs.exists(path):
        return PathInfo(url, "absent")
    if not fs.isdir(path):
        return PathInfo(url, "file")
    names = visible(list_names(fs, path))
    if not names:
        return PathInfo(url, "empty")
    present = set(names)
    for kind in KINDS:
        marked = kind.marker in present and _is_marker(fs, path, kind)
        if marked or kind.job in present and _is_job(fs, path, kind):
            if kind.marker in present and not marked:  # this stage's directory, its marker damaged into other JSON
                raise HardfocusError(
                    f"{kind.marker} of {redact(url)} is not the marker hardfocus wrote (it lacks "
                    f"{', '.join(sorted(kind.marker_keys))}): restore it, or delete it (the stage then treats the output "
                    "as unfinished)"
                )
            return PathInfo(url, kind.name, complete=marked, names=tuple(names))
    if any(n.startswith("part-") and n.endswith(".parquet") for n in names):
        return PathInfo(url, "parts", names=tuple(names))
    if "config.json" in present:
        return PathInfo(url, "checkpoint", names=tuple(names))
    return PathInfo(url, "other", names=tuple(names))
