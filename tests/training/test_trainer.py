"""WeightedTrainer end to end on a tiny model: equivalences with a plain Trainer, ERM limits, resume."""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from scoring import HardfocusError
from tests.training.helpers import (
    equal_length_sequences,
    max_param_diff,
    mixed_length_sequences,
    parameters,
    run_killed_at_step,
    small_config,
    train_with,
    write_selected,
)
from training import WeightedTrainer, train
from training.output import TRAIN_MANIFEST_FILE
from training.sources import find_sources
from training.stream import PartWindows, TrainingStream


@pytest.fixture(scope="module")
def equal_data(tmp_path_factory) -> str:
    return write_selected(tmp_path_factory.mktemp("equal"), equal_length_sequences(32, 24, vocab=290))


def run(cfg, model_dir):
    return train(cfg.model_copy(update={"model": model_dir}), progress=False)


def test_static_with_unit_weights_matches_a_plain_trainer(tiny_model_dir, equal_data, tmp_path):
    """Equal-length samples: the mean of per-sample means is the token mean the plain Trainer uses. The plain
    Trainer reads the samples in the order the stream gives them (sequential sampling)."""
    cfg = small_config([equal_data], tmp_path / "weighted", weighting="static", max_steps=5)
    run(cfg, tiny_model_dir)
    stream = TrainingStream(PartWindows(find_sources([equal_data]), cfg.seed), lambda rows: rows, cfg.batch_size,
                            cfg.shuffle_buffer, cfg.seed, "grouped", cfg.max_seq_len)
    order = [np.asarray(r["input_ids"]).tolist() for b in itertools.islice(stream.batch_rows(), 5) for r in b]
    assert sorted(map(tuple, order)) != sorted(map(tuple, order[:1] * 20))  # 20 distinct samples

    class Plain(torch.utils.data.Dataset):
        def __init__(self, seqs):
            self.seqs = seqs

        def __len__(self):
            return len(self.seqs)

        def __getitem__(self, i):
            ids = torch.tensor(self.seqs[i])
            return {"input_ids": ids, "labels": ids.clone()}

    args = TrainingArguments(
        output_dir=str(tmp_path / "plain"), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type="constant", warmup_steps=0, seed=0, report_to="none", save_strategy="no",
        disable_tqdm=True, max_grad_norm=1.0, weight_decay=0.0, train_sampling_strategy="sequential",
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    Trainer(model=model, args=args, train_dataset=Plain(order)).train()
    plain = {k: v.detach() for k, v in model.state_dict().items()}
    weighted = parameters(str(tmp_path / "weighted"))
    base = parameters(tiny_model_dir)
    assert max_param_diff(plain, base) > 1e-3  # training moved the weights...
    assert max_param_diff(weighted, plain) < 2e-5  # ...and both moved them the same way


def test_huge_temperature_online_reproduces_erm(tiny_model_dir, equal_data, tmp_path):
    erm = run(small_config([equal_data], tmp_path / "erm", weighting="none"), tiny_model_dir)
    online = run(small_config([equal_data], tmp_path / "online", weighting="online", temperature=1e6), tiny_model_dir)
    sharp = run(small_config([equal_data], tmp_path / "sharp", weighting="online", temperature=0.05), tiny_model_dir)
    p_erm, p_online, p_sharp = (parameters(r.output) for r in (erm, online, sharp))
    assert max_param_diff(p_erm, p_online) < 2e-5
    assert max_param_diff(p_erm, p_sharp) > 1e-3  # a small temperature does change the updates


def test_gradient_accumulation_equals_one_larger_batch(tiny_model_dir, tmp_path):
    """Mixed lengths, non-uniform static weights: 2 x 4 accumulated == 1 x 8, per-sample normalisation intact."""
    seqs = mixed_length_sequences(32, vocab=290, seed=1)
    weights = torch.rand(32, generator=torch.Generator().manual_seed(0)).add(0.5).tolist()
    data = write_selected(tmp_path / "sel", seqs, weights=weights)
    # random batching: the window's shuffled rows cut in batches of 8, or of 4 (grouping depends on the batch size)
    big = run(small_config([data], tmp_path / "big", weighting="static", batch_size=8, max_steps=3, batching="random"),
              tiny_model_dir)
    acc = run(
        small_config([data], tmp_path / "acc", weighting="static", batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                     batching="random"),
        tiny_model_dir,
    )
    # The row order is the same (same seed, same window); the same 8 samples per optimiser step either way.
    assert max_param_diff(parameters(big.output), parameters(acc.output)) < 2e-5


def test_online_window_equals_the_same_batch_in_one_micro_batch(tiny_model_dir, tmp_path):
    """A softmax over a window of 2 micro-batches of 4 == a softmax over one micro-batch of 8."""
    seqs = mixed_length_sequences(32, vocab=290, seed=2)
    weights = torch.rand(32, generator=torch.Generator().manual_seed(1)).add(0.5).tolist()
    data = write_selected(tmp_path / "sel", seqs, weights=weights)
    # SGD: Adam's m / sqrt(v) would magnify float rounding on near-zero gradients
    common = dict(weighting="static+online", temperature=0.3, max_steps=3, optim="sgd", learning_rate=0.5,
                  batching="random")  # the same rows per step whatever the batch size
    one = run(small_config([data], tmp_path / "one", batch_size=8, **common), tiny_model_dir)
    window = run(small_config([data], tmp_path / "window", batch_size=4, online_window=2, **common), tiny_model_dir)
    per_mb = run(small_config([data], tmp_path / "per_mb", batch_size=4, gradient_accumulation_steps=2, **common), tiny_model_dir)
    p_one, p_window, p_mb = (parameters(r.output) for r in (one, window, per_mb))
    assert max_param_diff(p_one, p_window) < 1e-6
    assert max_param_diff(p_one, p_mb) > 1e-4  # two separate softmaxes are a different objective


def test_checkpoint_log_and_resume(tiny_model_dir, tmp_path):
    seqs = mixed_length_sequences(40, vocab=290, seed=3)
    data = write_selected(tmp_path / "sel", seqs, weights=torch.rand(40).add(0.5).tolist())
    cfg = small_config(
        [data], tmp_path / "out", weighting="static+online", max_steps=6, save_steps=3, temperature=0.5, keep_checkpoints=True
    )
    full = run(cfg, tiny_model_dir)
    final = parameters(full.output)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]  # kept: asked to
    # A loadable HF checkpoint with its tokenizer
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).pad_token == "<pad>"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    for r in train_records:
        assert r["weight_min"] <= r["weight_mean"] <= r["weight_max"]
        assert abs(r["weight_mean"] - 1) < 1e-5  # static x online is renormalised to mean 1 per batch
        assert 0 < r["weight_entropy"] <= 1
    # A second run with the same settings is a no-op
    assert run(cfg, tiny_model_dir).skipped
    # Simulate a crash after checkpoint-3: remove what came later, rerun, and land on the same parameters
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    (out / TRAIN_MANIFEST_FILE).unlink()
    (out / "model.safetensors").unlink()
    resumed = run(cfg, tiny_model_dir)
    assert resumed.resumed_from.endswith("checkpoint-3")
    assert max_param_diff(parameters(resumed.output), final) < 1e-6


def test_training_lowers_the_training_loss(tiny_model_dir, equal_data, tmp_path):
    result = run(small_config([equal_data], tmp_path / "out", weighting="static", max_steps=12, learning_rate=3e-3), tiny_model_dir)
    records = [json.loads(line) for line in open(result.log_file)]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2


def test_refusals(tiny_model_dir, tmp_path):
    seqs = equal_length_sequences(8, 10, vocab=290)
    partial = write_selected(tmp_path / "partial", seqs, with_summary=False)
    with pytest.raises(HardfocusError, match="did not finish"):
        run(small_config([partial], tmp_path / "o1"), tiny_model_dir)
    done = write_selected(tmp_path / "done", seqs)
    run(small_config([done], tmp_path / "o2", max_steps=1), tiny_model_dir)
    with pytest.raises(HardfocusError, match=r"other settings \(differs in: config.learning_rate\)"):
        run(small_config([done], tmp_path / "o2", max_steps=1, learning_rate=5e-4), tiny_model_dir)
    with pytest.raises(ValueError, match="online_window"):
        small_config([done], tmp_path / "o3", weighting="online", online_window=2, gradient_accumulation_steps=3)


def test_bf16_autocast_tracks_fp32(tiny_model_dir, equal_data, tmp_path):
    """bf16 autocast (fp32 master weights) follows the fp32 loss trajectory to bf16 precision."""

    def logged_losses(result):
        return [json.loads(line)["loss"] for line in open(result.log_file) if '"loss"' in line]

    fp32 = run(small_config([equal_data], tmp_path / "fp32", weighting="static+online", max_steps=6), tiny_model_dir)
    bf16 = run(small_config([equal_data], tmp_path / "bf16", weighting="static+online", max_steps=6, precision="bf16"), tiny_model_dir)
    a, b = logged_losses(fp32), logged_losses(bf16)
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=2e-2)
    assert b != pytest.approx(a, rel=1e-7)  # it really ran in bf16
    assert AutoModelForCausalLM.from_pretrained(bf16.output).dtype == torch.float32  # master weights saved in fp32


def test_a_finished_run_removes_its_checkpoints(tiny_model_dir, equal_data, tmp_path):
    """Nothing is left to resume once the model is written: checkpoints/ goes, the model loads and is the last checkpoint's."""
    kept = run(small_config([equal_data], tmp_path / "kept", max_steps=4, save_steps=2, keep_checkpoints=True), tiny_model_dir)
    cleaned_cfg = small_config([equal_data], tmp_path / "cleaned", max_steps=4, save_steps=2)
    cleaned = run(cleaned_cfg, tiny_model_dir)
    out = tmp_path / "cleaned"
    assert not (out / "checkpoints").exists()
    assert (out / TRAIN_MANIFEST_FILE).exists() and (out / "train_log.jsonl").exists()
    last_checkpoint = parameters(str(tmp_path / "kept" / "checkpoints" / "checkpoint-4"))
    assert max_param_diff(parameters(cleaned.output), last_checkpoint) == 0.0
    assert max_param_diff(parameters(kept.output), last_checkpoint) == 0.0
    # A run stopped between its manifest and the clean-up: the rerun is a no-op that finishes the clean-up
    shutil.copytree(tmp_path / "kept" / "checkpoints", out / "checkpoints")
    assert run(cleaned_cfg, tiny_model_dir).skipped
    assert not (out / "checkpoints").exists()


def test_a_run_killed_before_the_end_resumes_from_its_checkpoint(tiny_model_dir, equal_data, tmp_path, monkeypatch):
    cfg = small_config([equal_data], tmp_path / "out", weighting="static+online", temperature=0.5, max_steps=5, save_steps=2)
    uninterrupted = parameters(run(small_config([equal_data], tmp_path / "full", **_same(cfg)), tiny_model_dir).output)
    run_killed_at_step(4, cfg, tiny_model_dir, monkeypatch)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # kept: the run can resume
    assert not (out / TRAIN_MANIFEST_FILE).exists()
    resumed = run(cfg, tiny_model_dir)
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.steps == 5
    assert max_param_diff(parameters(resumed.output), uninterrupted) < 1e-6
    assert not (out / "checkpoints").exists()
    # The log holds each step once (step 3 was logged before the kill and again after the resume), as uninterrupted
    logged, reference = (_train_records(p / "train_log.jsonl") for p in (out, tmp_path / "full"))
    assert [r["step"] for r in logged] == [r["step"] for r in reference] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in logged] == pytest.approx([r["loss"] for r in reference], rel=1e-5)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_fresh_log(tiny_model_dir, equal_data, tmp_path, monkeypatch):
    cfg = small_config([equal_data], tmp_path / "out", max_steps=3, save_steps=10)
    run_killed_at_step(3, cfg, tiny_model_dir, monkeypatch)
    log_file = tmp_path / "out" / "train_log.jsonl"
    assert [r["step"] for r in _train_records(log_file)] == [1, 2]
    with open(log_file, "a") as f:  # a record the kill cut short
        f.write('{"step": 3, "lo')
    restarted = run(cfg, tiny_model_dir)
    assert restarted.resumed_from is None
    assert [r["step"] for r in _train_records(log_file)] == [1, 2, 3]


def _train_records(log_file) -> list[dict]:
    return [r for r in map(json.loads, open(log_file)) if "loss" in r]


def _same(cfg) -> dict:
    return cfg.model_dump(exclude={"data", "output"})


def test_each_logged_step_is_one_readable_line_with_the_logged_values(tiny_model_dir, tmp_path, caplog, capsys):
    """One line per log record: step/total, loss, weights, s/step, ETA, the values of train_log.jsonl; no raw dicts."""
    seqs = mixed_length_sequences(24, vocab=290, seed=5)
    data = write_selected(tmp_path / "sel", seqs, weights=torch.rand(24, generator=torch.Generator().manual_seed(2)).add(0.5).tolist())
    cfg = small_config([data], tmp_path / "out", weighting="static+online", temperature=0.5, max_steps=6, logging_steps=2, model=tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="training.progress"):
        result = train(cfg, progress=True)  # progress on: the stock printers would print here
    records = [json.loads(line) for line in open(result.log_file) if '"loss"' in line]
    lines = [r.getMessage() for r in caplog.records if r.name == "training.progress" and r.getMessage().startswith("step ")]
    assert len(records) == len(lines) == 3
    number = r"(-?[\d.]+(?:e-?\d+)?)"
    pattern = re.compile(
        rf"step (\d+)/(\d+) \| loss {number} \| weighted {number} \| weights min {number} mean {number} max {number}"
        rf" \| lr {number} \| {number} s/step \| ETA ((?:\d+h)?(?:\d+m)?\d+s)$"
    )
    for line, record in zip(lines, records):
        m = pattern.match(line)
        assert m, line
        step, total, loss, weighted, w_min, w_mean, w_max, lr, sec, eta = m.groups()
        assert (int(step), int(total)) == (record["step"], 6)
        assert float(loss) == pytest.approx(record["loss"], abs=5e-5)
        assert float(weighted) == pytest.approx(record["weighted_loss"], abs=5e-5)
        for got, key in ((w_min, "weight_min"), (w_mean, "weight_mean"), (w_max, "weight_max")):
            assert float(got) == pytest.approx(record[key], abs=5e-4)
        assert float(lr) == pytest.approx(record["learning_rate"], rel=1e-2)
        assert float(sec) >= 0
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_a_resumed_run_sees_the_samples_of_an_uninterrupted_one_across_windows_and_epochs(
        tiny_model_dir, tmp_path, monkeypatch, batching):
    """30 mixed-length rows in windows of 8: 8 batches of 4 an epoch (the last of 2 rows). Killed in step 11 (in
    the second epoch, checkpoint at step 6, in the first), the resumed run trains the batches the uninterrupted
    one trained: every batch each saw is recorded, and the final weights agree."""
    seqs = mixed_length_sequences(30, vocab=290, seed=11)
    data = write_selected(tmp_path / "sel", seqs, weights=np.linspace(0.5, 1.5, 30).tolist())
    cfg = small_config([data], tmp_path / "out", weighting="static+online", temperature=0.5, max_steps=14,
                       save_steps=6, shuffle_buffer=8, batching=batching)
    seen: dict[str, list] = {"full": [], "out": []}
    original = WeightedTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        seen[Path(self.args.output_dir).parent.name].append(sorted(inputs["input_ids"].flatten().tolist()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(WeightedTrainer, "compute_loss", recording)
    uninterrupted = parameters(run(small_config([data], tmp_path / "full", **_same(cfg)), tiny_model_dir).output)
    run_killed_at_step(11, cfg, tiny_model_dir, monkeypatch)
    before_kill = list(seen["out"])
    resumed = run(cfg, tiny_model_dir)
    assert resumed.resumed_from.endswith("checkpoint-6")
    assert seen["out"][:10] == seen["full"][:10] and len(before_kill) == 10
    assert seen["out"][10:] == seen["full"][6:]  # steps 7..14 again from the checkpoint, the same batches
    assert max_param_diff(parameters(resumed.output), uninterrupted) < 1e-6


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_the_eval_loss_is_the_mean_loss_of_the_held_out_rows(tiny_model_dir, tmp_path, batching):
    """Pinned: with 5 held-out rows in batches of 4 (a last, shorter batch), ``eval_loss`` is the mean of the 5
    rows' own losses, padded or packed (the Trainer repeats each batch's mean ``eval_batch_size`` times, and
    accelerate's ``gather_for_metrics`` drops the last batch's repeats)."""
    from transformers import AutoModelForCausalLM

    from training.build import build_trainer, training_arguments
    from training.collator import WeightedCollator
    from training.data import TokenDataset, load_training_data
    from training.weighting import per_sample_nll

    seqs = mixed_length_sequences(5, vocab=290, seed=12)
    heldout = write_selected(tmp_path / "held", seqs)
    cfg = small_config([heldout], tmp_path / "out", batch_size=4, batching=batching, eval_data=[heldout])
    args = training_arguments(cfg, bf16=False, progress=False, with_eval=True)
    trainer = build_trainer(cfg, tiny_model_dir, args, None, TokenDataset(load_training_data([heldout]).table))
    got = trainer.evaluate()["eval_loss"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        alone = []
        for s in seqs:
            one = WeightedCollator(pad_token_id=0, max_seq_len=512)([{"input_ids": s, "weight": 1.0}])
            alone.append(float(per_sample_nll(model(input_ids=one["input_ids"]).logits, one["labels"])[0][0]))
    assert got == pytest.approx(float(np.mean(alone)), rel=1e-4), \
        f"eval_loss {got} is not the mean {np.mean(alone)} of the held-out rows' losses {alone}"


def batch_rows(inputs: dict) -> list[tuple[int, ...]]:
    """The samples of a collated batch, padded or packed, as tuples of token ids (sorted: the order is not compared)."""
    ids = inputs["input_ids"]
    if "sample_index" in inputs:
        index = inputs["sample_index"].tolist()
        flat = ids[0].tolist()
        out: dict[int, list[int]] = {}
        for i, t in zip(index, flat):
            out.setdefault(i, []).append(t)
        return sorted(tuple(v) for v in out.values())
    mask = inputs["attention_mask"]
    return sorted(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask))


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_a_resume_with_an_online_window_of_two_micro_batches_lands_on_the_uninterrupted_weights(
        tiny_model_dir, tmp_path, monkeypatch, batching):
    """Gradient accumulation 2 (IR-DRO over the step's two micro-batches), 13 rows in windows of 4 (the epoch's
    last batch holds 1 row, an epoch is 4 micro-batches): killed in step 4 (checkpoint at step 2, in the second
    epoch after it), the resumed run trains the uninterrupted run's batches and lands on its weights."""
    data = write_selected(tmp_path / "sel", mixed_length_sequences(13, vocab=290, seed=31),
                          weights=np.linspace(0.5, 1.5, 13).tolist())
    common = dict(weighting="static+online", online_window=2, temperature=0.5, max_steps=5, save_steps=2,
                  shuffle_buffer=4, batching=batching, optim="sgd", learning_rate=0.5)
    seen: dict[str, list] = {"full": [], "out": []}
    original = WeightedTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            seen[Path(self.args.output_dir).parent.name].append(batch_rows(inputs))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(WeightedTrainer, "compute_loss", recording)
    full = train_with(small_config([data], tmp_path / "full", **common), tiny_model_dir)
    cfg = small_config([data], tmp_path / "out", **common)
    run_killed_at_step(7, cfg, tiny_model_dir, monkeypatch)  # the 7th micro-batch: in step 4
    resumed = train_with(cfg, tiny_model_dir)
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert len(seen["full"]) == 10 and seen["out"][6:] == seen["full"][4:]
    assert max_param_diff(parameters(resumed.output), parameters(full.output)) < 1e-6
