"""A trained checkpoint runs under lm-evaluation-harness, offline, on a task defined from a local JSON file."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import ENGLISH
from tests.training.helpers import mixed_length_sequences, small_config, write_selected
from training import train


def make_task(root) -> list[dict]:
    """Sentence openings; choices are the true ending and the endings of other sentences."""
    docs = []
    for i, sentence in enumerate(ENGLISH):
        words = sentence.split()
        cut = len(words) // 2
        endings = [" ".join(ENGLISH[(i + k) % len(ENGLISH)].split()[cut:]) for k in range(3)]
        docs.append({"question": " ".join(words[:cut]), "choices": endings, "answer": 0})
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "hardfocus_mc.yaml").write_text(
        "task: hardfocus_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    return docs


def continuation_logprob(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), tokens split as context vs context+continuation (lm-eval's convention)."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logprobs[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def test_checkpoint_runs_under_lm_eval_harness(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    data = write_selected(tmp_path / "sel", mixed_length_sequences(16, vocab=290))
    out = train(small_config([data], tmp_path / "model", max_steps=2, model=tiny_model_dir), progress=False).output
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    docs = make_task(task_dir)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},dtype=float32",
        tasks=["hardfocus_mc"],
        task_manager=TaskManager(include_path=str(task_dir)),
        device="cpu",
        batch_size=2,
        log_samples=True,
    )
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    samples = sorted(results["samples"]["hardfocus_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    correct = 0
    for sample, doc in zip(samples, docs):
        theirs = [r[0] for r in sample["filtered_resps"]]  # (loglikelihood, is_greedy) per choice
        ours = [continuation_logprob(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        assert theirs == pytest.approx(ours, abs=1e-3)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == doc["answer"])
    assert results["results"]["hardfocus_mc"]["acc,none"] == pytest.approx(correct / len(docs))
