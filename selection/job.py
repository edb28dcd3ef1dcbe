"""``select`` and ``report``: the selection stage as library calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from hardfocus.contracts.decisions import DECISIONS_LAYOUT, EXCLUDED, decision_parts
from hardfocus.contracts.scores import input_files, manifest_digest
from hardfocus.contracts.selected import SUMMARY_FILE, SelectedDir, open_selected
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.kinds import SELECTED
from hardfocus.parts import read_footer, read_part
from hardfocus.stagedir import Opening, StageDir, refuse_overlap, refuse_repeated
from hardfocus.storage import prefetched, redact
from selection.bands import BANDS, KEPT, NO_GROUP, band_weights, rank_bands
from selection.by_document import check_by_document, documents_per_band, rank_documents
from selection.config import SelectConfig
from selection.excluded import reason_counts
from selection.rank_by import eligible_scores
from selection.report import REPORT_FILE, write_report
from selection.score_terms import SCORE_COLUMN, rank_column
from selection.scores import ScoreParts, open_scores
from selection.summary import SelectionSummary, group_counts, loss_quantiles, thresholds, weight_stats
from selection.writer import Decided, write_selection

log = logging.getLogger(__name__)


@dataclass
class SelectResult:
    output: str
    summary: SelectionSummary
    skipped: bool = False  # the output already held this selection, complete: nothing was written


def select(cfg: SelectConfig, progress: bool = True) -> SelectResult:
    """Rank, band and weight every scored row of ``cfg.scores``; write the kept band to ``cfg.output``.

    The output's identity is the parameters and the identity of the scores (their manifests): a rerun of the
    same selection over the same scores finds it complete and writes nothing.
    """
    inputs = cfg.scores + cfg.reference
    refuse_repeated(inputs, "scores directory")
    out = StageDir(cfg.output, SELECTED)
    refuse_overlap(cfg.output, inputs)
    with out.locked():
        parts = open_scores(cfg.scores)
        reference = open_scores(cfg.reference) if cfg.reference else None
        if cfg.by == "document":
            check_by_document(parts, cfg, reference)
        identity = selection_identity(cfg, parts, reference)
        named = {"scores": cfg.scores, "reference": cfg.reference}  # what a changed input is called when refused
        if out.open(identity, cfg.overwrite, inputs=inputs, named=named) is Opening.COMPLETE and _decisions_whole(cfg):
            log.info("'%s' already holds this selection: nothing to do", redact(cfg.output))
            summary = out.read_record(SUMMARY_FILE, SelectionSummary)
            if cfg.report and not out.exists(REPORT_FILE):  # the report is not part of the selection: made on request
                build_report(cfg.scores, cfg.output)
            return SelectResult(cfg.output, summary, skipped=True)
        excluded_rows, ranked, units, documents = _rank(parts, cfg, count_documents=True, reference=reference)
        excluded = reason_counts(excluded_rows)
        column = rank_column(cfg.score, cfg.by)
        ranked = ranked if ranked["_row"].is_sorted() else ranked.sort("_row")  # the order the parts are written in
        is_kept = ranked["band"] == KEPT
        kept = ranked.filter(is_kept)
        if kept.height == 0:
            raise HardfocusError(
                f"the selection would keep zero samples: {ranked.height} eligible rows (excluded: {excluded or 'none'}) "
                f"with drop_top={cfg.drop_top}, keep={cfg.keep}; raise --keep or check the scores"
            )
        weights = band_weights(kept, cfg.per_group, cfg.weighting, cfg.temperature, cfg.max_weight, column)
        kept = kept.with_columns(weight=pl.Series(weights))
        all_weights = np.full(ranked.height, np.nan, dtype=np.float32)
        all_weights[is_kept.to_numpy()] = weights
        with out.staged(identity) as stage:
            n_parts = write_selection(parts, Decided.of(ranked, all_weights, excluded_rows, column), stage,
                                      digest(identity), progress, ray_address=cfg.ray_address)
            summary = SelectionSummary(
                parameters=cfg.model_dump(exclude={"scores", "output", "overwrite", "report", "ray_address"}),
                score=cfg.score,
                score_units=units,
                scores=_score_dirs(cfg.scores, parts.manifests),
                reference=_score_dirs(cfg.reference, reference.manifests) if reference else None,
                rows=sum(parts.rows),
                excluded=excluded,
                eligible=ranked.height,
                bands={str(b): int(n) for b, n in ranked.group_by("band").len().sort("band").iter_rows()},
                documents=documents,
                groups=group_counts(ranked, kept),
                thresholds=thresholds(ranked, cfg.per_group, column),
                loss_quantiles=loss_quantiles(ranked),
                score_quantiles=loss_quantiles(ranked, column) if column != "loss" else None,
                weights=weight_stats(kept["weight"].to_numpy()),
                output_parts=n_parts,
                decision_parts=len(parts.urls),
                has_input_ids=parts.has_input_ids,
            )
            if cfg.report:
                write_report(stage.url, ranked, kept, summary.model_dump(), title=f"hardfocus selection: {cfg.output}")
            stage.mark(summary.model_dump(), sync_tree=True)  # last: the marker of a complete selected/
    log.debug(summary_text(summary, cfg.output))  # the CLI prints it
    return SelectResult(cfg.output, summary)


def _decisions_whole(cfg: SelectConfig) -> bool:
    """Whether a complete selection reads whole: its decisions and its training parts, each stamped as this selection's
    in its place, as many as its summary counts, by their footers, and with --overwrite every part read whole (each
    column's digest: what a reader that refused a part asks for). If not, --overwrite selects again (else refused,
    naming the part)."""
    try:
        opened = open_selected(cfg.output)
        parts = [*((p.url, p.expected) for p in decision_parts(opened)), *opened.parts]
        for _ in prefetched(lambda item: read_part(*item) if cfg.overwrite else read_footer(*item), parts):
            pass
    except HardfocusError as exc:
        if not cfg.overwrite:
            raise
        log.warning("'%s' holds this selection but not whole (%s): selecting again", redact(cfg.output), exc)
        return False
    return True


def selection_identity(cfg: SelectConfig, parts: ScoreParts, reference: ScoreParts | None) -> dict:
    """What makes two selections the same: the parameters and the scores they were made from (``report`` writes a
    page beside the selection and changes nothing in it; ``ray_address`` says only where the parts are written)."""
    default_by = {"by"} if cfg.by == "window" else set()  # left out at its default: selections made before it stay
    return {
        "decisions": DECISIONS_LAYOUT,  # a selection of before decisions/ is another: --overwrite replaces it
        "parameters": cfg.model_dump(exclude={"scores", "reference", "output", "overwrite", "report", "ray_address",
                                                  *default_by}),
        "scores": [manifest_digest(m) for m in parts.manifests],
        "reference": [manifest_digest(m) for m in reference.manifests] if reference else [],
    }


def _rank(parts: ScoreParts, cfg: SelectConfig, count_documents: bool = False, reference: ScoreParts | None = None
          ) -> tuple[pl.DataFrame, pl.DataFrame, str, dict[str, int] | None]:
    """(the rows excluded, with their reason, the eligible rows with their band, the ranked score's units, and on windowed
    scores the documents per band: counted by window only when ``count_documents``, a pass over the parts).
    ``reference``: the reference scores where the caller opened them already (else opened here, if needed)."""
    if cfg.by == "document":
        return rank_documents(parts, cfg, reference)
    excluded, eligible, units = eligible_scores(parts, cfg, reference)
    ranked = rank_bands(eligible, cfg.drop_top, cfg.keep, cfg.per_group, parts.sample_ids, rank_column(cfg.score))
    windowed = count_documents and parts.manifests[0].long_documents == "windows"
    return excluded, ranked, units, documents_per_band(parts, ranked) if windowed else None


def _score_dirs(dirs: list[str], manifests) -> list[dict]:
    return [
        {"dir": d, "model": m.model, "model_fingerprint": m.model_fingerprint,
         "tokenizer_fingerprint": m.tokenizer_fingerprint, "rows": m.rows, "inputs": input_files(m)}
        for d, m in zip(dirs, manifests)
    ]


def build_report(scores: list[str], selected: str | None = None, output: str | None = None) -> str:
    """Build report.html for score directories, with the bands and weights of a selection if given.

    Written into ``output``, else the selected/ directory, else the first scores directory.
    """
    parts = open_scores(scores)
    summary = kept = None
    if selected is None:
        excluded, ranked = parts.eligible()
    else:
        opened = open_selected(selected)
        summary = opened.summary
        _check_made_from(opened, parts)
        column = rank_column(summary.get("score", "loss"), summary["parameters"].get("by", "window"))
        excluded, ranked, kept = _decided(opened, column)
    target = output or selected or scores[0]
    path = write_report(target, ranked, kept, summary, title=f"hardfocus report: {', '.join(scores)}")
    log.info("report: %s (%d eligible rows, excluded %s)", path, ranked.height, reason_counts(excluded) or "none")
    return path


def _decided(selected: SelectedDir, column: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """What the report shows of a selection, read from its decisions: (excluded ``_row``/``reason``, the ranked rows
    with ``group``, ``loss``, ``band`` and the ranked score, the kept rows with their weight)."""
    columns = ["group", "loss", "score", "band", "reason", "weight"]
    tables = prefetched(lambda part: read_part(part.url, part.expected, columns), decision_parts(selected))
    frame = pl.from_arrow(pa.concat_tables(tables))
    frame = frame.with_columns(pl.col("group").fill_null(NO_GROUP), pl.col("band").cast(pl.String))
    ranked = frame.filter(pl.col("band") != EXCLUDED)
    groups = pl.Enum(sorted(ranked["group"].unique().to_list()))
    ranked = ranked.with_columns(pl.col("group").cast(groups), pl.col("band").cast(BANDS))
    excluded = frame.filter(pl.col("band") == EXCLUDED).select(pl.int_range(pl.len(), dtype=pl.UInt64).alias("_row"), "reason")
    kept = ranked.filter(pl.col("band") == KEPT).select("group", "loss", "weight")
    keep = ["group", "loss", "band", *([SCORE_COLUMN] if column == SCORE_COLUMN else [])]
    return excluded, ranked.select(keep), kept


def _check_made_from(selected: SelectedDir, parts: ScoreParts) -> None:
    """A selection's report shows its bands over the scores it was made from, never over others."""
    made_from = selected.recorded.get("scores")
    given = [manifest_digest(m) for m in parts.manifests]
    if made_from is not None and made_from != given:
        raise HardfocusError(
            f"'{redact(selected.url)}' was not selected from the scores given (its job file records other scores "
            "manifests): give the scores/ directories it was made from, in the same order"
        )


def summary_text(s: SelectionSummary, output: str) -> str:
    excluded = ", ".join(f"{k} {v}" for k, v in s.excluded.items()) or "none"
    bands = ", ".join(f"{k} {v}" for k, v in s.bands.items())
    w = s.weights
    d = s.documents or {}
    by_document = s.parameters.get("by") == "document"
    what = (f"selected {d.get(KEPT, 0)} of {d.get('eligible', 0)} eligible documents "
            f"({s.bands.get(KEPT, 0)} of {s.eligible} eligible windows)") if by_document else (
        f"selected {s.bands.get(KEPT, 0)} of {s.eligible} eligible rows")
    return (
        what
        + f"{'' if s.score == 'loss' else f' by {s.score} ({s.score_units})'} ({s.rows} scored; excluded: {excluded}) | "
        f"bands: {bands} | weights min {w.min:.3f} mean {w.mean:.3f} max {w.max:.3f}, "
        f"effective sample size {w.effective_sample_size:.0f} | {output}"
    )
