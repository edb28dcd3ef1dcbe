"""The selection stage against an independent numpy computation of bands, ranks and weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from hardfocus.parts import read_part
from scoring import HardfocusError
from selection import SelectConfig, irdro_weights, select
from tests.selection.fake_scores import write_scores
from tests.selection.helpers import random_losses
from tests.stamps import rewrite_keeping_stamp


def _expected_bands(losses, ids, drop_top, keep):
    """numpy: order by loss descending, ties by sample id ascending; band by floor'd counts.

    loss_rank: the share of the scope with a strictly higher loss (tied losses share their rank).
    """
    losses = np.array(losses, dtype=np.float32)
    order = np.lexsort((np.array(ids), -losses))
    n = len(losses)
    n_drop, n_keep = int(np.floor(n * drop_top)), int(np.floor(n * keep))
    kept = {ids[i]: (losses > losses[i]).sum() / max(n - 1, 1) for i in order[n_drop : n_drop + n_keep]}
    return kept, {ids[i] for i in order[:n_drop]}


def _selected(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/part-*.parquet").sort("sample_id")


def test_global_band_ranks_and_weights_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    losses = np.round(rng.gamma(4, 0.7, 200), 2).tolist()  # rounded: many ties, broken by sample id
    groups = rng.choice(["web", "code", "books"], 200).tolist()
    write_scores(tmp_path / "scores", losses, groups)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=0.1, keep=0.35,
                       temperature=0.8)
    result = select(cfg, progress=False)
    got = _selected(tmp_path / "sel")

    ids = [f"shard.jsonl#{i}" for i in range(200)]
    kept, dropped = _expected_bands(losses, ids, 0.1, 0.35)
    assert set(got["sample_id"]) == set(kept) and len(kept) == 70
    np.testing.assert_allclose(got["loss_rank"].to_numpy(), [kept[i] for i in got["sample_id"]], atol=1e-6)
    by_id = dict(zip(ids, losses))
    want_w = irdro_weights(np.array([by_id[i] for i in got["sample_id"]]), 0.8)
    np.testing.assert_allclose(got["weight"].to_numpy(), want_w, rtol=1e-5)
    assert got["weight"].mean() == pytest.approx(1.0, rel=1e-5)
    assert result.summary.bands == {"dropped": 20, "easy": 110, "kept": 70}
    assert result.summary.thresholds["all"].dropped_min >= result.summary.thresholds["all"].kept_max
    # input_ids travel with their sample
    source = pl.read_parquet(f"{tmp_path}/scores/part-*.parquet").select("sample_id", "input_ids")
    joined = got.join(source, on="sample_id", suffix="_src")
    assert joined.height == 70 and (joined["input_ids"] == joined["input_ids_src"]).all()


def test_per_group_bands_and_weights(tmp_path):
    rng = np.random.default_rng(2)
    groups = ["hard"] * 40 + ["easy"] * 60 + [None] * 10
    losses = (np.r_[rng.normal(6, 0.5, 40), rng.normal(2, 0.5, 60), rng.normal(4, 0.5, 10)]).tolist()
    write_scores(tmp_path / "scores", losses, groups)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=0.1, keep=0.5,
                       per_group=True, max_weight=2.0)
    result = select(cfg, progress=False)
    got = _selected(tmp_path / "sel")
    ids = np.array([f"shard.jsonl#{i}" for i in range(110)])
    for name, where in (("hard", slice(0, 40)), ("easy", slice(40, 100)), (None, slice(100, 110))):
        kept, _ = _expected_bands(losses[where], ids[where].tolist(), 0.1, 0.5)
        mine = got.filter(pl.col("group").is_null() if name is None else pl.col("group") == name)
        assert set(mine["sample_id"]) == set(kept)
        np.testing.assert_allclose(mine["loss_rank"].to_numpy(), [kept[i] for i in mine["sample_id"]], atol=1e-6)
        want = irdro_weights(mine["loss"].to_numpy(), 1.0, max_weight=2.0)
        np.testing.assert_allclose(mine["weight"].to_numpy(), want, rtol=1e-5)
    assert result.summary.groups["hard"].kept == 20 and result.summary.groups["(none)"].kept == 5
    assert set(result.summary.thresholds) == {"hard", "easy", "(none)"}


def test_excluded_rows_are_counted_not_dropped_silently(tmp_path):
    losses = [1.0, 2.0, float("nan"), float("inf"), 3.0, 4.0, 5.0, 6.0, 0.5, 0.7]
    statuses = ["ok", "ok", "ok", "ok", "empty", "error: invalid JSON: x", "too_short", "ok", "ok", "ok"]
    write_scores(tmp_path / "scores", losses, statuses=statuses)
    result = select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=0.2, keep=0.6),
                    progress=False)
    s = result.summary
    assert s.excluded == {"loss not finite": 2, "status: empty": 1, "status: error": 1, "status: too_short": 1}
    assert s.eligible == 5 and s.rows == 10 and s.eligible + sum(s.excluded.values()) == s.rows
    assert sum(s.bands.values()) == s.eligible


def test_deterministic_and_weighting_none(tmp_path):
    losses = [2.0] * 30 + [3.0] * 30  # all ties within two values
    write_scores(tmp_path / "scores", losses)
    outs = []
    for name in ("a", "b"):
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / name), weighting="none"), progress=False)
        outs.append(_selected(tmp_path / name))
    assert outs[0].equals(outs[1])
    assert (outs[0]["weight"] == 1.0).all()


def test_refusals(tmp_path):
    write_scores(tmp_path / "a", [1.0, 2.0, 3.0])
    write_scores(tmp_path / "b", [1.0, 2.0, 3.0], tokenizer_fingerprint="tok-b")
    with pytest.raises(HardfocusError, match="another tokenizer_fingerprint"):
        select(SelectConfig(scores=[str(tmp_path / "a"), str(tmp_path / "b")], output=str(tmp_path / "o")), progress=False)
    with pytest.raises(HardfocusError, match="would keep zero samples"):
        select(SelectConfig(scores=[str(tmp_path / "a")], output=str(tmp_path / "o"), drop_top=0.0, keep=0.2), progress=False)
    (tmp_path / "a" / "manifest.json").rename(tmp_path / "a" / "manifest.bak")
    with pytest.raises(HardfocusError, match="not a finished scores/ directory"):
        select(SelectConfig(scores=[str(tmp_path / "a")], output=str(tmp_path / "o")), progress=False)
    with pytest.raises(ValueError, match="the bands overlap"):
        SelectConfig(scores=["x"], output="y", drop_top=0.6, keep=0.5)


def test_two_score_dirs_rank_together_and_output_is_replaced_atomically(tmp_path, monkeypatch):
    write_scores(tmp_path / "a", [1.0, 5.0, 3.0, 4.0], ids=["a0", "a1", "a2", "a3"], shard="a.jsonl")
    write_scores(tmp_path / "b", [2.0, 6.0, 7.0, 0.5], ids=["b0", "b1", "b2", "b3"], shard="b.jsonl")
    cfg = SelectConfig(scores=[str(tmp_path / "a"), str(tmp_path / "b")], output=str(tmp_path / "sel"), drop_top=0.25, keep=0.5)
    select(cfg, progress=False)
    assert set(_selected(tmp_path / "sel")["sample_id"]) == {"a1", "a3", "a2", "b0"}  # 7 and 6 dropped
    written = (tmp_path / "sel" / "summary.json").stat().st_mtime_ns
    assert select(cfg, progress=False).skipped  # the same selection of the same scores: nothing to do
    assert (tmp_path / "sel" / "summary.json").stat().st_mtime_ns == written
    with pytest.raises(HardfocusError, match=r"made with other settings \(differs in: parameters.keep\); pass --overwrite"):
        select(cfg.model_copy(update={"keep": 0.25}), progress=False)

    import selection.job

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill while writing
    monkeypatch.setattr(selection.job, "write_report", crash)
    with pytest.raises(KeyboardInterrupt):
        select(cfg.model_copy(update={"overwrite": True, "keep": 0.25}), progress=False)
    # the previous complete output is untouched, and no temporary directory is left behind
    assert json.loads((tmp_path / "sel" / "summary.json").read_text())["parameters"]["keep"] == 0.5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sel")] == []


def test_report_files(tmp_path):
    rng = np.random.default_rng(3)
    write_scores(tmp_path / "scores", rng.gamma(4, 0.7, 120).tolist(), rng.choice(["x", "y"], 120).tolist())
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel")), progress=False)
    for name in ("report.html", "summary.json"):
        assert (tmp_path / "sel" / name).stat().st_size > 0
    assert not list((tmp_path / "sel").glob("*.png"))  # the plots are embedded in the page
    page = (tmp_path / "sel" / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in page and "<td>x</td>" in page


def test_asking_for_the_report_again_is_not_another_selection(tmp_path):
    """`report` writes report.html and changes nothing else (summary.json leaves it out), yet it is part of the
    selection's identity: `select S -o sel --no-report` after `select S -o sel` is refused ("differs in:
    parameters.report") and with --overwrite reselects; `hardfocus run` reselects when it is toggled."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"))
    select(cfg, progress=False)
    assert select(cfg.model_copy(update={"report": False}), progress=False).skipped


def test_a_selection_refused_because_its_scores_changed_names_them(tmp_path):
    """The stage-directory protocol says why an output is another run's: a selection whose scores/ were redone since
    names that directory (not "other settings"), and the settings that differ besides."""
    write_scores(tmp_path / "a", random_losses(40, 1), shard="a.jsonl")
    write_scores(tmp_path / "b", random_losses(40, 2), shard="b.jsonl")
    cfg = SelectConfig(scores=[str(tmp_path / "a"), str(tmp_path / "b")], output=str(tmp_path / "sel"), report=False)
    select(cfg, progress=False)
    shutil.rmtree(tmp_path / "b")
    write_scores(tmp_path / "b", random_losses(41, 3), shard="b.jsonl")  # b scored again, of a row more
    with pytest.raises(HardfocusError, match=rf"'{tmp_path / 'sel'}' holds a selection made from other inputs \(its input "
                                             rf"'{tmp_path / 'b'}' is new or changed since\); pass --overwrite"):
        select(cfg, progress=False)
    with pytest.raises(HardfocusError, match=rf"made from other inputs \(its input '{tmp_path / 'b'}' is new or changed since\) and "
                                             r"with other settings \(differs in: parameters.keep\)"):
        select(cfg.model_copy(update={"keep": 0.3}), progress=False)


def test_a_rerun_over_a_selection_damaged_since_names_the_part_and_overwrite_makes_it_whole(tmp_path):
    """A rerun of the same selection checks its output's parts by their footers (stamps, places, rows): a training
    part cut short is named, where a rerun used to say "already holds this selection"; --overwrite selects again, to
    the same bytes."""
    write_scores(tmp_path / "scores", random_losses(60, 4), rows_per_part=9)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False)
    select(cfg, progress=False)
    part = tmp_path / "sel" / "part-00001.parquet"
    whole = part.read_bytes()
    part.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(HardfocusError, match=r"the training part .*sel/part-00001\.parquet cannot be read .*cut short"):
        select(cfg, progress=False)
    assert not select(cfg.model_copy(update={"overwrite": True}), progress=False).skipped
    assert part.read_bytes() == whole


@pytest.mark.parametrize("part", ["decisions/part-00000.parquet", "part-00000.parquet"])
def test_select_overwrite_repairs_a_part_that_export_or_train_refuse_as_changed(tmp_path, part):
    """A decisions or training part changed after select wrote it (a read-modify-write keeping the stamp) is refused by
    export and train: "... was changed after it was written ...: run `hardfocus select` again with --overwrite". Doing
    so prints "this selection of these scores is already complete; nothing to do": ``out.open`` finds the same
    identity complete and ``_decisions_whole`` checks only the parts' footers, which are intact. The part stays as it
    is and export and train keep refusing it, sending the user back to the same command (seen end to end with the
    CLI). Expected: the command the refusal names repairs the selection (a rerun with --overwrite verifies what it
    keeps, or writes the selection again)."""
    from hardfocus.contracts.decisions import decision_parts
    from hardfocus.contracts.selected import open_selected
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    rng = np.random.default_rng(3)
    write_scores(tmp_path / "scores", np.round(rng.gamma(4, 0.7, 40), 3).tolist(), rows_per_part=10)
    cfg = dict(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False, keep=0.6)
    select(SelectConfig(**cfg), progress=False)
    rewrite_keeping_stamp(tmp_path / "sel" / part, lambda t: t.set_column(
        t.schema.get_field_index("loss"), t.schema.field("loss"),
        pa.array([None if v is None else v * 1.5 for v in t["loss"].to_pylist()], t.schema.field("loss").type)))

    select(SelectConfig(**cfg, overwrite=True), progress=False)  # what the refusal says to run

    opened = open_selected(str(tmp_path / "sel"))
    for url, expected in [(d.url, d.expected) for d in decision_parts(opened)] + list(opened.parts):
        read_part(url, expected)  # refused today: the part is still the changed one


@pytest.mark.parametrize("before, now", [(["s1"], ["s1", "s2"]), (["s1", "s2"], ["s2", "s1"])], ids=["added", "reordered"])
def test_a_selection_refused_for_other_inputs_does_not_say_an_unchanged_input_changed(tmp_path, before, now):
    """``what_changed`` indexes into an input list only when both lists have the same length; otherwise it names every
    input, and for a list given in another order it names each position. So ``select s1 -o sel`` then ``select s1 s2 -o
    sel`` is refused with "made from other inputs (its inputs 's1', 's2' changed since)" though s1 did not change (an
    input was added), and ``select s2 s1`` over a selection of ``s1 s2`` with "its inputs 's2', 's1' changed since"
    though nothing changed (the order did). Expected: an unchanged input is never said to have changed (say an input
    was added, or that the inputs are given in another order)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    rng = np.random.default_rng(0)
    for name in ("s1", "s2"):
        write_scores(tmp_path / name, rng.gamma(4, 0.7, 20).tolist(), shard=f"{name}.jsonl")
    dirs = lambda names: [str(tmp_path / n) for n in names]  # noqa: E731
    select(SelectConfig(scores=dirs(before), output=str(tmp_path / "sel"), report=False), progress=False)
    with pytest.raises(HardfocusError) as refused:
        select(SelectConfig(scores=dirs(now), output=str(tmp_path / "sel"), report=False), progress=False)
    message = str(refused.value)
    unchanged = [d for d in dirs(before)]
    assert not any(f"'{d}'" in message and "changed since" in message for d in unchanged), message


def test_a_selection_of_an_earlier_layout_is_refused_saying_so_not_as_other_settings(tmp_path):
    """A selection written before the part stamp (its job file's ``decisions`` layout 1, unstamped parts) met by a rerun
    with the same settings is refused as "'sel' holds a selection made with other settings (differs in: decisions)";
    a scores/ directory of before the stamp (no ``parts`` in its job identity) likewise as "(differs in: parts)". The
    user changed no setting, and no flag is called ``decisions`` or ``parts``. Expected: the refusal says the output
    was written by an earlier version of hardfocus (and to pass --overwrite)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", np.random.default_rng(0).gamma(4, 0.7, 20).tolist())
    cfg = dict(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False)
    select(SelectConfig(**cfg), progress=False)
    job = tmp_path / "sel" / "selection_job.json"
    record = json.loads(job.read_text())
    record["identity"]["decisions"] = 1  # DECISIONS_LAYOUT of before the stamp
    job.write_text(json.dumps(record))
    with pytest.raises(HardfocusError) as refused:
        select(SelectConfig(**cfg), progress=False)
    assert "earlier version" in str(refused.value) or "older" in str(refused.value), str(refused.value)
