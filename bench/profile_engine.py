"""Where the scheduler's time goes: prefill, decode, cache joins, sampling, for N requests at once.

Wraps the ``Scheduler``'s steps and the model's forward with wall-clock timers (no engine
code is changed), submits ``--batch`` requests of ``--tokens`` greedy tokens each (EOS
ignored) at the same moment, and prints the time per step kind next to plain
``transformers`` ``generate`` on the same prompts as one left-padded batch. ``--cprofile``
adds the top functions of the engine thread.

Run: ``.venv/bin/python bench/profile_engine.py --batch 32 --tokens 32``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from pathlib import Path


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.generation import PROMPTS, hf_generate, load_models  # noqa: E402

STEPS = ("_prefill", "_decode_step", "_drop_done", "_sample", "_emit")
CACHE_OPS = ("join", "select", "trim_left")


def main(argv: list[str] | None = None) -> int:
    from atelier.engine import kv_cache
    from atelier.engine.scheduler import Scheduler
    from atelier.engine.types import GenerationRequest, SamplingParams
    from atelier.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32, help="requests submitted at once (default 32)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    ap.add_argument("--threads", type=int, default=Settings().threads, help="torch threads")
    ap.add_argument("--quantization", choices=["none", "int8", "int4"], default="none",
                    help="weights of the served model (default none; transformers generate runs on the same model)")
    ap.add_argument("--cprofile", action="store_true", help="also print the engine thread's top functions")
    args = ap.parse_args(argv)

    loaded, engine, _ = load_models(args.threads, args.quantization)
    engine.close()  # only the loaded model is used here
    tok, model = loaded.tokenizer, loaded.model
    prompts = [tok(PROMPTS[i % len(PROMPTS)], add_special_tokens=False)["input_ids"] for i in range(args.batch)]

    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0
                calls[name] += 1

        return wrapper

    profiler = cProfile.Profile() if args.cprofile else None

    class TimedScheduler(Scheduler):
        def _run(self) -> None:
            if profiler is not None:
                profiler.enable()
            try:
                super()._run()
            finally:
                if profiler is not None:
                    profiler.disable()

    for name in STEPS:
        setattr(TimedScheduler, name, timed(f"scheduler.{name}", getattr(Scheduler, name)))
    for name in CACHE_OPS:
        setattr(kv_cache.BatchCache, name, timed(f"cache.{name}", getattr(kv_cache.BatchCache, name)))
    model.forward = timed("model.forward", model.forward)

    sched = TimedScheduler(loaded, 8192, max_batch=max(32, args.batch), max_waiting=args.batch)
    done = threading.Semaphore(0)

    def sink(event) -> None:
        if isinstance(event, BaseException) or event.finish_reason is not None:
            done.release()

    sched.submit(GenerationRequest("warm-up", prompts[0], SamplingParams(max_tokens=2, temperature=0.0)), sink)
    done.acquire()
    spent.clear()
    calls.clear()
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        sched.submit(GenerationRequest(f"profile-{i}", ids, params), sink)
    for _ in prompts:
        done.acquire()
    seconds = time.perf_counter() - t0
    sched.close()
    n = args.batch * args.tokens
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"atelier scheduler, {args.batch} requests x {args.tokens} tokens: {seconds:.2f} s, {n / seconds:.1f} tok/s")
    for name in sorted(spent, key=lambda k: -spent[k]):
        per_call = 1000 * spent[name] / calls[name]
        print(f"  {name:24s} {spent[name]:8.2f} s  {calls[name]:6d} calls  {per_call:8.1f} ms/call")
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())

    spent.clear()
    calls.clear()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    hf_generate(model, pad, prompts, 2)  # warm-up
    spent.clear()
    calls.clear()
    seconds, out_ids = hf_generate(model, pad, prompts, args.tokens)
    print(f"transformers generate, one batch: {seconds:.2f} s, {out_ids.numel() / seconds:.1f} tok/s")
    print(f"  model.forward            {spent['model.forward']:8.2f} s  {calls['model.forward']:6d} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
