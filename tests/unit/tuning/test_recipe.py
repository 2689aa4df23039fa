"""The training recipe on a tiny random Llama: learning, events, early stopping, exact resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atelier.errors import Conflict, InvalidInput
from atelier.tuning.config import TuneConfig
from atelier.tuning.recipe import run
from atelier.tuning.schedule import epoch_order, learning_rate_at

METRIC_KEYS = {
    "type", "step", "total_steps", "epoch", "train_loss", "valid_loss", "valid_token_accuracy",
    "valid_perplexity", "learning_rate",
}


def adapter_tensors(workdir: Path) -> dict[str, torch.Tensor]:
    return load_file(workdir / "adapter" / "adapter_model.safetensors")


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def resumable(method: str = "lora", **kw) -> TuneConfig:
    """9 steps: 10 examples, micro-batches of 2, 2 per step (the epoch's last step has one), 3 epochs."""
    base = dict(
        type=method,
        total_training_epochs=3,
        training_batch_size=2,
        gradient_accumulation_steps=2,
        log_model_metrics_interval_in_steps=2,
        checkpoint_interval_in_steps=3,
        learning_rate=1e-2 if method == "lora" else 5e-2,
        warmup_ratio=0.2,
        lr_scheduler="cosine",
    )
    return TuneConfig(**{**base, **kw})


class Recorder:
    """on_event / should_stop pair: stops after ``stop_at_step`` steps or at poll number ``stop_at_poll``."""

    def __init__(self, stop_at_step=None, stop_at_poll=None, crash_at_step=None):
        self.events, self.polls, self.step = [], 0, 0
        self.stop_at_step, self.stop_at_poll, self.crash_at_step = stop_at_step, stop_at_poll, crash_at_step

    def on_event(self, event):
        self.events.append(event)
        if event["type"] == "metrics":
            self.step = event["step"]
            if self.crash_at_step is not None and self.step >= self.crash_at_step:
                raise RuntimeError("simulated kill -9")

    def should_stop(self):
        self.polls += 1
        if self.stop_at_poll is not None and self.polls >= self.stop_at_poll:
            return True
        return self.stop_at_step is not None and self.step >= self.stop_at_step


# ---------------------------------------------------------------- pure pieces


def test_schedule_warms_up_then_decays_and_never_hits_zero():
    c = TuneConfig(learning_rate=1.0, warmup_ratio=0.2, lr_scheduler="linear")
    rates = [learning_rate_at(c, i, 10) for i in range(10)]
    assert rates[:2] == pytest.approx([1 / 3, 2 / 3])
    assert rates[2] == 1.0 and all(a > b for a, b in zip(rates[2:], rates[3:])) and rates[-1] > 0
    cos = TuneConfig(learning_rate=1.0, warmup_ratio=0.0, lr_scheduler="cosine")
    assert learning_rate_at(cos, 5, 10) == pytest.approx(0.5)
    const = TuneConfig(learning_rate=0.5, warmup_ratio=0.0, lr_scheduler="constant")
    assert {learning_rate_at(const, i, 10) for i in range(10)} == {0.5}


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0)
    assert sorted(epoch_order(10, 1, 0)) == list(range(10))
    assert epoch_order(10, 1, 0) != epoch_order(10, 1, 1) != epoch_order(10, 2, 1)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(("method", "lr"), [("lora", 1e-2), ("tfew", 5e-2)])
def test_loss_falls_on_a_memorization_task(loaded, split, tmp_path, method, lr):
    train, val = split
    config = TuneConfig(
        type=method, total_training_epochs=12, training_batch_size=4, learning_rate=lr, warmup_ratio=0.0,
        log_model_metrics_interval_in_steps=6,
    )
    result = run(config, loaded, train, val, tmp_path)
    first, last = result.curve[0], result.curve[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"], (first, last)
    assert result.steps == result.total_steps == 36 and not result.interrupted
    assert 0 < result.trainable_params < result.total_params
    assert result.trainable_fraction == pytest.approx(result.trainable_params / result.total_params)
    # r=8 on q,k,v,o (64→64, 64→32 for k/v with 2 kv heads): 2 layers × (8·(64+64)·2 + 8·(64+32)·2)
    expected = 2 * (2 * 8 * (64 + 64) + 2 * 8 * (64 + 32)) if method == "lora" else 2 * (32 + 32 + 128)
    assert result.trainable_params == expected
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_events_every_step_first_then_each_interval(loaded, split, tmp_path):
    train, val = split
    config = TuneConfig(
        total_training_epochs=25, training_batch_size=10, log_model_metrics_interval_in_steps=10, learning_rate=1e-3,
    )
    rec = Recorder()
    result = run(config, loaded, train, val, tmp_path, rec.on_event, rec.should_stop)
    metrics = [e for e in rec.events if e["type"] == "metrics"]
    assert [e["step"] for e in metrics] == [*range(1, 21), 25]
    assert all(set(e) == METRIC_KEYS for e in metrics)
    validated = [e["step"] for e in metrics if e["valid_loss"] is not None]
    assert validated == [10, 20, 25]
    ten = metrics[9]
    assert 0 <= ten["valid_token_accuracy"] <= 1 and ten["valid_perplexity"] == pytest.approx(2.718281828 ** ten["valid_loss"])
    assert ten["epoch"] == 10.0 and ten["total_steps"] == 25
    assert [e["step"] for e in rec.events if e["type"] == "checkpoint"] == [10, 20]
    assert result.curve == metrics
    assert result.final_metrics["step"] == result.best_step


def test_without_validation_there_are_no_valid_metrics(loaded, split, tmp_path):
    train, _ = split
    result = run(resumable(), loaded, train, [], tmp_path)
    assert all(e["valid_loss"] is None for e in result.curve)
    assert result.best_step is None and not result.stopped_early
    assert result.final_metrics["step"] == 9 and result.final_metrics["train_loss"] > 0


def test_early_stopping_after_patience_evaluations_keeps_the_best_adapter(loaded, split, tmp_path):
    train, val = split
    common = dict(
        total_training_epochs=20, training_batch_size=4, log_model_metrics_interval_in_steps=1,
        lr_scheduler="constant", warmup_ratio=0.0, learning_rate=1e-2, lora_dropout=0.0,
    )
    rec = Recorder()
    stopped = run(
        TuneConfig(**common, early_stopping_patience=2, early_stopping_threshold=10.0),
        loaded, train, val, tmp_path / "a", rec.on_event,
    )
    assert stopped.stopped_early and stopped.steps == 3 and stopped.best_step == 1
    assert [e for e in rec.events if e["type"] == "early_stopped"] == [
        {"type": "early_stopped", "step": 3, "best_step": 1, "best_valid_loss": stopped.curve[0]["valid_loss"]}
    ]
    assert stopped.final_metrics == {k: v for k, v in stopped.curve[0].items() if k != "type"}
    one_step = run(TuneConfig(**common, max_steps=1), loaded, train, val, tmp_path / "b")
    assert_same_tensors(adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b"))

    never = run(
        TuneConfig(**common, max_steps=5, early_stopping_patience=0, early_stopping_threshold=10.0),
        loaded, train, val, tmp_path / "c",
    )
    assert not never.stopped_early and never.steps == 5


def test_the_base_model_is_left_as_it_was(loaded, split, tmp_path):
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    modules = [type(m) for m in loaded.model.modules()]
    run(resumable("lora"), loaded, *split, tmp_path / "l")
    run(resumable("tfew"), loaded, *split, tmp_path / "t")
    after = loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in loaded.model.modules()] == modules
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_gradient_checkpointing_trains_the_same_adapter_and_leaves_the_base_as_it_was(loaded, split, tmp_path):
    plain = run(resumable(), loaded, *split, tmp_path / "plain")
    during: list[bool] = []

    def on_event(event):  # while training, the decoder layers recompute their activations
        during.append(any(getattr(m, "gradient_checkpointing", False) for m in loaded.model.modules()))

    checkpointed = run(resumable(gradient_checkpointing=True), loaded, *split, tmp_path / "checkpointed", on_event)
    assert during and all(during)
    assert checkpointed.steps == plain.steps
    a, b = adapter_tensors(tmp_path / "plain"), adapter_tensors(tmp_path / "checkpointed")
    assert a.keys() == b.keys()
    for name in a:  # the same math recomputed (dropout's random state included), up to float rounding
        assert float((a[name] - b[name]).norm()) <= 1e-4 * max(float(a[name].norm()), 1e-6), name
    assert not any(getattr(m, "gradient_checkpointing", False) for m in loaded.model.modules())


def test_stop_is_immediate_and_resumable(loaded, split, tmp_path):
    result = run(resumable(), loaded, *split, tmp_path, should_stop=lambda: True)
    assert result.interrupted and result.steps == 0 and result.adapter_dir is None
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_no_training_examples_and_unknown_modules_are_refused(loaded, split, tmp_path):
    with pytest.raises(InvalidInput):
        run(resumable(), loaded, [], split[1], tmp_path / "a")
    with pytest.raises(InvalidInput) as err:
        run(resumable(target_modules=["nope_proj"]), loaded, *split, tmp_path / "b")
    assert err.value.param == "training_config.target_modules"


# ---------------------------------------------------------------- exact resumption


@pytest.fixture
def reference(loaded, split, tmp_path):
    """An uninterrupted LoRA run (dropout 0.1, accumulation, cosine warmup) to compare against."""
    result = run(resumable(), loaded, *split, tmp_path / "reference")
    return result, adapter_tensors(tmp_path / "reference")


@pytest.mark.parametrize("k", [1, 3, 8])  # mid-epoch, epoch end + interval checkpoint replaced, mid-epoch
def test_stop_after_k_steps_then_resume_gives_identical_adapter(loaded, split, tmp_path, reference, k):
    ref_result, ref_tensors = reference
    work = tmp_path / "interrupted"
    rec = Recorder(stop_at_step=k)
    first = run(resumable(), loaded, *split, work, rec.on_event, rec.should_stop)
    assert first.interrupted and first.steps == k and first.adapter_dir is None
    assert (work / "checkpoints" / f"step-{k}" / "state.json").is_file()
    second = run(resumable(), loaded, *split, work)
    assert second.resumed_from_step == k and not second.interrupted
    assert_same_tensors(adapter_tensors(work), ref_tensors)
    assert second.curve == ref_result.curve and second.final_metrics == ref_result.final_metrics


@pytest.mark.parametrize(("poll", "step", "in_validation"), [(4, 1, False), (6, 2, True), (11, 4, True), (13, 4, False)])
def test_stop_mid_step_or_mid_validation_then_resume_is_identical(
    loaded, split, tmp_path, reference, poll, step, in_validation
):
    # polls: step 1 = 1,2; step 2 = 3,4 + validation 5,6; step 3 = 7; step 4 = 8,9 + validation 10,11; step 5 = 12,13
    ref_result, ref_tensors = reference
    work = tmp_path / "interrupted"
    rec = Recorder(stop_at_poll=poll)
    assert run(resumable(), loaded, *split, work, rec.on_event, rec.should_stop).interrupted
    state = json.loads((work / "checkpoints" / f"step-{step}" / "state.json").read_text())["state"]
    assert state["step"] == step and state["pending_report"] is in_validation
    second = run(resumable(), loaded, *split, work)
    assert_same_tensors(adapter_tensors(work), ref_tensors)
    assert second.curve == ref_result.curve


def test_crash_without_a_stop_resumes_from_the_last_interval_checkpoint(loaded, split, tmp_path, reference):
    ref_result, ref_tensors = reference
    work = tmp_path / "crashed"
    rec = Recorder(crash_at_step=5)
    with pytest.raises(RuntimeError, match="simulated"):
        run(resumable(), loaded, *split, work, rec.on_event)
    (work / "checkpoints" / ".tmp-step-5-deadbeef").mkdir()  # what a kill mid-write leaves
    (work / "checkpoints" / "step-6").mkdir()  # incomplete: no state.json
    second = run(resumable(), loaded, *split, work)
    assert second.resumed_from_step == 3
    assert_same_tensors(adapter_tensors(work), ref_tensors)
    assert not (work / "checkpoints" / ".tmp-step-5-deadbeef").exists()


def test_tfew_resumes_identically(loaded, split, tmp_path):
    run(resumable("tfew"), loaded, *split, tmp_path / "ref")
    rec = Recorder(stop_at_step=4)
    run(resumable("tfew"), loaded, *split, tmp_path / "cut", rec.on_event, rec.should_stop)
    run(resumable("tfew"), loaded, *split, tmp_path / "cut")
    assert_same_tensors(adapter_tensors(tmp_path / "cut"), adapter_tensors(tmp_path / "ref"))


def test_only_the_newest_checkpoints_are_kept(loaded, split, tmp_path):
    run(resumable(checkpoint_interval_in_steps=1), loaded, *split, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-7", "step-8"]


def test_a_finished_run_is_returned_again_and_another_config_conflicts(loaded, split, tmp_path, reference):
    ref_result, _ = reference
    rec = Recorder()
    again = run(resumable(), loaded, *split, tmp_path / "reference", rec.on_event, rec.should_stop)
    assert again == ref_result and rec.events == [] and rec.polls == 0
    with pytest.raises(Conflict):
        run(resumable(seed=1), loaded, *split, tmp_path / "reference")
    rec = Recorder(stop_at_step=2)
    run(resumable(), loaded, *split, tmp_path / "half", rec.on_event, rec.should_stop)
    with pytest.raises(Conflict):
        run(resumable(learning_rate=0.5), loaded, *split, tmp_path / "half")
