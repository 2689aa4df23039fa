"""The search part of the fine-tuning benchmark: the service's hyperparameter search against its defaults.

``atelier.jobs.search.run_search`` (Optuna TPE sampler, median pruner; what a fine-tuning job
with ``search`` runs) trains its trials with the recipe on the **fit** part of the topic task's
training split and validates them on its **validation** part (both fixed-seed, stratified;
the held-out articles are never seen). The space: ``type`` LoRA or T-Few, the learning rate
log-uniform from a tenth to ten times the method's default, LoRA rank 8 or 16; every other
setting is the service default with the benchmark's epochs and batch size. The best trial's
settings are then trained on the whole training split like the default LoRA and T-Few rows
and scored on the same held-out articles, so the comparison is of settings, not data.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from bench.finetune_common import examples_of, log


def search(loaded, chat_format: str, fit_pairs: list, val_pairs: list, workdir: Path, *, trials: int, epochs: int,
           batch_size: int, seed: int) -> dict:
    """Run the search in this process (the model is wrapped in place per trial and restored); trials' summary."""
    from atelier.engine.threads import in_fresh_thread
    from atelier.jobs.search import run_search
    from atelier.tuning.config import TuneConfig
    from atelier.tuning.recipe import run
    from atelier.tuning.search_space import SearchSpec

    fit = examples_of(fit_pairs, loaded.tokenizer, chat_format)
    val = examples_of(val_pairs, loaded.tokenizer, chat_format)
    steps_per_epoch = -(-len(fit) // batch_size)
    base = TuneConfig(type="lora", total_training_epochs=epochs, training_batch_size=batch_size, seed=seed,
                      log_model_metrics_interval_in_steps=steps_per_epoch,  # validated at each epoch's end
                      checkpoint_interval_in_steps=10_000).applicable_dump()
    spec = SearchSpec(max_trials=trials, type=["lora", "tfew"], lora_r=[8, 16], seed=seed)
    ctx = SimpleNamespace(workdir=workdir, should_stop=lambda: False, stop_reason=None)
    curves: dict[int, list] = {}
    started: dict[int, float] = {}

    def train_one(config, trial_dir, on_event, should_stop):
        return run(config, loaded, fit, val, trial_dir, on_event=on_event, should_stop=should_stop)

    def emit(trial: int, event: dict) -> None:
        started.setdefault(trial, time.perf_counter())
        if event.get("type") == "metrics" and event.get("valid_loss") is not None:
            curves.setdefault(trial, []).append({"step": event["step"], "epoch": event["epoch"],
                                                 "valid_loss": event["valid_loss"]})
            log(f"  trial {trial} step {event['step']}/{event['total_steps']}: valid loss {event['valid_loss']:.4f}")

    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = in_fresh_thread(lambda: run_search(ctx, spec, base, train_one, emit))
    for t in outcome.trials:
        t["curve"] = curves.get(t["trial"], [])
    best = outcome.config
    return {
        "fit": len(fit), "validation": len(val), "space": spec.model_dump(mode="json"), "trials": outcome.trials,
        "best_trial": outcome.best_trial, "best_config": best.applicable_dump(),
        "best_valid_loss": outcome.result.final_metrics.get("valid_loss"), "seconds": time.perf_counter() - t0,
    }


def describe(config: dict) -> str:
    """``LoRA r 16, lr 6.1e-04`` / ``T-Few, lr 2.3e-02``."""
    if config["type"] == "lora":
        return f"LoRA r {config['lora_r']}, lr {config['learning_rate']:.1e}"
    return f"{'T-Few' if config['type'] == 'tfew' else config['type']}, lr {config['learning_rate']:.1e}"


def trials_table(result: dict) -> list[list]:
    """Rows: trial, state, settings, validation loss per epoch (as reported), final."""
    rows = []
    for t in result["trials"]:
        p = t["params"]
        method = p.get("type")
        lr = next((v for k, v in p.items() if k.startswith("learning_rate")), None)
        what = f"{'LoRA r ' + str(p.get('lora_r')) if method == 'lora' else 'T-Few'}, lr {lr:.1e}" if lr else str(p)
        curve = " / ".join(f"{c['valid_loss']:.3f}" for c in t["curve"])
        value = "-" if t["valid_loss"] is None else f"{t['valid_loss']:.4f}"
        rows.append([f"{t['trial']}{' *' if t['trial'] == result['best_trial'] else ''}", t["state"], what, curve, value])
    return rows
