"""Load base models and tokenizers from local files, offline; build tiny models for tests.

This module knows nothing about HTTP, tenants or scheduling. Chat models in GGUF form are
de-quantized once (35-120 s on this CPU) and saved as safetensors in the cache directory,
so every later start reloads in seconds. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from atelier import settings as _settings  # noqa: F401  (forces HF offline before transformers loads)
from atelier.catalog import ModelSpec
from atelier.engine.quantize import quantize_model

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with its tokenizer and end-of-sequence ids."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    eos_token_ids: frozenset[int]


def _dtype(spec: ModelSpec) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock so that concurrent processes convert a model only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _gguf_cache_dir(spec: ModelSpec, cache_dir: Path) -> Path:
    gguf = spec.source.directory() / spec.source.gguf_file  # type: ignore[operator]
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir / "models" / f"{spec.name}-{tag}"


def _convert_gguf(spec: ModelSpec, target: Path) -> None:
    """De-quantize a GGUF checkpoint into a safetensors Hugging Face directory, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = spec.source.directory()
    log.warning("converting %s from GGUF once (this takes about a minute)...", spec.name)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.source.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.source.gguf_file, dtype=torch.float32)
    config = gguf_model.config
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from the config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_directory(spec: ModelSpec, cache_dir: Path) -> Path:
    """A Hugging Face directory for ``spec``: its own folder, or the converted GGUF in the cache."""
    if spec.source.gguf_file is None:
        return spec.source.directory()
    target = _gguf_cache_dir(spec, cache_dir)
    if not (target / "config.json").exists():
        with _file_lock(target.with_suffix(".lock")):
            if not (target / "config.json").exists():
                _convert_gguf(spec, target)
    return target


def load_tokenizer(spec: ModelSpec, cache_dir: Path):
    """The tokenizer of a catalog chat model (fast, from the converted directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_directory(spec, cache_dir))


def eos_ids(tokenizer, config) -> frozenset[int]:
    """Every id that ends a sequence: the config's, the tokenizer's, and ChatML's end of turn."""
    ids: set[int] = set()
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
    if isinstance(im_end, int) and im_end != getattr(tokenizer, "unk_token_id", None):
        ids.add(im_end)
    return frozenset(ids)


def load_chat_model(spec: ModelSpec, cache_dir: Path, device: str = "cpu", quantization: str = "none") -> LoadedModel:
    """Load a catalog chat model for inference (eval mode, no grad).

    Args:
        quantization: "none" (float weights, what training uses), "int8" or "int4" (weight-only,
            for serving on a CPU: see ``quantize.py``; ignored on another device, whose
            kernels these are not).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = model_directory(spec, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=_dtype(spec)).to(device).eval()
    model.requires_grad_(False)
    if quantization != "none" and device == "cpu":
        quantize_model(model, quantization)
    return LoadedModel(spec.name, model, tokenizer, eos_ids(tokenizer, model.config))


SAME_SHAPE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size")
"""Config fields a full fine-tune must share with its base (it is served with the base's tokenizer and limits)."""


def load_full_model(spec: ModelSpec, directory: Path, base: LoadedModel, device: str = "cpu",
                    quantization: str = "none") -> LoadedModel:
    """Load a full fine-tune of the catalog model ``spec`` (``config.json`` + ``model.safetensors``) for inference.

    It keeps the base's tokenizer; ``quantization`` is what the engine serves it with (float: see
    ``engine.client.WHOLE_MODEL_QUANTIZATION``).

    Args:
        directory: The fine-tune's files (``tuning.recipe`` wrote them with ``save_pretrained``).
        base: The loaded base model (its tokenizer and config).

    Raises:
        InvalidInput: The files are not a model of the base's shape.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from atelier.errors import InvalidInput

    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"not a model directory: {exc}", param="model") from None
    differs = [k for k in SAME_SHAPE if getattr(config, k, None) != getattr(base.model.config, k, None)]
    if differs:
        raise InvalidInput(f"the fine-tuned model does not have the shape of {spec.name} ({', '.join(differs)} "
                           "differ)", param="model")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=_dtype(spec)).to(device).eval()
    model.requires_grad_(False)
    if quantization != "none" and device == "cpu":
        quantize_model(model, quantization)
    return LoadedModel(spec.name, model, base.tokenizer, eos_ids(base.tokenizer, model.config))


# ---------------------------------------------------------------- tiny models for tests


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with ChatML special tokens.

    Every UTF-8 byte is its own token, so multi-byte characters span several tokens:
    exactly what streaming detokenization must handle.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(
    vocab_size: int = 259,
    hidden_size: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_kv_head: int = 2,
    seed: int = 0,
) -> torch.nn.Module:
    """A randomly initialised Llama small enough to build in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=256,
        initializer_range=0.3,  # wider than a real init: varied (not constant) greedy outputs in tests
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def tiny_loaded(name: str = "tiny", seed: int = 0) -> LoadedModel:
    """A tiny random model with the byte tokenizer, ready for the engine."""
    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok), seed=seed)
    return LoadedModel(name, model, tok, eos_ids(tok, model.config))
