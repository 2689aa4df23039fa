"""Fixtures of the knowledge-base tests: the real app, store and worker, with a fast fake embedder.

``HashEmbedder`` is a deterministic bag-of-words embedder (each word hashed to a signed
dimension, then L2-normalised): texts sharing words have a high cosine, others near 0, so
retrieval results are predictable and build in microseconds. ``ScriptedEngine`` is the real
``LocalEngine`` except for the chat model ``scripted``, whose generations are recorded (the
prompt token ids as the engine received them) and answered with a fixed reply: the grounded
prompt can then be read back exactly as it reached the engine. Everything else (app,
policies, Chroma + FTS5 store, job queue, worker, handler) is the real code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.engine.types import EmbeddingResult, GenerationRequest, TokenEvent, Usage
from atelier.jobs.kb_ingest import KIND, KbIngestHandler
from atelier.jobs.worker import Worker
from atelier.settings import Settings

ADMIN_KEY = "kb-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
DIMS = 64
EMBED = ModelSpec(name="hash-embed", kind="embedding", source=ModelSource(path="/nonexistent"), context_length=512,
                  dimensions=DIMS, max_input_tokens=512, relevance_threshold=0.3)
SCRIPTED = ModelSpec(name="scripted", kind="chat", source=ModelSource(path="/nonexistent"), context_length=65536,
                     max_output_tokens=64)
TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                 max_output_tokens=64)
_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Bag of words hashed into ``dims`` signed buckets, L2-normalised (see the module docstring)."""

    def __init__(self, dims: int = DIMS):
        self.dimensions = dims
        self.max_tokens = 512
        self.tokenizer = None
        self.calls: list[tuple[int, str | None]] = []

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text)) + 2

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimensions, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            v[digest[0] % self.dimensions] += 1.0 if digest[1] & 1 else -1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    def embed(self, texts, truncate="END", input_type=None) -> EmbeddingResult:
        self.calls.append((len(texts), input_type))
        return EmbeddingResult([self.vector(t).tolist() for t in texts], sum(self.count_tokens(t) for t in texts))


class ScriptedEngine(LocalEngine):
    """``LocalEngine`` whose model ``scripted`` records each request and answers ``reply``."""

    def __init__(self, catalog, settings, embedder: HashEmbedder):
        super().__init__(catalog, settings, preloaded={"tiny": tiny_loaded("tiny"), "scripted": tiny_loaded("scripted"),
                                                       "hash-embed": embedder})
        self.requests: list[GenerationRequest] = []
        self.reply = "The answer is in [1]."

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if model != "scripted":
            async for event in super().generate(model, request):
                yield event
            return
        self.requests.append(request)
        ids = tuple(self.tokenizer(model).encode(self.reply, add_special_tokens=False))
        yield TokenEvent(self.reply, ids, "stop", Usage(len(request.prompt_ids), len(ids)))

    def prompt_text(self, index: int = -1) -> str:
        """The decoded prompt of a recorded request, as the engine received it."""
        return self.tokenizer("scripted").decode(self.requests[index].prompt_ids)


@pytest.fixture(scope="module")
def kb_settings(tmp_path_factory) -> Settings:
    data = tmp_path_factory.mktemp("kb")
    return Settings(data_dir=data, cache_dir=data / "cache", admin_key=ADMIN_KEY, threads=1,
                    default_chat_model="scripted")


@pytest.fixture(scope="module")
def kb_catalog() -> Catalog:
    return Catalog([*BUILTIN, EMBED, SCRIPTED, TINY])


@pytest.fixture(scope="module")
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture(scope="module")
def kb_engine(kb_catalog, kb_settings, embedder) -> Iterator[ScriptedEngine]:
    engine = ScriptedEngine(kb_catalog, kb_settings, embedder)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def kb_app(kb_settings, kb_engine, kb_catalog):
    return create_app(kb_settings, engine=kb_engine, catalog=kb_catalog)


@pytest.fixture(scope="module")
def http(kb_app) -> Iterator[TestClient]:
    with TestClient(kb_app, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def worker(kb_app, http, kb_catalog, embedder, kb_settings) -> Worker:
    """A worker over the app's own database, objects and vector store (run it with ``drain``)."""
    state = kb_app.state.services
    handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
    return Worker(state.db, {KIND: handler}, poll_seconds=0.05, data_dir=kb_settings.data_path)


@pytest.fixture
def drain(worker):
    """``drain()`` runs every queued ingestion job to its end; returns how many ran."""

    def run() -> int:
        done = 0
        while worker.run_once():
            done += 1
        return done

    return run


@pytest.fixture
def make_kb(http):
    """``make_kb(name, **options)`` → the created knowledge base (hash-embed, small chunks)."""

    def make(name: str, **options) -> dict:
        body = {"name": name, "embedding_model": "hash-embed", "chunk_size": 40, "chunk_overlap": 5, **options}
        response = http.post("/v1/knowledge-bases", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    return make


@pytest.fixture
def upload(http):
    """``upload(kb_id, filename, data, tags=None, client=http)`` → the response."""

    def send(kb_id: str, filename: str, data: bytes, tags: str | None = None, client: TestClient | None = None):
        form = {"tags": tags} if tags is not None else None
        return (client or http).post(f"/v1/knowledge-bases/{kb_id}/documents", files={"file": (filename, data)},
                                     data=form)

    return send


@pytest.fixture
def check_error():
    """``check_error(response, status, param=None)`` → the OpenAI error object, checked."""

    def check(response, status: int, param: str | None = None) -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error) and error["message"], error
        if param is not None:
            assert error["param"] == param, error
        return error

    return check
