"""Training runs of the fine-tuning benchmark, each in a fresh subprocess (so that its peak RSS is its own).

A run trains one method with one engine on (prompt, answer) pairs:

- ``atelier``: ``atelier.tuning.recipe.run`` with a ``TuneConfig`` (a QLoRA config's base decoder
  quantized first, as a QLoRA job does; ``type="full"`` trains every weight, when the recipe
  has it);
- ``trainer``: Hugging Face ``transformers.Trainer`` with the PEFT config the recipe builds
  (``TuneConfig.peft_config``), or no PEFT for full fine-tuning, with the same model, learning
  rate and schedule, batch size, optimizer (AdamW), masked labels and batches (the recipe's
  epoch-0 order), gradient checkpointing and int8 base when the config has them (``full`` in
  the spec: every weight, no PEFT, whether or not ``TuneConfig`` knows ``type="full"``).

Cost figures: tokens/s counts the non-padding input tokens (prompt + answer) of optimizer
steps 2..S divided by their wall time (step 1 is warm-up), S = ``measure_steps``; peak RSS is
the process's (``VmHWM``: there is no allocator statistic for CPU tensors), model and
loading included; training RSS is sampled after each of steps 1..S (loading excluded; glibc
keeps freed memory, so it is a high-water mark). A memory run stops after S steps
(``max_steps``) for both engines; a quality run trains to the end and keeps its adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # never AMX (it faults on these machines)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.finetune_common import examples_of, load_model


def step_batches(n: int, config) -> list[list[int]]:
    """Example indices of each optimizer step of epoch 0, as the recipe visits them."""
    from atelier.tuning.schedule import epoch_order

    order = epoch_order(n, config.seed, 0)
    bs = config.training_batch_size
    return [order[i : i + bs] for i in range(0, n, bs)]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """The process's peak RSS since it started (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux carries the
    parent's RSS at fork over into a child's across ``exec``, so a worker of a large parent would report at least that.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; see above


def _train_trainer(config, loaded, train, steps, S: int, workdir: str, clock, full: bool) -> int:
    """``transformers.Trainer`` (+ PEFT unless full) over the recipe's first S batches; returns trainable params."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from atelier.tuning.schedule import collate

    pad = loaded.tokenizer.pad_token_id
    pad = pad if isinstance(pad, int) else 0
    ordered = [train[i] for b in steps for i in b]  # the recipe's epoch-0 order, read sequentially

    class Ordered(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock()

    def data_collator(batch):
        ids, attention, labels = collate(batch, pad, torch.device("cpu"))
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    torch.manual_seed(config.seed)
    model = loaded.model
    model.train()
    if full:  # every weight, no PEFT
        model.requires_grad_(True)
    else:
        if config.quantize_base != "none":
            from atelier.tuning.qlora import quantize_frozen_base

            quantize_frozen_base(model, config.quantize_base)
        from peft import get_peft_model

        model = get_peft_model(model, config.peft_config())
    args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=config.training_batch_size,
        max_steps=S,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,  # below 1: a ratio of the steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=config.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    Ordered(model=model, args=args, train_dataset=ordered, data_collator=data_collator, callbacks=[Clock()]).train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def worker(spec: dict) -> dict:
    """Train one method with one engine in this (fresh) process; timings, peak RSS, the adapter when kept."""
    from atelier.tuning.config import TuneConfig

    loaded, model_spec = load_model(spec["threads"])
    data = json.loads(Path(spec["data"]).read_text())
    train = examples_of(data["train"], loaded.tokenizer, model_spec.chat_format)
    val = examples_of(data.get("val", []), loaded.tokenizer, model_spec.chat_format)
    config = TuneConfig.model_validate(spec["config"])
    steps = step_batches(len(train), config)
    step_tokens = [sum(len(train[i].input_ids) for i in b) for b in steps]
    S = min(spec["measure_steps"], len(steps))
    if spec["engine"] == "atelier" and config.quantize_base != "none":  # as a QLoRA job does, before training
        from atelier.tuning.qlora import quantize_frozen_base

        quantize_frozen_base(loaded.model, config.quantize_base)
    times: list[float] = []
    rss_training: list[float] = []  # sampled after each step: memory while training, loading excluded

    def clock() -> None:
        times.append(time.perf_counter())
        rss_training.append(rss_mb())

    out: dict = {"rss_after_load_mb": rss_mb(), "examples": len(train), "tokens": sum(len(e.input_ids) for e in train)}
    t0 = time.perf_counter()
    if spec["engine"] == "atelier":
        from atelier.tuning.recipe import run

        def on_event(event: dict) -> None:
            if event["type"] == "metrics" and len(times) < event["step"]:
                clock()

        result = run(config, loaded, train, val, Path(spec["workdir"]), on_event=on_event)
        total = time.perf_counter() - t0
        out.update(
            adapter_dir=str(result.adapter_dir), trainable_params=result.trainable_params, steps=result.steps,
            total_params=result.total_params, curve=result.curve, best_step=result.best_step,
            final_train_loss=result.curve[-1]["train_loss"] if result.curve else None,
            whole_run_seconds=total, whole_run_tokens_per_s=out["tokens"] * result.epochs / total,
        )
    else:
        full = spec.get("full", False) or config.type == "full"
        out["trainable_params"] = _train_trainer(config, loaded, train, steps, S, spec["workdir"], clock, full)
        out["steps"] = len(times)
    if len(times) >= S >= 2:
        out["tokens_per_s"] = sum(step_tokens[1:S]) / (times[S - 1] - times[0])
    out["step_seconds"] = [b - a for a, b in zip([t0, *times], times)][:S]
    out["peak_rss_mb"] = peak_rss_mb()
    out["training_rss_mb"] = max(rss_training[:S]) if rss_training else None  # the same steps for both engines
    out["measured_steps"] = f"2..{S}"
    return out


def run_worker(spec: dict) -> dict:
    """Run ``worker(spec)`` in a fresh Python process; raises RuntimeError with its stderr's tail if it fails."""
    result_path = Path(spec["workdir"]) / "worker-result.json"
    Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(result_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.splitlines() if "Warning" not in line)[-2000:]
        raise RuntimeError(f"training worker {spec['engine']}/{spec['config'].get('type')} failed:\n{tail}")
    return json.loads(result_path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one training run of bench/finetune.py (internal)")
    ap.add_argument("--worker", required=True)
    ap.add_argument("--worker-out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.worker_out.write_text(json.dumps(worker(json.loads(args.worker))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
