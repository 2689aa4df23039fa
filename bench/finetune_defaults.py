"""Which defaults for LoRA and T-Few: learning rate, epochs, rank, measured on the benchmark's training splits only.

For each task of ``bench/finetune.py`` (BBC News topics, headlines), the task's **training**
split (the same fixed-seed split as the benchmark's; its held-out articles are never read) is
cut into a fit part and a validation part (stratified, fixed seed). Each setting of a small
grid trains on the fit part with the recipe (``atelier.tuning.recipe.run``; every other
setting is the service's default: batch 8, linear decay after 5% warmup, alpha = 2r, dropout
0.1, AdamW) for the largest number of epochs, and the adapter is scored on the validation part
at the end of every epoch: answer loss and token accuracy (as the recipe's validation), and
the task's own score (topic accuracy: the most probable label's first token; headline ROUGE-L
of the greedy answer, ``transformers`` ``generate``, 24 tokens at most). Epoch e of a run of E
epochs is read at its end: its learning rate has not decayed to zero yet (a run of e epochs
would have), so the earlier epochs of a run are a slight underestimate of a run that long.

Grid (flags to change it): LoRA r 8 at learning rates 2e-4, 5e-4, 1e-3, 2e-3, then r 16 at
the best of those (lowest validation loss at any epoch); T-Few at 3e-3, 1e-2, 3e-2; 3 epochs.
The base model's zero-shot scores on the same validation part are the first row of each task.

Run: ``.venv/bin/python bench/finetune_defaults.py`` (about 29 minutes on 2 idle cores; ``--help``).
Prints a table per task and a summary; writes ``bench/results/finetune_defaults-<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # never AMX (it faults on these machines)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import finetune_headlines as headlines
from bench import finetune_topics as topics
from bench.finetune_common import (
    CHAT,
    TOPICS,
    article_of,
    completion_scores,
    examples_of,
    fit_validation_parts,
    fmt,
    free_threads,
    load_articles,
    load_model,
    log,
    stratified_split,
    table,
)
from bench.harness import machine_info, write_json

TASKS = {"topics": topics, "headlines": headlines}
METRIC = {"topics": "accuracy", "headlines": "ROUGE-L"}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="topics,headlines", help="comma-separated: topics, headlines (default both)")
    ap.add_argument("--fit", type=int, default=64, help="fit part of each training split (default 64)")
    ap.add_argument("--val", type=int, default=48, help="validation part of each training split (default 48)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every run, each one scored (default 3)")
    ap.add_argument("--lora-lrs", type=_floats, default=[2e-4, 5e-4, 1e-3, 2e-3], help="LoRA learning rates")
    ap.add_argument("--tfew-lrs", type=_floats, default=[3e-3, 1e-2, 3e-2], help="T-Few learning rates")
    ap.add_argument("--rank", type=int, default=16, help="second LoRA rank, at the best r-8 rate (0: none; default 16)")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (default 8, the service's)")
    ap.add_argument("--train", type=int, default=400, help="the benchmark's topic training split (default 400)")
    ap.add_argument("--heldout", type=int, default=200, help="its held-out split, left out (default 200)")
    ap.add_argument("--headline-train", type=int, default=160, help="the headline training split (default 160)")
    ap.add_argument("--max-lead-chars", type=int, default=240, help="as the benchmark (default 240)")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed (default 0, the benchmark's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores not busy now)")
    ap.add_argument("--json", type=Path, default=None, help="result file")
    args = ap.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    if set(args.tasks) - set(TASKS):
        ap.error(f"tasks are among {', '.join(TASKS)}")
    return args


class Scorer:
    """Validation scores of the shared model (adapter injected or not) on one task's validation part."""

    def __init__(self, task: str, loaded, chat_format: str, val: list):
        self.task, self.loaded, self.chat_format, self.val = task, loaded, chat_format, val
        self.examples = examples_of(TASKS[task].pairs_of(val), loaded.tokenizer, chat_format)

    def __call__(self) -> dict:
        model, tok = self.loaded.model, self.loaded.tokenizer
        t0 = time.perf_counter()
        if self.task == "topics":
            out = completion_scores(model, self.examples, topics.label_first_ids(tok))
            out["metric"] = sum(TOPICS[p] == a.topic for p, a in zip(out.pop("picks"), self.val)) / len(self.val)
        else:
            out = completion_scores(model, self.examples)
            out.pop("picks")
            answers = headlines.greedy_answers(model, tok, self.chat_format, self.loaded.eos_token_ids,
                                               [headlines.prompt_of(a) for a in self.val])
            out["metric"] = headlines.rouge_l(answers, [a.title for a in self.val])
            out["example"] = {"prediction": answers[0], "reference": self.val[0].title}
        out["seconds"] = time.perf_counter() - t0
        return out


def train_and_score(config, loaded, fit, scorer: Scorer, workdir: Path, steps_per_epoch: int) -> dict:
    """Train on ``fit`` and score the validation part at each epoch's end."""
    from atelier.tuning.recipe import run

    epochs: list[dict] = []
    losses: list[float] = []

    def on_event(event: dict) -> None:
        if event["type"] != "metrics":
            return
        losses.append(event["train_loss"])
        if event["step"] % steps_per_epoch == 0 or event["step"] == event["total_steps"]:
            scores = scorer()
            epochs.append({"epoch": round(event["step"] / steps_per_epoch, 2), "step": event["step"],
                           "train_loss": event["train_loss"], **scores})

    t0 = time.perf_counter()
    result = run(config, loaded, fit, [], workdir, on_event=on_event)
    return {"config": config.applicable_dump(), "epochs": epochs, "trainable_params": result.trainable_params,
            "seconds": time.perf_counter() - t0}


def study(args, threads: int, tmp: Path) -> dict:
    from atelier.tuning.config import TuneConfig

    loaded, spec = load_model(threads)
    pairs = load_articles()
    train, _ = stratified_split(pairs, args.train, args.heldout, args.seed)  # the held-out part is never used
    train = [article_of(p, args.max_lead_chars) for p in train]
    splits = {"topics": train, "headlines": train[: args.headline_train]}
    out: dict = {}
    t_start, done, planned = time.perf_counter(), 0, len(args.tasks) * (len(args.lora_lrs) + len(args.tfew_lrs)
                                                                       + bool(args.rank))
    for task in args.tasks:
        fit, val = fit_validation_parts(splits[task], args.fit, args.val, args.seed)
        fit_examples = examples_of(TASKS[task].pairs_of(fit), loaded.tokenizer, spec.chat_format)
        scorer = Scorer(task, loaded, spec.chat_format, val)
        spe = -(-len(fit_examples) // args.batch_size)
        log(f"{task}: fit {len(fit)}, validation {len(val)} of the training split ({len(splits[task])}); "
            f"{spe} steps per epoch")
        runs = {"base, zero-shot": {"config": None, "epochs": [{"epoch": 0, **scorer()}]}}
        grid = [(f"LoRA r8 lr {lr:g}", {"type": "lora", "learning_rate": lr, "lora_r": 8}) for lr in args.lora_lrs]
        grid += [("rank", {})] if args.rank else []
        grid += [(f"T-Few lr {lr:g}", {"type": "tfew", "learning_rate": lr}) for lr in args.tfew_lrs]
        for name, fields in grid:
            if name == "rank":  # the second rank at the r-8 rate with the lowest validation loss
                best = min((r for n, r in runs.items() if n.startswith("LoRA r8")),
                           key=lambda r: min(e["loss"] for e in r["epochs"]))
                lr = best["config"]["learning_rate"]
                name, fields = f"LoRA r{args.rank} lr {lr:g}", {"type": "lora", "learning_rate": lr, "lora_r": args.rank}
            config = TuneConfig(**fields, total_training_epochs=args.epochs, training_batch_size=args.batch_size,
                                seed=args.seed, log_model_metrics_interval_in_steps=spe,
                                checkpoint_interval_in_steps=10_000)
            runs[name] = r = train_and_score(config, loaded, fit_examples, scorer, tmp / f"{task}-{len(runs)}", spe)
            done += 1
            left = (time.perf_counter() - t_start) / done * (planned - done)
            log(f"  {name}: " + ", ".join(f"epoch {e['epoch']:g} loss {e['loss']:.3f} {METRIC[task]} "
                                          f"{e['metric']:.3f}" for e in r["epochs"])
                + f" ({r['seconds']:.0f} s; about {left / 60:.0f} min left)")
        out[task] = {"fit": len(fit), "validation": len(val), "steps_per_epoch": spe, "runs": runs}
    return out


def summary(args, out: dict) -> list[str]:
    lines = []
    for task, res in out.items():
        header = ["setting"] + [f"e{e} {k}" for e in range(1, args.epochs + 1) for k in ("loss", METRIC[task][:5])]
        body = []
        for name, r in res["runs"].items():
            if r["config"] is None:
                continue
            by_epoch = {round(e["epoch"]): e for e in r["epochs"]}
            cells = [name]
            for e in range(1, args.epochs + 1):
                cells += [fmt(by_epoch[e]["loss"]), fmt(by_epoch[e]["metric"])] if e in by_epoch else ["-", "-"]
            body.append(cells)
        base = res["runs"]["base, zero-shot"]["epochs"][0]
        lines += ["", (f"{task}: fit {res['fit']} / validation {res['validation']} of the training split, "
                       f"{res['steps_per_epoch']} steps per epoch; validation loss and {METRIC[task]} at each "
                       f"epoch's end (base model zero-shot: loss {base['loss']:.3f}, {METRIC[task]} "
                       f"{base['metric']:.3f})"),
                  table(tuple(header), body)]
        for method in ("LoRA", "T-Few"):
            cands = [(e["loss"], -e["metric"], name, e["epoch"]) for name, r in res["runs"].items()
                     if name.startswith(method) for e in r["epochs"]]
            if cands:
                lo = min(cands)
                hi = min(cands, key=lambda c: (c[1], c[0]))
                lines.append(f"  {method}: lowest validation loss {lo[0]:.3f} at {lo[2]}, epoch {lo[3]:g}; best "
                             f"{METRIC[task]} {-hi[1]:.3f} at {hi[2]}, epoch {hi[3]:g}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or free_threads()
    info = machine_info(threads)
    log(f"torch threads {threads}; load average at start " + " / ".join(f"{x:.2f}" for x in info["loadavg_at_start"]))
    from atelier.engine.threads import in_fresh_thread

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-ftd-") as tmp:
        out = in_fresh_thread(lambda: study(args, threads, Path(tmp)))
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t0, 1)
    lines = summary(args, out)
    lines += ["", (f"{CHAT} fp32, threads {threads}, load average {info['loadavg_at_start'][0]:.2f} at start, "
              f"{info['loadavg_at_end'][0]:.2f} at end; {info['seconds']:.0f} s")]
    print("\n".join(lines))
    args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_json("finetune_defaults", {"benchmark": "finetune_defaults", "args": args_json, "machine": info,
                                            "tasks": out}, args.json)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
