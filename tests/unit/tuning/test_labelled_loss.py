"""The completion-position loss equals the full-logits loss, value and gradients, chunked or not."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from atelier.engine.loading import tiny_model
from atelier.tuning.data import IGNORE_INDEX
from atelier.tuning.labelled_loss import CompletionLoss
from atelier.tuning.metrics import loss_sum, token_stats


@pytest.fixture
def peft_model():
    torch.manual_seed(0)
    base = tiny_model(vocab_size=259, seed=3)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)
    model = get_peft_model(base, config)
    model.train()
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (3, 12), generator=g)  # (B, T)
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0  # a right-padded row
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6:] = ids[0, 6:]
    labels[1, 10:] = ids[1, 10:]
    labels[2, 4:9] = ids[2, 4:9]
    return ids, attention, labels


def grads(model, total) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk_rows", [1024, 3])
def test_the_loss_and_its_gradients_equal_the_full_logits_ones(peft_model, chunk_rows):
    ids, attention, labels = batch()
    loss = CompletionLoss(peft_model, chunk_rows=chunk_rows)
    assert loss.exact
    ours, count = loss.loss_sum(ids, attention, labels)
    full, full_count = loss_sum(peft_model(input_ids=ids, attention_mask=attention, use_cache=False).logits, labels)
    assert count == full_count == 6 + 2 + 5
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    ours_grads, full_grads = grads(peft_model, ours), grads(peft_model, full)
    assert ours_grads.keys() == full_grads.keys() and ours_grads
    for name in ours_grads:  # float summation order differs: compare each gradient as a whole
        assert float((ours_grads[name] - full_grads[name]).norm()) <= 1e-4 * float(full_grads[name].norm()), name
    assert any(float(g.abs().sum()) > 0 for g in ours_grads.values())


def test_token_stats_equal_the_full_logits_ones(peft_model):
    ids, attention, labels = batch()
    ours = CompletionLoss(peft_model, chunk_rows=4).token_stats(ids, attention, labels)
    with torch.no_grad():
        full = token_stats(peft_model(input_ids=ids, attention_mask=attention, use_cache=False).logits, labels)
    assert (ours.count, ours.correct) == (full.count, full.correct)
    assert ours.loss_sum == pytest.approx(full.loss_sum, rel=1e-5)


def test_a_model_whose_logits_are_not_its_heads_output_keeps_the_full_computation(peft_model):
    peft_model.get_base_model().register_forward_hook(
        lambda module, args, output: output.__class__(**{**output, "logits": output.logits * 2.0}))
    ids, attention, labels = batch()
    loss = CompletionLoss(peft_model)
    assert not loss.exact
    ours, _ = loss.loss_sum(ids, attention, labels)
    full, _ = loss_sum(peft_model(input_ids=ids, attention_mask=attention, use_cache=False).logits, labels)
    torch.testing.assert_close(ours, full)
