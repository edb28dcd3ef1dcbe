"""Shared fixtures: a tiny random-initialised causal LM with a tokenizer trained on the fly, real text."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import hypothesis  # noqa: F401 - imported (and assertion-rewritten) before any test starts Ray: CPython 3.11's
import pytest  # ast.parse can fail after Ray's driver threads ran ("AST constructor recursion depth mismatch")

from tests.s3 import s3_server, s3_url  # noqa: F401 - fixtures: a moto S3 server, a prefix per test

ENGLISH = [
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "She opened the window and listened to the rain falling on the garden.",
    "Software is distributed under the License on an as is basis, without warranties.",
    "A river flows from the mountains to the sea, carrying sand and stones.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
    "The library was quiet except for the sound of pages turning slowly.",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep converted models and fingerprints of the test session out of the user's cache."""
    os.environ["HARDFOCUS_CACHE"] = str(tmp_path_factory.mktemp("hardfocus-cache"))


@pytest.fixture(scope="session")
def local_ray(request):
    """One local Ray for the in-process Ray tests of the session (a start costs ~10 s on 2 cores), started as
    ``scoring.executors.init_ray`` starts one; ``score`` and ``train`` find it initialised, use it and leave it up.
    Tests about starting, killing, connecting to or routing the console of a Ray run their own (a CLI subprocess,
    or ``ray start`` in tests/ray_cluster.py)."""
    import ray

    from tests.s3 import s3_environment_before_ray

    s3_environment_before_ray(request)
    if ray.is_initialized():  # a test started a Ray of its own and left it up: not this fixture's to reuse
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _system_config={"worker_niceness": 0, "enable_metrics_collection": False})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def scored_corpus(tmp_path_factory, tiny_model_dir) -> dict:
    """A corpus of 101 rows (``make_corpus(n_parquet=60, n_jsonl=40)``: a Parquet and a JSONL.gz shard, a few
    unscoreable rows, one bad JSON line) scored in-process into 21 parts of 5 rows: the reference of the Ray tests
    that kill, resume or spread this job. ``settings``: the ScoreConfig fields it was scored with (but inputs,
    output, executor); ``inputs`` and ``reference`` are directories to read, not to write."""
    from scoring import ScoreConfig, score
    from tests.scoring.helpers import make_corpus

    root = tmp_path_factory.mktemp("scored-corpus")
    make_corpus(root, n_parquet=60, n_jsonl=40)
    settings = dict(model=tiny_model_dir, dtype="float32", device="cpu", group_column="domain", max_tokens=64,
                    rows_per_unit=5, token_budget=512)
    result = score(ScoreConfig(inputs=[str(root / "in")], output=str(root / "reference"), executor="local", **settings),
                   progress=False)
    return {"inputs": root / "in", "reference": root / "reference", "result": result, "settings": settings}


# rows 3 and 8 of two_scored_shards' a.jsonl: texts of the same UTF-8 length (so their JSON lines are too), other words
SAME_LENGTH = ("The river carried sand and stones down to the sea.", "She listened to the rain that fell on the gardens.")


@pytest.fixture(scope="session")
def two_scored_shards(tmp_path_factory, tiny_model_dir) -> dict:
    """``in/a.jsonl`` and ``in/b.jsonl``, a dozen rows of real text each (``domain`` web), no id column (default ids
    ``<rel>#<row>``), rows 3 and 8 of ``a.jsonl`` of equal byte length (:data:`SAME_LENGTH`), scored in this process
    into one scores/ directory of parts of 6 rows: read only by the tests. ``a``: the rows of ``a.jsonl``."""
    from scoring import ScoreConfig, score

    root = tmp_path_factory.mktemp("two-scored-shards")
    texts = [t[:200] for t in real_texts(60, seed=31) if t.strip()][:12]
    a = [{"text": t, "domain": "web"} for t in texts]
    a[3]["text"], a[8]["text"] = SAME_LENGTH
    write_jsonl(root / "in" / "a.jsonl", a)
    write_jsonl(root / "in" / "b.jsonl", [{"text": t[:200], "domain": "web"} for t in real_texts(60, seed=32) if t.strip()][:12])
    score(ScoreConfig(inputs=[str(root / "in")], output=str(root / "scores"), model=tiny_model_dir, executor="local",
                      dtype="float32", device="cpu", max_tokens=64, rows_per_unit=6), progress=False)
    return {"root": root, "inputs": root / "in", "scores": str(root / "scores"), "a": a}


def real_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Real English/code text from this machine (licenses, Python sources), cut to mixed lengths."""
    import sysconfig

    sources = sorted(Path("/usr/share/common-licenses").glob("*")) if Path("/usr/share/common-licenses").exists() else []
    sources += sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]
    pool = []
    for p in sources:
        try:
            text = p.read_text(errors="ignore")
        except (OSError, IsADirectoryError):
            continue
        pool.extend(text[i : i + 4000] for i in range(0, min(len(text), 40000), 4000))
    rng = random.Random(seed)
    return [rng.choice(pool)[: rng.choice([20, 60, 200, 800, 3000])] for _ in range(n)]


def _tiny_llama(path: Path, special_tokens: list[str], vocab_size: int, seed: int, chat_template: str | None = None) -> str:
    """A 2-layer Llama with a byte-level BPE trained here on real text, saved as an HF checkpoint.

    ``special_tokens`` are pad, BOS, EOS (ids 0, 1, 2), then any others.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(ENGLISH * 5 + real_texts(60), trainer)
    pad, bos, eos = special_tokens[:3]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos)
    if chat_template:
        fast.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama with a 300-token byte-level BPE trained here, saved as an HF checkpoint."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-model"), ["<pad>", "<s>", "</s>"], 300, seed=0)


@pytest.fixture(scope="session")
def bos_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with a tokenizer that puts BOS before every text, as Llama's does (the tiny one adds none)."""
    import shutil

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-bos") / "model"
    shutil.copytree(tiny_model_dir, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path)("a b")["input_ids"][0] == 1
    return str(path)


# ChatML as SmolLM2 ships it (a default system prompt when the conversation has none) ...
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ... and the same rendering with HF's generation markers, from which transformers derives its own assistant mask
CHATML_GENERATION = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> str:
    """Like ``tiny_model_dir``, with ChatML's special tokens and chat template."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-chat-model"), ["<pad>", "<|im_start|>", "<|im_end|>"], 320, seed=1,
                       chat_template=CHATML)


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Real-text conversations of 1 to 4 turns, some with a system prompt."""
    rng = random.Random(seed)
    pool = ENGLISH + real_texts(40, seed=seed)
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(pool)[: rng.choice([20, 80, 300])]})
            messages.append({"role": "assistant", "content": rng.choice(pool)[: rng.choice([10, 60, 400])]})
        out.append(messages)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
