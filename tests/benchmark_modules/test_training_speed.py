"""benchmarks/training_speed.py: what it counts and builds, not how fast anything is (no SmolLM2 here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture
def speed():
    from benchmarks import training_speed

    return training_speed


def _padded(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1, n + 1)
        mask[i, :n] = 1
    return ids, mask


def test_batch_counts_real_tokens_and_computed_positions(speed):
    lengths = [5, 2, 3, 1]
    ids, mask = _padded(lengths, 5)
    assert speed.batch_counts(ids, mask) == [4, 5, sum(lengths), 4]
    left = mask.flip(1)  # left padding: the same count
    assert speed.batch_counts(ids, left) == [4, 5, 11, 4]
    # a packed row: no mask of the batch's shape, every position is a token; samples start where position_ids is 0
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert speed.batch_counts(position_ids + 7, None, position_ids) == [1, 9, 9, 3]
    assert speed.batch_counts(position_ids + 7, torch.ones((1, 1, 9, 9)), position_ids) == [1, 9, 9, 3]
    assert speed.batch_counts(np.ones((2, 3)), np.array([[1, 1, 0], [1, 0, 0]])) == [2, 3, 3, 2]


def test_token_totals_against_a_direct_count(speed):
    batches = [[2, 4, 6, 2], [3, 2, 5, 3], [1, 7, 7, 2]]
    totals = speed.token_totals(batches)
    computed = 2 * 4 + 3 * 2 + 1 * 7
    assert totals == {"micro_batches": 3, "samples": 7, "real_tokens": 18, "computed_positions": computed,
                      "real_share": 18 / computed, "mean_sample_tokens": 18 / 7}
    assert speed.token_totals([])["real_share"] is None


def test_long_tail_lengths_have_the_asked_median_and_tail(speed):
    lengths = speed.long_tail_lengths(50_000, median=100, p90=400, max_len=512, seed=3)
    assert lengths.min() >= speed.MIN_SAMPLE_TOKENS and lengths.max() == 512
    assert abs(np.median(lengths) - 100) <= 4
    assert abs((lengths > 400).mean() - 0.10) <= 0.01
    assert 0.05 <= (lengths == 512).mean() <= 0.08  # the lognormal's P(> 512) = 6.6%: the cut samples
    assert np.array_equal(lengths, speed.long_tail_lengths(50_000, 100, 400, 512, seed=3))
    assert not np.array_equal(lengths[:100], speed.long_tail_lengths(100, 100, 400, 512, seed=4))
    with pytest.raises(ValueError):
        speed.long_tail_lengths(10, median=400, p90=100)


def test_long_tail_parts_are_a_token_directory_training_reads(speed, tmp_path):
    from hardfocus.kinds import identify
    from training.sources import find_sources

    stream = np.arange(10_000, dtype=np.int32)
    lengths = np.array([3, 50, 8, 200, 17] * 7)
    samples = speed.cut_samples(stream, lengths)
    assert [len(s) for s in samples] == list(lengths)
    assert np.array_equal(np.concatenate(samples), stream[: lengths.sum()])
    with pytest.raises(ValueError):
        speed.cut_samples(stream[:10], lengths)
    weights = np.linspace(0.5, 1.5, len(samples))
    assert speed.write_token_parts(tmp_path / "parts", samples, weights, rows_per_part=16) == 3
    assert identify(str(tmp_path / "parts")).kind == "parts"
    sources = find_sources([str(tmp_path / "parts")])
    assert sources.kinds == {str(tmp_path / "parts"): "tokens"} and sources.rows == len(samples) and sources.has_weights
    read = speed.read_input_ids(tmp_path / "parts", max_seq_len=20)
    assert [len(r) for r in read] == [min(n, 20) for n in lengths]
    assert read[1] == list(range(3, 23))


def test_stock_child_trains_and_the_probe_counts_every_row(speed, tmp_path, tiny_model_dir, monkeypatch):
    """The stock arm end to end on the tiny model: one epoch (steps x batch = rows), so the real tokens the probe
    counts must be every row's tokens after the cut, whatever order the sampler chose."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", Trainer.train)  # the probe wraps it; restored after the test
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=8)
    speed.write_token_parts(tmp_path / "parts", [rng.integers(3, 200, n).astype(np.int32) for n in lengths], np.ones(8))
    probe = tmp_path / "probe.json"
    assert speed.stock_child(["--data", str(tmp_path / "parts"), "--output", str(tmp_path / "out"), "--model-path",
                              tiny_model_dir, "--strategy", "group_by_length", "--steps", "4", "--batch-size", "2",
                              "--max-seq-len", "32", "--precision", "fp32", "--logging-steps", "2",
                              "--probe", str(probe)]) == 0
    record = json.loads(probe.read_text())
    totals = speed.token_totals(record["batches"])
    assert record["global_step"] == 4 and record["error"] is None and record["loop_s"] > 0
    assert totals["micro_batches"] == 4 and totals["samples"] == 8
    assert totals["real_tokens"] == int(np.minimum(lengths, 32).sum())
    assert all(rows == 2 and width <= 32 and real <= rows * width for rows, width, real, _ in record["batches"])
    assert record["trainer"]["train_sampling_strategy"] == "group_by_length"
    assert (tmp_path / "out" / "config.json").is_file()


def _run(arm: str, dataset: str, real: int, seconds: float, loop: float, rnd: int = 0, ok: bool = True) -> dict:
    return {"dataset": dataset, "arm": arm, "ok": ok, "round": rnd, "process_s": seconds, "loop_s": loop,
            "real_tokens": real, "computed_positions": 2 * real, "samples": 8, "real_share": 0.5,
            "mean_sample_tokens": real / 8, "peak_rss_gb": 1.0, "other_load": 0.0}


def test_summary_ratios_and_verdict(speed):
    arms = ["stock-random", "stock-grouped", "hardfocus-static", "hardfocus-none/packed"]
    runs = [_run("stock-random", "demo", 1000, 10.0, 8.0), _run("stock-random", "demo", 1000, 30.0, 8.0, rnd=1),
            _run("stock-grouped", "demo", 1000, 5.0, 4.0),
            _run("hardfocus-static", "demo", 1200, 4.0, 3.0),
            _run("hardfocus-none/packed", "demo", 1000, 5.0, 5.0), _run("hardfocus-none/packed", "demo", 1, 1.0, 1.0, ok=False)]
    s = speed.summarise(runs, arms, ["demo"])["demo"]
    random_tok_s = (100 + 1000 / 30) / 2  # the median of the two rounds' real tokens/s
    assert s["arms"]["stock-random"]["tok_s_process"] == pytest.approx(random_tok_s)
    static = s["arms"]["hardfocus-static"]
    assert static["tok_s_process"] == 300 and static["tok_s_loop"] == 400
    assert static["process_vs_stock-grouped"] == pytest.approx(300 / 200)
    assert static["process_vs_stock-random"] == pytest.approx(300 / random_tok_s)
    assert static["loop_vs_stock-random"] == pytest.approx(400 / 125)
    assert s["verdict"]["hardfocus-static"] == {"process": {"vs_grouped": True, "vs_random": True},
                                                "loop": {"vs_grouped": True, "vs_random": True}}
    packed = s["arms"]["hardfocus-none/packed"]
    assert (packed["runs"], packed["ok_runs"], packed["tok_s_process"]) == (2, 1, 200)
    assert packed["process_vs_stock-grouped"] == 1.0  # the target is >=: met at exactly 1.00x
    assert s["verdict"]["hardfocus-none/packed"]["process"] == {"vs_grouped": True, "vs_random": True}
    assert packed["loop_vs_stock-random"] == pytest.approx(200 / 125)
    assert s["verdict"]["hardfocus-none/packed"]["loop"] == {"vs_grouped": False, "vs_random": True}
    assert set(s["verdict"]) == {"hardfocus-static", "hardfocus-none/packed"}


def test_arguments_arms_and_quick_defaults(speed):
    args = speed.parse_args(["--quick", "--hardfocus-arms", "static,static+online", "--batching", "default,packed",
                             "--steps", "3", "--train-arg=--online-window 1", "--train-arg=--seed=1"])
    assert (args.steps, args.rounds, args.batch_size) == (3, 1, speed.QUICK["batch_size"])  # a given flag wins
    assert speed.arm_names(args) == ["stock-random", "stock-grouped", "hardfocus-static", "hardfocus-static/packed",
                                     "hardfocus-static+online", "hardfocus-static+online/packed"]
    assert args.train_args == ["--online-window", "1", "--seed=1"]
    assert speed.parse_arm("hardfocus-static+online/packed") == ("hardfocus", "static+online", "packed")
    assert speed.parse_arm("stock-grouped") == ("stock", "grouped", None)
    full = speed.parse_args([])
    assert (full.steps, full.batch_size, full.max_seq_len, full.rounds) == (16, 8, 512, 1)
    assert speed.arm_names(full) == ["stock-random", "stock-grouped", "hardfocus-none", "hardfocus-static",
                                     "hardfocus-online"]
    assert full.out.name == "training_speed.md" and full.out.parent.name == "results"
    with pytest.raises(SystemExit):
        speed.parse_args(["--hardfocus-arms", "dro"])
