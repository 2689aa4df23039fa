"""What the export tests share: tiny bases and random adapters on disk, and greedy agreement up to near-ties.

Two fp32 implementations (PyTorch, ONNX Runtime; AVX2 or AVX-512 kernels) round differently, so
their greedy tokens may part where the two best logits are nearly tied. ``assert_same_greedy``
accepts a divergence only there: at the first token where two sequences differ, the reference
model's logits of the two tokens must be within ``tie`` of each other. Nothing is bit-exact.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_tiny_base(directory: Path, seed: int = 0):
    """A tiny random Llama and the byte tokenizer written as a Hugging Face directory; returns the model."""
    from atelier.engine.loading import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def save_random_adapter(base, directory: Path, kind: str = "lora", *, seed: int = 1, r: int = 4,
                        targets: list[str] | None = None, scale: float = 1.0):
    """A PEFT adapter with random, non-trivial weights saved in ``directory``; returns the adapted model (eval).

    Args:
        kind: "lora" (B random, not zero) or "ia3" (T-Few: vectors drawn in [0.5, 1.5]).
        scale: LoRA B is multiplied by it (small: an adapter that nudges a real model, not garbles it).
    """
    from peft import IA3Config, LoraConfig, get_peft_model

    torch.manual_seed(seed)
    if kind == "lora":
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets or LORA_TARGETS, init_lora_weights=False)
    else:
        targets = targets or ["k_proj", "v_proj", "down_proj"]
        config = IA3Config(target_modules=targets, feedforward_modules=["down_proj"])
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_" in name:
                p.uniform_(0.5, 1.5)
            elif "lora_B" in name:
                p.mul_(scale)
    model.save_pretrained(str(directory))
    return model.eval()


@torch.no_grad()
def greedy(model, prompt: list[int], n: int, eos: frozenset[int] = frozenset()) -> list[int]:
    """Reference greedy decoding with full recomputation; stops before an ``eos`` token."""
    out = list(prompt)
    for _ in range(n):
        token = int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax())  # logits (1, T, V)
        if token in eos:
            break
        out.append(token)
    return out[len(prompt) :]


@torch.no_grad()
def assert_same_greedy(reference, prompt: list[int], a: list[int], b: list[int], eos: frozenset[int],
                       tie: float) -> int:
    """Assert that two greedy continuations agree but where ``reference``'s top two logits are within ``tie``.

    Trailing end-of-sequence tokens are dropped (one side may report the token it stopped at).
    When one sequence is a strict prefix of the other, the longer one's next token must be a
    near-tie with an end-of-sequence token.

    Returns:
        How many leading tokens agree.
    """
    a, b = [t for t in a if t not in eos], [t for t in b if t not in eos]
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    if same == len(a) == len(b):
        return same
    logits = reference(input_ids=torch.tensor([prompt + a[:same]])).logits[0, -1]  # (V,)
    if same < len(a) and same < len(b):
        pair = {a[same], b[same]}
    else:  # one stopped: its next token was an end-of-sequence id
        longer = a if same < len(a) else b
        pair = {longer[same], max(eos, key=lambda t: float(logits[t]))}
    first, second = (float(logits[t]) for t in pair)
    assert abs(first - second) <= tie, (
        f"greedy tokens part at {same} ({a[same:same + 3]} vs {b[same:same + 3]}) with logits "
        f"{first:.5f} vs {second:.5f}: not a near-tie (tie {tie})"
    )
    return same
