"""Generation and embedding throughput: Atelier next to plain transformers / sentence-transformers.

One command, one run, every figure beside its baseline measured on the same machine in
the same process (interleaved repeats, medians), Atelier on float weights with prefix caching
off (``bench/anchor.py`` measures the quantized modes and the prefix cache):

1. decode tokens/s at batch 1: ``LocalEngine`` (the scheduler) vs ``model.generate``,
   greedy, same prompt, same number of new tokens, EOS ignored;
2. aggregate tokens/s with 8 and 32 concurrent requests through the HTTP server
   (``python -m atelier serve``, streamed ``/v1/completions``) and in process
   (``LocalEngine``, no HTTP) vs ``model.generate`` on the same prompts as one
   left-padded batch;
3. prefill tokens/s for a 512-token prompt: time to the first token with
   ``max_tokens=1`` vs one forward pass of the same model over the same ids;
4. embeddings/s: ``Embedder.embed`` vs ``SentenceTransformer.encode`` on the same texts;
5. structured outputs: aggregate tokens/s of 32 concurrent requests of which half carry a
   different JSON Schema each (the grammar mask applied to their rows only) vs the same batch
   unconstrained, in process; and the time to compile a typical schema (p50, p99, distinct
   schemas so that each one is a cache miss).

Run: ``.venv/bin/python bench/generation.py`` (``--quick`` for a short run, ``--help``
for sizes). Results go to ``bench/results/generation-<timestamp>.json``. The baselines use
the very same weights object as Atelier's in-process engine (fp32), so only the serving
machinery differs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import torch  # noqa: E402

from atelier.engine.threads import in_fresh_thread  # noqa: E402
from bench.harness import Row, ServerProcess, sse_chunks, format_table, machine_info, write_json  # noqa: E402

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"

PROMPTS = (
    "The history of the city of Paris begins",
    "Here is a recipe for a simple tomato soup. First,",
    "In computer science, a hash table is",
    "The three main causes of the First World War were",
    "Once upon a time, in a small village by the sea, there lived",
    "To install a Python package from the command line, you",
    "The mitochondria is the part of the cell that",
    "A good way to learn a new language is to",
    "The planet Mars has two moons, which are called",
    "When writing a cover letter for a job application, remember to",
    "Photosynthesis is the process by which plants",
    "The rules of chess say that a knight moves",
    "Dear team, I am writing to let you know that the quarterly report",
    "The difference between weather and climate is that",
    "My favourite book when I was a child was",
    "To make a cup of green tea, heat the water to about",
    "The Great Wall of China was built over many centuries to",
    "In the morning, the old fisherman walked down to the harbour and",
    "A binary search works on a sorted list by",
    "The main ingredients of a classic pizza margherita are",
    "Electric cars differ from petrol cars in that",
    "The French Revolution started in 1789 when",
    "Regular exercise improves health because",
    "The best way to explain recursion to a beginner is",
    "On the first day of school, the new teacher told the class that",
    "The water cycle describes how water moves between",
    "A strong password should contain",
    "The Amazon rainforest is home to",
    "If you want to start a vegetable garden, the first step is",
    "Shakespeare wrote many plays, including",
    "The speed of light in a vacuum is",
    "Tips for staying productive while working from home include",
)

PARAGRAPH = (
    "Atelier serves small language models on ordinary computers. A request arrives over HTTP, "
    "is checked against the caller's key and the tenancy's policies, and is handed to the engine, "
    "which batches it with the other active requests into shared forward passes. The model reads "
    "the whole prompt once, keeps the keys and values of every layer in a cache, and then produces "
    "one token per step until it reaches the requested length, a stop sequence or the end of its turn. "
)

_WORDS = (
    "the a one every some this our their small large quick quiet old new bright dark red green "
    "river city market engine model garden teacher student doctor train window letter museum "
    "computer network forest mountain kitchen library village harbour bridge report question "
    "answer runs reads writes opens closes builds finds holds carries follows crosses explains "
    "under over near beside through across after before during while because although and but"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic English-like sentences of 6 to 40 words (varied lengths, like real input)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 40))]
        out.append(" ".join(words).capitalize() + ".")
    return out


# ---------------------------------------------------------------- setup


def load_models(threads: int, quantization: str = "none"):
    """The chat model (as Atelier loads it, float weights unless told), an in-process engine over it, the catalog."""
    from atelier.catalog import Catalog
    from atelier.engine.client import LocalEngine
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings

    settings = Settings(threads=threads, prefix_cache_mb=0)  # prefill is measured: no cached prefixes
    catalog = Catalog.load()
    loaded = in_fresh_thread(lambda: load_chat_model(catalog.get(CHAT), settings.cache_path, settings.device,
                                                     quantization))
    engine = LocalEngine(catalog, settings, preloaded={CHAT: loaded})
    torch.set_num_threads(threads)
    global _ENGINE_THREAD  # noqa: PLW0603
    _ENGINE_THREAD = engine._scheduler(CHAT)  # noqa: SLF001 - our own engine: the baselines run on its thread
    return loaded, engine, catalog


_ENGINE_THREAD = None
"""The in-process engine's scheduler, once loaded: the transformers baselines run on its thread."""


def on_torch_thread(fn):
    """Run a baseline where Atelier's engine runs its own work: on the engine's thread, between its steps.

    Its OpenMP team is then the only one in the process, as the engine's is when it runs
    (``atelier.engine.threads``: a second team would throttle whichever runs). A closed engine
    leaves a fresh thread, which exits with its team.
    """
    from atelier.errors import Unavailable

    if _ENGINE_THREAD is not None:
        try:
            return _ENGINE_THREAD.call(fn).result()
        except Unavailable:
            pass
    return in_fresh_thread(fn)


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` ids left-padded with ``pad_id`` and their ``(B, T)`` attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


class _Clock:
    """A ``generate`` streamer that only notes when each put arrives (first put = the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


# ---------------------------------------------------------------- baselines (plain transformers)


def hf_generate(model, pad_id: int, prompts: list[list[int]], new_tokens: int, clock: _Clock | None = None):
    """Greedy ``generate`` of exactly ``new_tokens`` per row; returns (seconds, output ids).

    Runs on the engine's thread (``on_torch_thread``), as Atelier's own forward passes do.
    """
    return on_torch_thread(lambda: _hf_generate(model, pad_id, prompts, new_tokens, clock))


def _hf_generate(model, pad_id: int, prompts: list[list[int]], new_tokens: int, clock: _Clock | None):
    ids, mask = left_padded(prompts, pad_id)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            streamer=clock,
        )
    return time.perf_counter() - t0, out[:, ids.shape[1] :]  # (B, new_tokens)


def hf_prefill(model, ids: list[int]) -> float:
    """Seconds for one forward pass over ``ids`` (what ``generate`` does to prefill), on the engine's thread."""
    def run() -> float:
        x = torch.tensor([ids])  # (1, T)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=x, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0

    return on_torch_thread(run)


# ---------------------------------------------------------------- Atelier in process


def _request(ids: list[int], max_tokens: int, constraint=None):
    from atelier.engine.types import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=constraint is None)
    return GenerationRequest(request_id=f"bench-{uuid.uuid4().hex[:12]}", prompt_ids=list(ids), params=params,
                             constraint=constraint)


async def _engine_one(engine, ids: list[int], max_tokens: int, constraint=None) -> dict:
    """Stream one request; note when each event arrives."""
    t0 = time.perf_counter()
    times, tokens, text = [], [], []
    async for event in engine.generate(CHAT, _request(ids, max_tokens, constraint)):
        times.append(time.perf_counter())
        tokens.extend(event.token_ids)
        text.append(event.text)
    return {"start": t0, "times": times, "tokens": tokens, "text": "".join(text)}


def engine_single(engine, ids: list[int], max_tokens: int) -> dict:
    return asyncio.run(_engine_one(engine, ids, max_tokens))


def engine_batch(engine, prompts: list[list[int]], max_tokens: int, constraints=None) -> tuple[float, int]:
    """All prompts submitted at once (``constraints``: one per prompt, or None); returns (seconds until the
    last one ends, tokens generated)."""
    constraints = constraints or [None] * len(prompts)

    async def run():
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_engine_one(engine, p, max_tokens, c) for p, c in zip(prompts, constraints)))
        return time.perf_counter() - t0, sum(len(r["tokens"]) for r in results)

    return asyncio.run(run())


# ---------------------------------------------------------------- Atelier over HTTP


async def _http_one(client: httpx.AsyncClient, ids: list[int], max_tokens: int) -> dict:
    """One streamed ``/v1/completions`` request on token ids; its usage and timings."""
    body = {
        "model": CHAT,
        "prompt": list(ids),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM's extension; ignored by servers that lack it (tokens are counted anyway)
    }
    t0 = time.perf_counter()
    first = None
    usage, finish = None, None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for chunk in sse_chunks(response, "/v1/completions"):
            if first is None:
                first = time.perf_counter()
            for choice in chunk.get("choices") or []:
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "seconds": end - t0, "usage": usage, "finish": finish}


def http_batch(server: ServerProcess, prompts: list[list[int]], max_tokens: int) -> tuple[float, int, dict]:
    """All prompts sent at once over HTTP; returns (seconds, completion tokens, finish reasons)."""

    async def run():
        limits = httpx.Limits(max_connections=len(prompts) + 4, max_keepalive_connections=len(prompts) + 4)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=900, limits=limits) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_http_one(client, p, max_tokens) for p in prompts))
            seconds = time.perf_counter() - t0
        tokens = sum(r["usage"]["completion_tokens"] for r in results)
        finishes: dict[str, int] = {}
        for r in results:
            finishes[r["finish"]] = finishes.get(r["finish"], 0) + 1
        return seconds, tokens, finishes

    return asyncio.run(run())


def http_ttft(server: ServerProcess, ids: list[int]) -> float:
    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=900) as client:
            return (await _http_one(client, ids, 1))["ttft"]

    return asyncio.run(run())


def http_embed(server: ServerProcess, texts: list[str], per_call: int) -> float:
    """Seconds to embed ``texts`` through ``/v1/embeddings``, ``per_call`` inputs a request."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=900) as client:
        t0 = time.perf_counter()
        for start in range(0, len(texts), per_call):
            r = client.post("/v1/embeddings", json={"model": EMBED, "input": texts[start : start + per_call]})
            r.raise_for_status()
        return time.perf_counter() - t0


# ---------------------------------------------------------------- the benchmarks


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_decode(args, loaded, engine, details: dict) -> Row:
    tok, model = loaded.tokenizer, loaded.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    n = args.decode_tokens
    row = Row(
        f"decode, batch 1 ({n} new tokens)",
        "tok/s",
        baseline_name="transformers model.generate, greedy",
        note="tokens after the first one / time from the first to the last token (prefill excluded)",
    )
    hf_generate(model, pad, [ids], 4)  # warm-up
    engine_single(engine, ids, 4)
    match = True
    for r in range(args.repeats):
        clock = _Clock()
        _, out = hf_generate(model, pad, [ids], n, clock)
        base = (len(clock.times) - 2) / (clock.times[-1] - clock.times[1])
        res = engine_single(engine, ids, n)
        mine = (len(res["tokens"]) - 1) / (res["times"][-1] - res["times"][0])
        match = match and res["tokens"] == out[0].tolist()
        row.atelier.append(mine)
        row.baseline.append(base)
        log(f"decode b1 repeat {r + 1}: atelier {mine:.1f} tok/s, transformers {base:.1f} tok/s")
    details["decode_same_tokens_as_transformers"] = match
    if not match:
        row.note += "; WARNING: greedy outputs differ from transformers"
    return row


def bench_prefill(args, loaded, engine, server: ServerProcess | None, details: dict) -> list[Row]:
    tok, model = loaded.tokenizer, loaded.model
    p = args.prefill_tokens
    ids = tok(PARAGRAPH * (p // 40 + 2), add_special_tokens=False)["input_ids"][:p]
    assert len(ids) == p
    rows = [
        Row(
            f"prefill {p}-token prompt, in process",
            "tok/s",
            baseline_name="one transformers forward (logits_to_keep=1)",
            note=f"{p} / time to first token of a max_tokens=1 request (LocalEngine)",
        )
    ]
    if server is not None:
        rows.append(
            Row(
                f"prefill {p}-token prompt, HTTP",
                "tok/s",
                baseline_name="one transformers forward (logits_to_keep=1)",
                note=f"{p} / time to the first streamed chunk of /v1/completions, max_tokens=1",
            )
        )
        http_ttft(server, ids[:16])  # warm-up
    hf_prefill(model, ids)  # warm-up
    engine_single(engine, ids, 1)
    for r in range(args.repeats):
        base = p / hf_prefill(model, ids)
        res = engine_single(engine, ids, 1)
        mine = p / (res["times"][0] - res["start"])
        rows[0].atelier.append(mine)
        rows[0].baseline.append(base)
        msg = f"prefill repeat {r + 1}: atelier {mine:.0f} tok/s, transformers {base:.0f} tok/s"
        if server is not None:
            over_http = p / http_ttft(server, ids)
            rows[1].atelier.append(over_http)
            rows[1].baseline.append(base)
            msg += f", atelier over HTTP {over_http:.0f} tok/s"
        log(msg)
    return rows


def bench_concurrency(args, loaded, engine, server: ServerProcess | None, details: dict) -> list[Row]:
    tok, model = loaded.tokenizer, loaded.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    m = args.concurrent_tokens
    rows = []
    for b in args.concurrency:
        prompts = [tok(PROMPTS[i % len(PROMPTS)], add_special_tokens=False)["input_ids"] for i in range(b)]
        base_name = f"transformers generate, one left-padded batch of {b}"
        http_row = Row(
            f"aggregate, {b} concurrent, HTTP",
            "tok/s",
            baseline_name=base_name,
            note=f"{b} streamed /v1/completions at once, {m} max tokens each; completion tokens / wall time",
        )
        eng_row = Row(
            f"aggregate, {b} concurrent, in process",
            "tok/s",
            baseline_name=base_name,
            note=f"{b} LocalEngine.generate at once, {m} tokens each (EOS ignored); tokens / wall time",
        )
        hf_generate(model, pad, prompts, 2)  # warm-up
        engine_batch(engine, prompts, 2)
        if server is not None:
            http_batch(server, prompts, 2)
        finishes_all: list[dict] = []
        for r in range(args.repeats):
            secs, out = hf_generate(model, pad, prompts, m)
            base = out.numel() / secs
            secs, n = engine_batch(engine, prompts, m)
            mine = n / secs
            eng_row.atelier.append(mine)
            eng_row.baseline.append(base)
            msg = f"concurrency {b} repeat {r + 1}: transformers {base:.1f}, in process {mine:.1f}"
            if server is not None:
                secs, n, finishes = http_batch(server, prompts, m)
                finishes_all.append(finishes)
                http_row.atelier.append(n / secs)
                http_row.baseline.append(base)
                msg += f", HTTP {n / secs:.1f} tok/s (finish {finishes})"
            log(msg)
        if server is not None:
            if any(set(f) != {"length"} for f in finishes_all):
                http_row.note += f"; some requests ended early at EOS: {finishes_all}"
            rows.append(http_row)
        rows.append(eng_row)
    return rows


def bench_embeddings(args, server: ServerProcess | None, details: dict) -> list[Row]:
    from sentence_transformers import SentenceTransformer

    from atelier.catalog import Catalog
    from atelier.engine.embedding import Embedder
    from atelier.engine.types import MAX_INPUTS

    spec = Catalog.load().get(EMBED)
    embedder = Embedder.load(spec, batch_size=args.embed_batch)
    st = SentenceTransformer(str(spec.source.directory()), device="cpu", local_files_only=True)
    if spec.max_input_tokens:
        st.max_seq_length = spec.max_input_tokens
    texts = sentences(args.embed_texts)
    per_call = min(MAX_INPUTS, args.embed_batch * 3)
    name = f"embeddings, {len(texts)} sentences"
    base_name = f"SentenceTransformer.encode, batch {args.embed_batch}"
    rows = [
        Row(
            f"{name}, in process",
            "emb/s",
            baseline_name=base_name,
            note=(
                f"Embedder.embed, forward batch {args.embed_batch}, {per_call} texts a call (the API's limit: "
                f"texts are sorted by length within a call, while the baseline sorts all {len(texts)})"
            ),
        )
    ]
    if server is not None:
        rows.append(
            Row(f"{name}, HTTP", "emb/s", baseline_name=base_name, note=f"/v1/embeddings, {per_call} texts a request")
        )
        http_embed(server, texts[:8], per_call)  # warm-up (loads the model in the server)

    def atelier_embed() -> tuple[float, torch.Tensor]:
        def run():
            t0 = time.perf_counter()
            vecs = []
            for start in range(0, len(texts), per_call):
                vecs += embedder.embed(texts[start : start + per_call]).vectors
            return time.perf_counter() - t0, torch.tensor(vecs)

        return in_fresh_thread(run)

    def st_encode() -> tuple[float, torch.Tensor]:
        def run():
            t0 = time.perf_counter()
            vecs = st.encode(texts, batch_size=args.embed_batch, normalize_embeddings=True, convert_to_tensor=True)
            return time.perf_counter() - t0, vecs.float()

        return in_fresh_thread(run)

    atelier_embed()  # warm-up
    st_encode()
    for r in range(args.repeats):
        secs_b, vb = st_encode()
        secs_a, va = atelier_embed()
        rows[0].atelier.append(len(texts) / secs_a)
        rows[0].baseline.append(len(texts) / secs_b)
        details["embedding_min_cosine_vs_sentence_transformers"] = float((va * vb).sum(-1).min())
        n = len(texts)
        msg = f"embeddings repeat {r + 1}: atelier {n / secs_a:.1f}/s, sentence-transformers {n / secs_b:.1f}/s"
        if server is not None:
            per_s = len(texts) / http_embed(server, texts, per_call)
            rows[1].atelier.append(per_s)
            rows[1].baseline.append(len(texts) / secs_b)
            msg += f", HTTP {per_s:.1f}/s"
        log(msg)
    return rows


def _schema(i: int) -> dict:
    """A typical extraction schema, different for each ``i`` (so that compiling it is a cache miss)."""
    return {"type": "object", "additionalProperties": False, "required": ["name", "year", "tags", f"field_{i}"],
            "properties": {"name": {"type": "string", "maxLength": 40}, "year": {"type": "integer",
                           "minimum": 1000, "maximum": 2100}, "tags": {"type": "array", "maxItems": 4, "items": {
                           "type": "string", "enum": ["red", "green", "blue", f"colour{i}"]}},
                           f"field_{i}": {"type": "boolean"}}}  # fmt: skip


def bench_structured(args, loaded, engine, details: dict) -> list[Row]:
    """Throughput of a batch half of which is grammar-constrained, and schema compile time."""
    from atelier.engine.types import Constraint

    tok = loaded.tokenizer
    b, m = 32, args.concurrent_tokens
    prompts = [tok(PROMPTS[i % len(PROMPTS)] + " As JSON:", add_special_tokens=False)["input_ids"] for i in range(b)]
    constrained = [Constraint("json_schema", json.dumps(_schema(i))) if i % 2 == 0 else None for i in range(b)]
    row = Row(f"aggregate, {b} concurrent, half with JSON Schemas", "tok/s", baseline_name="the same batch unconstrained",
              note=f"in process, {m} max tokens; {b // 2} rows each with its own schema; tokens / wall time")
    engine_batch(engine, prompts[:4], 2, constrained[:4])  # warm-up (compiles those schemas)
    for r in range(args.repeats):
        secs, n = engine_batch(engine, prompts, m)
        base = n / secs
        secs, n = engine_batch(engine, prompts, m, constrained)
        row.atelier.append(n / secs)
        row.baseline.append(base)
        log(f"structured repeat {r + 1}: unconstrained {base:.1f}, half constrained {n / secs:.1f} tok/s")
    compile_ms = []
    for i in range(1000, 1000 + (20 if args.quick else 100)):
        t0 = time.perf_counter()
        engine.validate_constraint(CHAT, Constraint("json_schema", json.dumps(_schema(i))), "response_format")
        compile_ms.append((time.perf_counter() - t0) * 1000)
    compile_ms.sort()
    details["schema compile ms (p50, p99)"] = (round(compile_ms[len(compile_ms) // 2], 2),
                                               round(compile_ms[min(len(compile_ms) - 1, int(len(compile_ms) * .99))], 2))
    return [row]


# ---------------------------------------------------------------- main

SECTIONS = ("decode", "prefill", "concurrency", "embeddings", "structured")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from atelier.settings import Settings

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a short run: 1 repeat, small sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; medians are reported (default 3)")
    ap.add_argument("--decode-tokens", type=int, default=64, help="new tokens for the batch-1 decode (default 64)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="concurrent requests (default 8 32)")
    ap.add_argument("--concurrent-tokens", type=int, default=32, help="max tokens per concurrent request (default 32)")
    ap.add_argument("--prefill-tokens", type=int, default=512, help="prompt length for prefill (default 512)")
    ap.add_argument("--embed-texts", type=int, default=256, help="sentences to embed (default 256)")
    ap.add_argument("--embed-batch", type=int, default=32, help="embedding forward batch (default 32)")
    ap.add_argument("--threads", type=int, default=Settings().threads, help="torch threads, here and in the server")
    ap.add_argument("--no-http", action="store_true", help="skip the figures through the HTTP server")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these sections")
    ap.add_argument(
        "--json", type=Path, default=None, help="result file (default bench/results/generation-<time>.json)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.decode_tokens = min(args.decode_tokens, 16)
        args.concurrent_tokens = min(args.concurrent_tokens, 8)
        args.prefill_tokens = min(args.prefill_tokens, 256)
        args.embed_texts = min(args.embed_texts, 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(torch.get_num_threads())
    t_start = time.perf_counter()
    log(
        f"torch threads {info['torch_threads']} of {info['affinity']} usable cores; load average at start "
        + " / ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    )
    loaded, engine, _ = load_models(args.threads)
    details: dict = {}
    rows: list[Row] = []
    server = None
    needs_server = not args.no_http and bool({"prefill", "concurrency", "embeddings"} & set(args.only))
    with contextlib.ExitStack() as stack:
        stack.callback(engine.close)
        if needs_server:
            log("starting the server...")
            env = {"ATELIER_THREADS": str(args.threads), "ATELIER_MAX_BATCH": str(max(32, *args.concurrency)),
                   "ATELIER_QUANTIZATION": "none", "ATELIER_PREFIX_CACHE_MB": "0"}  # the baselines' fp32 weights
            server = stack.enter_context(ServerProcess(env=env))
            log(f"server up at {server.url}")
        if "decode" in args.only:
            rows.append(bench_decode(args, loaded, engine, details))
        if "prefill" in args.only:
            rows += bench_prefill(args, loaded, engine, server, details)
        if "concurrency" in args.only:
            rows += bench_concurrency(args, loaded, engine, server, details)
        if "embeddings" in args.only:
            rows += bench_embeddings(args, server, details)
        if "structured" in args.only:
            rows += bench_structured(args, loaded, engine, details)
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(f"Atelier vs baselines, median of {args.repeats} repeat(s); ratio = Atelier / baseline (higher is better)")
    print(
        f"threads {info['torch_threads']}, load average at start {info['loadavg_at_start'][0]:.2f}, "
        f"at end {info['loadavg_at_end'][0]:.2f}; {info['seconds']:.0f} s"
    )
    print(format_table(rows))
    for key, value in details.items():
        print(f"  {key}: {value}")
    payload = {
        "benchmark": "generation",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "rows": [r.to_json() for r in rows],
        "details": details,
    }
    path = write_json("generation", payload, args.json)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
