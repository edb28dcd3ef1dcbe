"""The quality benchmark end to end at toy size (tiny model, 2 steps, every arm), so it cannot rot; the arms
that rank by IFD and by excess loss, and the per-group ones, checked against the bands computed here from the score
columns; the gpu preset resolved and run tiny on the CPU."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.conftest import conversations, real_texts, write_jsonl


def load_quality():
    from benchmarks import quality

    return quality


def test_quality_benchmark_smoke(tmp_path, tiny_model_dir):
    q = load_quality()
    texts = real_texts(90, seed=5)
    corpus = tmp_path / "corpus"
    for g, chunk in (("a", texts[:35]), ("b", texts[35:70])):
        rows = [{"text": t, "group": g, "noise": None} for t in chunk]
        rows += [{"text": "".join(reversed(t)) + " zq xv", "group": g, "noise": "shuffled_words"} for t in chunk[:3]]
        write_jsonl(corpus / "train" / f"{g}.jsonl", rows)
        write_jsonl(corpus / "heldout" / f"{g}.jsonl", [{"text": t, "group": g} for t in texts[70:80] if t.strip()])
        write_jsonl(corpus / "reference" / f"{g}.jsonl", [{"text": t, "group": g} for t in texts[80:90] if t.strip()])
    s = q.Settings(model=tiny_model_dir, steps=2, seeds=(0,), batch_size=4, seq_len=64, eval_every=1,
                   score_dtype="float32", eval_dtype="float32", precision="fp32", learning_rate=1e-3)
    report = q.run_quality(tmp_path / "work", s, corpus=corpus)
    assert [r["arm"] for r in report["runs"]] == [  # written here, not read from the benchmark under test
        "ERM", "Hardest", "MidRanking", "MidRanking + static IR-DRO", "Online IR-DRO",
        "MidRanking + static+online IR-DRO", "MidRanking on excess loss", "MidRanking per group",
        "MidRanking on excess loss per group",
    ]
    assert "MidRanking on excess loss" in [r["arm"] for r in report["runs"]]
    for r in report["runs"]:
        assert [step for step, _ in r["curve"]] == [0, 1, 2]
        assert set(r["heldout"]) == {"a", "b", "(all)", "(macro)"}

    # the noise accounting, checked directly: the Hardest arm trains on the top-K losses of the scores
    scores = pl.read_parquet(f"{tmp_path / 'work' / 'scores'}/part-*.parquet").filter(pl.col("status") == "ok")
    labels = q.noise_labels(corpus)
    hardest_ids = scores.sort(["loss", "sample_id"], descending=[True, False]).head(report["kept_rows"])["sample_id"]
    expected = labels.filter(pl.col("sample_id").is_in(hardest_ids.implode()) & pl.col("noise").is_not_null()).height
    hardest = next(r for r in report["runs"] if r["arm"] == "Hardest")
    assert hardest["noise"]["noise_rows"] == expected and hardest["noise"]["rows"] == report["kept_rows"]
    erm = next(r for r in report["runs"] if r["arm"] == "ERM")
    assert erm["noise"]["rows"] == report["kept_rows"]

    # the excess arm trains on the MidRanking band of loss - the reference model's loss, recomputed here
    ref = pl.read_parquet(f"{report['reference']['scores']}/part-*.parquet").filter(pl.col("status") == "ok")
    excess = scores.join(ref.select("sample_id", ref_loss="loss"), on="sample_id").with_columns(
        excess=(pl.col("loss") - pl.col("ref_loss")).cast(pl.Float32))
    assert report["reference"]["split_rows"] == pl.read_ndjson(corpus / "reference" / "*.jsonl").height
    arm = next(r for r in report["runs"] if r["arm"] == "MidRanking on excess loss")
    assert set(pl.read_parquet(f"{arm['train_data']}/part-*.parquet")["sample_id"]) == _midrank_ids(
        excess, "excess", report["kept_rows"])
    assert arm["noise"]["rows"] == report["kept_rows"]
    # the per-group arms: each group's own MidRanking band (of its excess loss, of its loss), recomputed here
    for name, column, frame in (("MidRanking on excess loss per group", "excess", excess), ("MidRanking per group", "loss", scores)):
        arm = next(r for r in report["runs"] if r["arm"] == name)
        expected = set().union(*(_midrank_ids(g, column, g.height // 2) for g in frame.partition_by("group")))
        assert set(pl.read_parquet(f"{arm['train_data']}/part-*.parquet")["sample_id"]) == expected
        assert arm["train_rows"] == len(expected) == report["kept_rows"]

    rows = q.summarise(report)
    assert len(rows) == 9 and all(r["seeds"] == 1 for r in rows)
    q.plot_curves(report, tmp_path / "curves.png")
    text = q.markdown(report, rows, "python benchmarks/quality.py --smoke", "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and "| MidRanking + static IR-DRO |" in text
    assert "- Per-group arms: `select --per-group`" in text and "Training sets not of" not in text


def _midrank_ids(frame: pl.DataFrame, column: str, kept: int) -> set[str]:
    """The MidRanking band by hand: the highest floor(n * 0.1) dropped, the next ``kept`` kept (ties by sample_id)."""
    ranked = frame.sort([column, "sample_id"], descending=[True, False])
    return set(ranked["sample_id"].slice(int(ranked.height * 0.1), kept))


def test_quality_chat_ifd_arm(tmp_path, tiny_chat_model_dir):
    """--kind chat: the IFD arm trains on the MidRanking band of IFD (rows with IFD >= 1 left out), as large as
    the loss band."""
    q = load_quality()
    convs = conversations(80, seed=3)
    corpus = tmp_path / "corpus"
    rows = [{"id": f"c{i}", "group": "a" if i % 2 else "b", "messages": m, "noise": None} for i, m in enumerate(convs[:60])]
    swapped = [{"id": f"c{i}-noise", "group": "a", "messages": [dict(m) for m in convs[i]], "noise": "swapped"} for i in range(6)]
    for row, donor in zip(swapped, convs[40:46]):  # every reply from another conversation
        replies = iter([m["content"] for m in donor if m["role"] == "assistant"] * 4)
        row["messages"] = [m | {"content": next(replies)} if m["role"] == "assistant" else m for m in row["messages"]]
    write_jsonl(corpus / "train" / "chat.jsonl", rows + swapped)
    write_jsonl(corpus / "heldout" / "chat.jsonl", [{"id": f"h{i}", "group": "a", "messages": m} for i, m in enumerate(convs[60:])])
    s = q.Settings(model=tiny_chat_model_dir, kind="chat", steps=1, seeds=(0,), batch_size=4, seq_len=96, eval_every=1,
                   score_dtype="float32", eval_dtype="float32", precision="fp32", keep=0.3,
                   arms=("MidRanking", "MidRanking on IFD"))
    report = q.run_quality(tmp_path / "work", s, corpus=corpus)
    assert [r["arm"] for r in report["runs"]] == ["MidRanking", "MidRanking on IFD"]

    scores = pl.read_parquet(f"{tmp_path / 'work' / 'scores'}/part-*.parquet").filter(pl.col("status") == "ok")
    below_1 = scores.filter(pl.col("ifd").is_finite() & (pl.col("ifd") < 1))
    assert scores["ifd"].null_count() == 0 and 0 < below_1.height
    arm = next(r for r in report["runs"] if r["arm"] == "MidRanking on IFD")
    summary = q.selection_summary(Path(arm["train_data"]))
    assert summary["excluded"].get("ifd >= 1 (the prompt does not help)", 0) == scores.filter(pl.col("ifd") >= 1).height
    trained = set(pl.read_parquet(f"{arm['train_data']}/part-*.parquet")["sample_id"])
    n = below_1.height  # the same size as the loss band, unless fewer rows than that lie below the dropped band
    assert len(trained) == min(report["kept_rows"], int(n * (1 - 0.1)))
    assert trained == _midrank_ids(below_1, "ifd", len(trained))
    assert "MidRanking on IFD" in q.markdown(report, q.summarise(report), "python benchmarks/quality.py", "c.png")


def test_gpu_preset_resolves_and_runs_tiny_on_cpu(tmp_path, tiny_model_dir):
    """The gpu preset: bf16 everywhere, >= 10x the CPU preset's token budget, the same arms and seeds; flags
    override it, and a tiny run of it works on the CPU (device auto resolves to cpu here)."""
    q = load_quality()
    cpu, gpu = q.preset_settings("cpu"), q.preset_settings("gpu")
    assert (gpu.precision, gpu.score_dtype, gpu.eval_dtype) == ("bf16", "bfloat16", "bfloat16")
    assert gpu.steps * gpu.batch_size * gpu.seq_len >= 10 * cpu.steps * cpu.batch_size * cpu.seq_len
    assert gpu.steps >= 10 * cpu.steps and gpu.seeds == cpu.seeds == (0, 1, 2)
    for kind in ("text", "chat"):
        assert q.arms_for(q.preset_settings("gpu", kind=kind)) == q.arms_for(q.preset_settings("cpu", kind=kind))
    assert q.preset_settings("gpu", steps=3, model=None).steps == 3 and q.preset_settings("gpu", model=None).model == cpu.model

    texts = real_texts(40, seed=9)
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "train" / "a.jsonl", [{"text": t, "group": "a", "noise": None} for t in texts[:30]])
    write_jsonl(corpus / "heldout" / "a.jsonl", [{"text": t, "group": "a"} for t in texts[30:] if t.strip()])
    tiny = q.preset_settings("gpu", model=tiny_model_dir, steps=1, batch_size=2, seq_len=32, eval_every=1, seeds=(0,),
                             arms=("ERM",))
    report = q.run_quality(tmp_path / "work", tiny, corpus=corpus)
    assert report["device"] == "cpu" and report["settings"]["precision"] == "bf16"
    assert report["settings"]["preset"] == "gpu" and [r["arm"] for r in report["runs"]] == ["ERM"]
    assert [step for step, _ in report["runs"][0]["curve"]] == [0, 1]
