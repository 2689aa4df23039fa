"""Serving many custom models on one shared base: throughput, memory and load time.

On ``smollm2-135m-instruct``, 32 concurrent greedy requests (``--tokens`` new tokens each)
through Atelier's engine in process, using (a) the base model only, (b) one LoRA adapter
for every row, (c) 8 and (d) 32 distinct LoRA adapters, and (e) 32 distinct adapters half
LoRA, half T-Few (IA3). Each workload's aggregate tokens/s is printed as a ratio to (a);
the same workloads (a)–(d) run through PEFT's own mixed-adapter batching
(``PeftModel.generate(adapter_names=…)``, one left-padded batch) as the baseline, in the
same run, repeats interleaved. (e) has no PEFT figure: PEFT ignores ``adapter_names`` for
IA3. Then: resident memory of the base plus 50 hosted adapters against 50 copies of the
model, and the time to load one adapter (parse + install between engine steps).

With ``--vllm`` (on by default when ``scripts/install_vllm.sh`` has installed it), vLLM's
OpenAI server (CPU build, float32, the same ``--threads``) serves the same base and the same
32 LoRA adapters (runtime-loaded, ``--max-loras 32``): workloads (a) and (d) are sent to it
as 32 concurrent ``/v1/completions`` requests of the same prompt token ids, interleaved with
Atelier's, and reported as Atelier / vLLM. Atelier runs in this process (no HTTP); vLLM
behind its HTTP server on loopback (what its users run); both on float weights.

Adapters are random (LoRA B and IA3 vectors away from their identity init, so every
adapter really changes the math) with the service's default shapes: LoRA r=8 on the
attention projections, IA3 on k/v/down projections.

    .venv/bin/python bench/serving.py            # about 6 minutes on an idle 2-core machine
    .venv/bin/python bench/serving.py --quick    # 1 repeat, 8 tokens
    .venv/bin/python bench/serving.py --no-vllm  # without the vLLM comparison
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Row, format_table, machine_info, write_json  # noqa: E402

CHAT = "smollm2-135m-instruct"
WORKLOADS = {"a": "base only", "b": "1 adapter", "c": "8 adapters", "d": "32 adapters", "e": "32 adapters LoRA+IA3"}
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def log(msg: str) -> None:
    print(f"[serving] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def make_adapters(base, root: Path, n_lora: int, n_ia3: int) -> tuple[list[Path], list[Path]]:
    """Save ``n_lora`` LoRA and ``n_ia3`` IA3 adapters with random non-trivial weights."""
    from peft import IA3Config, LoraConfig, get_peft_model

    from atelier.tuning.config import DEFAULT_FEEDFORWARD_MODULES, DEFAULT_TARGET_MODULES

    out: dict[str, list[Path]] = {"lora": [], "ia3": []}
    for kind, n in (("lora", n_lora), ("ia3", n_ia3)):
        if not n:
            continue
        config = (
            LoraConfig(r=8, lora_alpha=16, target_modules=list(DEFAULT_TARGET_MODULES["lora"]), init_lora_weights=False)
            if kind == "lora"
            else IA3Config(target_modules=list(DEFAULT_TARGET_MODULES["tfew"]),
                           feedforward_modules=list(DEFAULT_FEEDFORWARD_MODULES))
        )  # fmt: skip
        model = get_peft_model(copy.deepcopy(base), config)
        for i in range(n):
            g = torch.Generator().manual_seed(1000 * (kind == "ia3") + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_A" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                    elif "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                    elif "ia3_l" in name:
                        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            path = root / f"{kind}-{i}"
            model.save_pretrained(str(path))
            out[kind].append(path)
        del model
    return out["lora"], out["ia3"]


def prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    words = "the a model adapter serves many custom requests one base shared weights batch row token".split()
    return [tokenizer.encode(" ".join(rng.choice(words) for _ in range(rng.randint(8, 24)))) for _ in range(n)]


def assignments(workload: str, n: int) -> list[int]:
    """Adapter number per row (-1 = the base) for a workload."""
    distinct = {"a": 0, "b": 1, "c": 8, "d": 32, "e": 32}[workload]
    return [-1] * n if distinct == 0 else [i % distinct for i in range(n)]


def engine_run(engine, slots: list[int | None], rows: list[list[int]], tokens: int) -> tuple[float, int]:
    from atelier.engine.types import GenerationRequest, SamplingParams

    async def one(ids, slot):
        req = GenerationRequest(f"b-{uuid.uuid4().hex[:10]}", ids,
                                SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True), adapter_slot=slot)
        return sum([len(e.token_ids) async for e in engine.generate(CHAT, req)])

    async def run():
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(ids, s) for ids, s in zip(rows, slots)))
        return time.perf_counter() - t0, sum(counts)

    return asyncio.run(run())


def peft_run(model, names: list[str], rows: list[list[int]], tokens: int, pad_id: int) -> tuple[float, int]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=pad_id)
    return time.perf_counter() - t0, (out.shape[1] - width) * len(rows)


def vllm_run(url: str, names: list[str], rows: list[list[int]], tokens: int) -> tuple[float, int]:
    """32 concurrent greedy completions on vLLM (``names``: the model or adapter of each row); seconds, tokens."""
    import httpx

    async def one(client, ids, name):
        body = {"model": name, "prompt": ids, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        response = await client.post(f"{url}/v1/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    async def run():
        async with httpx.AsyncClient(timeout=600.0, limits=httpx.Limits(max_connections=len(rows))) as client:
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(one(client, ids, n) for ids, n in zip(rows, names)))
            return time.perf_counter() - t0, sum(counts)

    return asyncio.run(run())


def start_vllm(catalog, settings, threads: int, lora_dirs: list[Path], workdir: Path):
    """vLLM's server on the same model with the same 32 LoRA adapters loaded (their names: the directories')."""
    import httpx

    from atelier.engine.loading import model_directory
    from vllm_server import VllmServer

    server = VllmServer(model_directory(catalog.get(CHAT), settings.cache_path), CHAT, workdir / "vllm.log",
                        threads=threads, max_loras=32, max_lora_rank=8, extra_args=("--max-num-seqs", "64"))
    server.start()
    for path in lora_dirs[:32]:
        httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": path.name, "lora_path": str(path)},
                   timeout=120.0).raise_for_status()
    return server


def main(argv: list[str] | None = None) -> int:
    from peft import PeftModel

    from atelier.catalog import Catalog
    from atelier.engine.client import LocalEngine
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; medians (default 3)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent requests (default 32)")
    ap.add_argument("--hosted", type=int, default=50, help="adapters hosted for the memory figure (default 50)")
    ap.add_argument("--threads", type=int, default=Settings().threads)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 8 tokens")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=None,
                    help="compare with vLLM's server (default: when scripts/install_vllm.sh installed it)")
    args = ap.parse_args(argv)
    from vllm_server import vllm_python

    if args.vllm is None:
        args.vllm = vllm_python() is not None
    if args.quick:
        args.repeats, args.tokens = 1, 8
    torch.set_num_threads(args.threads)
    info = machine_info(torch.get_num_threads())
    t_start = time.perf_counter()
    log(f"threads {info['torch_threads']}; load average at start {info['loadavg_at_start'][0]:.2f}")

    settings = Settings(threads=args.threads, max_batch=max(32, args.concurrency))
    catalog = Catalog.load()
    loaded = load_chat_model(catalog.get(CHAT), settings.cache_path, settings.device)
    pristine = copy.deepcopy(loaded.model)  # for PEFT (which wraps its model in place) and for saving adapters
    engine = LocalEngine(catalog, settings, preloaded={CHAT: loaded})
    details: dict = {}
    rows_out: list[Row] = []
    vllm = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            n_lora = max(32, args.hosted - 16)
            lora_dirs, ia3_dirs = make_adapters(pristine, Path(tmp), n_lora=n_lora, n_ia3=16)
            log(f"{len(lora_dirs)} LoRA and {len(ia3_dirs)} IA3 adapters saved")
            engine_run(engine, [None], [[1, 2, 3]], 2)  # load the scheduler
            gc.collect()
            rss_base = rss_mb()
            load_times, slots = [], {}
            for path in (lora_dirs + ia3_dirs)[: args.hosted]:
                t0 = time.perf_counter()
                slots[path.name] = engine.add_adapter(CHAT, path.name, path)
                load_times.append(time.perf_counter() - t0)
            rss_hosted = rss_mb()  # RSS also moves with the allocator: the tensor bytes below are exact
            stats = engine.adapter_stats()
            model_mb = sum(p.numel() * p.element_size() for p in pristine.parameters()) / 2**20
            details["adapter load time (median of %d), ms" % len(load_times)] = round(
                1000 * statistics.median(load_times), 1)
            details[f"process RSS before / after hosting {len(slots)} adapters, MB (allocator noise; "
                    "the tensor bytes below are exact)"] = f"{rss_base:.0f} / {rss_hosted:.0f}"
            details["adapters' tensors / stacked (padding incl.), MB"] = (
                f"{stats['bytes'] / 2**20:.1f} / {stats['stacked_bytes'] / 2**20:.1f}")
            details[f"base + {len(slots)} adapters vs {len(slots)} model copies, MB"] = (
                f"{model_mb + stats['stacked_bytes'] / 2**20:.0f} vs {len(slots) * model_mb:.0f} "
                f"({len(slots) * model_mb / (model_mb + stats['stacked_bytes'] / 2**20):.1f}x less)")

            log("loading the same 32 LoRA adapters into PEFT...")
            peft = PeftModel.from_pretrained(pristine, str(lora_dirs[0]), adapter_name=lora_dirs[0].name)
            for path in lora_dirs[1:32]:
                peft.load_adapter(str(path), adapter_name=path.name)
            peft.eval()
            tok = loaded.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            batch = prompts(tok, args.concurrency)
            mixed = [d.name for pair in zip(lora_dirs[:16], ia3_dirs[:16]) for d in pair]  # (e)
            samples: dict[str, dict[str, list[float]]] = {w: {"atelier": [], "peft": [], "vllm": []}
                                                          for w in WORKLOADS}
            if args.vllm:
                log("starting vLLM with the same 32 LoRA adapters...")
                vllm = start_vllm(catalog, settings, args.threads, lora_dirs, Path(tmp))
            for rep in range(-1, args.repeats):  # repeat -1 warms both up and is not counted
                for w in WORKLOADS:
                    assign = assignments(w, args.concurrency)
                    names = [("__base__" if a < 0 else (mixed[a] if w == "e" else lora_dirs[a].name)) for a in assign]
                    secs, n = engine_run(engine, [None if x == "__base__" else slots[x] for x in names], batch,
                                         args.tokens)
                    samples[w]["atelier"].append(n / secs)
                    if w != "e":
                        secs, n = peft_run(peft, names, batch, args.tokens, pad)
                        samples[w]["peft"].append(n / secs)
                    if vllm is not None and w in ("a", "d"):
                        secs, n = vllm_run(vllm.url, [CHAT if x == "__base__" else x for x in names], batch,
                                           args.tokens)
                        samples[w]["vllm"].append(n / secs)
                    if rep < 0:
                        for runs in samples[w].values():
                            if runs:
                                runs.pop()
                        continue
                    log(f"repeat {rep + 1}: ({w}) {WORKLOADS[w]}: atelier {samples[w]['atelier'][-1]:.1f} tok/s"
                        + (f", peft {samples[w]['peft'][-1]:.1f} tok/s" if w != "e" else "")
                        + (f", vllm {samples[w]['vllm'][-1]:.1f} tok/s" if samples[w]["vllm"] else ""))
    finally:
        engine.close()
        if vllm is not None:
            vllm.stop()
    base_a = statistics.median(samples["a"]["atelier"])
    base_p = statistics.median(samples["a"]["peft"])
    for w, label in WORKLOADS.items():
        a = samples[w]["atelier"]
        rows_out.append(Row(f"({w}) {label}", "tok/s", atelier=a, baseline=samples[w]["peft"],
                            baseline_name="PEFT generate(adapter_names)",
                            note=f"/(a): atelier {statistics.median(a) / base_a:.2f}"
                            + (f", peft {statistics.median(samples[w]['peft']) / base_p:.2f}" if samples[w]["peft"]
                               else "; PEFT ignores adapter_names for IA3")))
    for w in ("a", "d"):
        if samples[w]["vllm"]:
            rows_out.append(Row(f"({w}) {WORKLOADS[w]} vs vLLM", "tok/s", atelier=samples[w]["atelier"],
                                baseline=samples[w]["vllm"], baseline_name="vLLM 0.32 CPU server (float32, HTTP)",
                                note="vLLM: runtime-loaded LoRA, --max-loras 32"))
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(f"{args.concurrency} concurrent requests x {args.tokens} tokens, median of {args.repeats} repeat(s); "
          f"ratio = Atelier / baseline (PEFT, or vLLM on its rows; higher is better); load average {info['loadavg_at_start'][0]:.2f} → "
          f"{info['loadavg_at_end'][0]:.2f}; {info['seconds']:.0f} s")
    print(format_table(rows_out))
    for key, value in details.items():
        print(f"  {key}: {value}")
    path = write_json("serving", {"benchmark": "serving", "args": {k: str(v) for k, v in vars(args).items()},
                                  "machine": info, "rows": [r.to_json() for r in rows_out], "details": details},
                      args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
