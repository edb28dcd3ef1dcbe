"""The quality benchmark end to end at toy size (tiny model, 2 steps, every arm), so it cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import polars as pl

from tests.conftest import real_texts, write_jsonl


def load_quality():
    path = Path(__file__).parent.parent / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_smoke(tmp_path, tiny_model_dir):
    q = load_quality()
    texts = real_texts(90, seed=5)
    corpus = tmp_path / "corpus"
    for g, chunk in (("a", texts[:35]), ("b", texts[35:70])):
        rows = [{"text": t, "group": g, "noise": None} for t in chunk]
        rows += [{"text": "".join(reversed(t)) + " zq xv", "group": g, "noise": "shuffled_words"} for t in chunk[:3]]
        write_jsonl(corpus / "train" / f"{g}.jsonl", rows)
        write_jsonl(corpus / "heldout" / f"{g}.jsonl", [{"text": t, "group": g} for t in texts[70:80] if t.strip()])
    s = q.Settings(model=tiny_model_dir, steps=2, seeds=(0,), batch_size=4, seq_len=64, eval_every=1,
                   score_dtype="float32", eval_dtype="float32", precision="fp32", learning_rate=1e-3)
    report = q.run_quality(tmp_path / "work", s, corpus=corpus)
    assert [r["arm"] for r in report["runs"]] == [a.name for a in q.ARMS]
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

    rows = q.summarise(report)
    assert len(rows) == 6 and all(r["seeds"] == 1 for r in rows)
    q.plot_curves(report, tmp_path / "curves.png")
    text = q.markdown(report, rows, "python benchmarks/quality.py --smoke", "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and "| MidRanking + static IR-DRO |" in text
