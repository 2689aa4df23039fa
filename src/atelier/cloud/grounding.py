"""Grounded generation: search a knowledge base, then answer from its passages with ``[n]`` citations.

Shared by ``POST /v1/knowledge-bases/{id}/answer`` and the ``knowledge_base`` option of chat
completions: retrieve (:meth:`Grounding.search`: queries embedded by the engine with the
knowledge base's own embedding model, ``search_query``; passages ``search_document`` when
reranking) → keep the relevant passages → answer in one of three modes → cite:

- ``generative`` (default): the grounded prompt (``rag.grounded_prompt``: fixed system
  instructions, sources as data, the question), the answer started for the model
  (``According to [1],``), stop sequences at the prompt's markers, no ``<`` token (the model
  would copy the sources' markup) and the engine's loop guard,
  through the one generation pipeline (``cloud.generation``: the tenancy's limits, token
  accounting and metrics apply); citations are its ``[n]`` markers (a number no passage
  has is dropped and counted), else the passages it shares content words with;
- ``extractive``: no generation, the passages' sentences that best answer the question
  (``rag.extractive``), each with its ``[n]`` and exact span;
- ``structured``: the model answers inside the JSON Schema ``{citations: [n…], answer}``
  (the constrained decoder), so every answer carries valid citations.

When no retrieved passage is relevant, nothing is generated: the answer is the fixed
``NO_ANSWER`` text. Knows nothing about HTTP or OpenAI's shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import numpy as np

import anyio.from_thread
import anyio.to_thread

from atelier.catalog import Catalog
from atelier.cloud.generation import GenerationService, Limit, Prepared, Sampling, Shape
from atelier.cloud.knowledge_bases import KnowledgeBaseService, QueryRequest
from atelier.cloud.served_models import Authorizer, ServedModel
from atelier.engine.client import EngineClient
from atelier.engine.types import MAX_INPUTS, Constraint, SamplingParams
from atelier.principal import Principal
from atelier.rag.answer import NO_ANSWER, Citation, cited_numbers, relevant, trim_loop
from atelier.rag.attribution import attribute
from atelier.rag.extractive import extract
from atelier.rag.grounded_prompt import ANSWER_STOPS, DEFAULT_ANSWER_TOKENS, answer_prefix
from atelier.rag.indexing import Hit
from atelier.store.tables import KnowledgeBase

__all__ = ["NO_ANSWER", "AnswerMode", "Answered", "Grounded", "Grounding", "answer_schema", "answer_shape", "guarded",
           "markup_tokens", "read_answer"]

AnswerMode = Literal["generative", "extractive", "structured"]
MAX_STRUCTURED_CITATIONS = 3
MAX_STRUCTURED_ANSWER = 400
"""Characters of a structured answer: one or two sentences, within the default token limit."""


NOT_A_QUESTION = r"^[^?]+$"
"""A structured answer holds no question mark: a small model otherwise answers with the question itself."""


def answer_schema(passages: int) -> dict:
    """The JSON Schema of a structured answer over ``passages`` numbered passages: citations first (the
    model picks its sources before it writes), then the answer."""
    return {
        "type": "object", "additionalProperties": False, "required": ["citations", "answer"],
        "properties": {
            "citations": {"type": "array", "items": {"type": "integer", "enum": list(range(1, passages + 1))},
                          "minItems": 1, "maxItems": MAX_STRUCTURED_CITATIONS},
            "answer": {"type": "string", "minLength": 1, "maxLength": MAX_STRUCTURED_ANSWER, "pattern": NOT_A_QUESTION},
        },
    }  # fmt: skip


def answer_shape(answer_mode: AnswerMode, question: str, passages: int) -> Shape:
    """What a generated answer is held to: the citation schema (``structured``), or the start written
    for the model in the question's language (``generative``)."""
    if answer_mode == "structured":
        return Shape(Constraint("json_schema", json.dumps(answer_schema(passages))), "answer_mode")
    return Shape(prefix=answer_prefix(question) + " ")


def guarded(params: SamplingParams, requested: int | None, banned: tuple[int, ...] = ()) -> SamplingParams:
    """An answer's sampling: the prompt's markers as stop sequences, the loop guard on, at most
    ``DEFAULT_ANSWER_TOKENS`` when the caller set no limit (``requested`` None), and the ``banned``
    tokens (``markup_tokens``) never sampled."""
    limit = params.max_tokens if requested is not None else min(params.max_tokens, DEFAULT_ANSWER_TOKENS)
    bias = {**dict(params.logit_bias), **dict.fromkeys(banned, BANNED)}
    return replace(params, max_tokens=limit, stop=tuple(dict.fromkeys(params.stop + ANSWER_STOPS)), loop_guard=True,
                   logit_bias=tuple(bias.items()))


BANNED = -100.0
"""OpenAI's ``logit_bias`` for "never"."""


def markup_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The ids of the tokens that write a ``<`` (special tokens aside): an answer has no use for markup,
    and a small model otherwise copies the prompt's ``<source …>`` tags instead of answering (measured:
    the stop sequence at ``<source`` then ends it with nothing said)."""
    special = set(tokenizer.all_special_ids)
    return tuple(sorted(i for token, i in tokenizer.get_vocab().items()
                        if i not in special and "<" in tokenizer.convert_tokens_to_string([token])))


@dataclass(frozen=True)
class Answered:
    """A grounded answer as the caller shows it."""

    text: str
    citations: list[Citation]
    found_by: str
    """``marker`` (the answer's ``[n]``, or the extractive and structured modes' own), ``overlap``
    (no marker: the passages whose content words it shares)."""
    dropped_citations: int = 0
    """``[n]`` the answer wrote for passages it was not given."""


def read_answer(mode: AnswerMode, passages: list[Hit], text: str, stopped_by: str | None = None) -> Answered:
    """The answer and its citations from the finished ``text`` of a ``mode`` generation over ``passages``.

    An answer the loop guard ended (``stopped_by == "repetition"``) is cut where the loop began; a
    structured answer cut short (token limit, loop guard) keeps the citations and the answer text written
    so far.
    """
    if mode == "structured":
        numbers, answer = _structured(text)
        if stopped_by == "repetition":
            answer = trim_loop(answer)
        valid = [n for n in numbers if 1 <= n <= len(passages)]
        shown = (f"{answer} " + "".join(f"[{n}]" for n in valid)).strip()
        return Answered(shown, [Citation.of(n, passages[n - 1]) for n in valid], "marker", len(numbers) - len(valid))
    if stopped_by == "repetition":
        text = trim_loop(text)
    numbers, dropped = cited_numbers(text, len(passages))
    if numbers:
        return Answered(text, [Citation.of(n, passages[n - 1]) for n in numbers], "marker", dropped)
    return Answered(text, attribute(text, passages), "overlap", dropped)


_CITED = re.compile(r'"citations"\s*:\s*\[([\d,\s]*)')
_ANSWER = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)')


def _structured(text: str) -> tuple[list[int], str]:
    """The citation numbers (first occurrence order) and the answer of a structured answer, complete or cut short."""
    try:
        data = json.loads(text)
        return list(dict.fromkeys(int(n) for n in data["citations"])), str(data["answer"]).strip()
    except (ValueError, KeyError, TypeError):  # cut by the token limit or the loop guard: read what was written
        cited, answer = _CITED.search(text), _ANSWER.search(text)
        numbers = [int(n) for n in re.findall(r"\d+", cited.group(1))] if cited else []
        written = answer.group(1) if answer else ""
        try:
            written = json.loads(f'"{written.rstrip(chr(92))}"')
        except ValueError:  # a cut escape sequence
            pass
        return list(dict.fromkeys(numbers)), written.strip()


@dataclass(frozen=True)
class Grounded:
    """A grounded request: what serves it, the passages, and the generation to run (None: the answer is
    ``fixed``: ``NO_ANSWER`` when nothing relevant was found, or an extractive answer)."""

    served: ServedModel
    passages: list[Hit]
    prepared: Prepared | None
    mode: AnswerMode = "generative"
    fixed: str = NO_ANSWER
    fixed_citations: list[Citation] = field(default_factory=list)


class Grounding:
    """Retrieval and grounded prompts over the knowledge bases (see the module docstring).

    Args:
        knowledge_bases: The knowledge bases (search).
        engine: The inference engine (query embeddings).
        catalog: The models (embedding models' relevance thresholds).
        generation: The generation pipeline.
        default_model: The chat model used when a request names none.
    """

    def __init__(self, knowledge_bases: KnowledgeBaseService, engine: EngineClient, catalog: Catalog,
                 generation: GenerationService, default_model: str):
        self._knowledge_bases = knowledge_bases
        self._engine = engine
        self._catalog = catalog
        self._generation = generation
        self._default_model = default_model
        self._banned: dict[str, tuple[int, ...]] = {}

    def _embedder(self, model: str, input_type: str) -> Callable[[list[str]], list[list[float]]]:
        """A blocking ``texts → vectors`` over the async engine (call it from a worker thread)."""

        def embed(texts: list[str]) -> list[list[float]]:
            vectors: list[list[float]] = []
            for begin in range(0, len(texts), MAX_INPUTS):
                call = partial(self._engine.embed, model, texts[begin:begin + MAX_INPUTS], truncate="END",
                               input_type=input_type)
                vectors.extend(anyio.from_thread.run(call).vectors)
            return vectors

        return embed

    async def search(self, principal: Principal, kb: KnowledgeBase, query: QueryRequest) -> list[Hit]:
        """The knowledge base's passages for ``query``, searched with its embedding model.

        Raises:
            NotFound: The knowledge base is gone.
        """
        embed_query = self._embedder(kb.embedding_model, "search_query")
        embed_passages = self._embedder(kb.embedding_model, "search_document") if query.rerank else None
        return await anyio.to_thread.run_sync(self._knowledge_bases.search, principal, kb.id, query, embed_query,
                                              embed_passages)

    def relevant(self, kb: KnowledgeBase, hits: list[Hit], mode: str) -> list[Hit]:
        """The hits worth answering from (``rag.answer.relevant`` at the embedding model's threshold)."""
        spec = self._catalog.get(kb.embedding_model, kind="embedding")
        return relevant(hits, mode, min_similarity=spec.relevance_threshold)

    async def prepare(self, guard: Authorizer, kb: KnowledgeBase, question: str, hits: list[Hit], *, mode: str,
                      model: str | None, messages_for: Callable[[list[Hit]], list[dict]], sampling: Sampling,
                      limit: Limit, answer_mode: AnswerMode = "generative") -> Grounded:
        """Resolve the model, keep the relevant passages and prepare the answer in ``answer_mode``.

        Args:
            guard: The caller (policies on endpoints and custom models).
            kb: The knowledge base searched.
            question: The question (the extractive mode's query, the generative answer's language).
            hits: What the search returned.
            mode: The retrieval mode (for the relevance gate).
            model: The chat model asked for; None for the service's default.
            messages_for: ``passages → chat messages`` (the grounded prompt).
            sampling: ``max_new_tokens → SamplingParams``.
            limit: The requested token limit and the parameters to name when it does not fit.
            answer_mode: ``generative``, ``extractive`` or ``structured`` (see the module docstring).

        Raises:
            NotFound: No such chat model for the caller.
            InvalidInput: The prompt or the token limit does not fit the model.
        """
        served = await self._generation.resolve(guard, model or self._default_model)
        passages = self.relevant(kb, hits, mode)
        if not passages:
            return Grounded(served, [], None, answer_mode)
        if answer_mode == "extractive":
            found = await anyio.to_thread.run_sync(self._extract, kb, question, passages)
            if found is None:
                return Grounded(served, passages, None, answer_mode)
            return Grounded(served, passages, None, answer_mode, found.text, found.citations)
        shape = answer_shape(answer_mode, question, len(passages))
        banned = await anyio.to_thread.run_sync(self._markup_tokens, served)
        prepared = await self._generation.prepare_chat(
            guard, served, messages_for(passages), lambda size: guarded(sampling(size), limit.requested, banned),
            limit=limit, shape=shape,
        )  # fmt: skip
        return Grounded(served, passages, prepared, answer_mode)

    def _markup_tokens(self, served: ServedModel) -> tuple[int, ...]:
        """``markup_tokens`` of the served model's tokenizer, computed once per base model (blocking)."""
        name = served.spec.name
        if name not in self._banned:
            self._banned[name] = markup_tokens(self._generation.tokenizer(served.spec))
        return self._banned[name]

    def _extract(self, kb: KnowledgeBase, question: str, passages: list[Hit]):
        """The extractive answer (blocking: embeds the question and the passages' sentences)."""
        embed_query = self._embedder(kb.embedding_model, "search_query")
        embed_sentences = self._embedder(kb.embedding_model, "search_document")
        query = np.asarray(embed_query([question])[0], dtype=np.float32)  # (d,)
        return extract(question, passages, lambda texts: np.asarray(embed_sentences(texts), dtype=np.float32), query)

    @staticmethod
    def read(grounded: Grounded, text: str, stopped_by: str | None = None) -> Answered:
        """The answer a caller shows for the finished ``text`` of ``grounded``'s generation (or its fixed answer)."""
        if grounded.prepared is None:
            return Answered(grounded.fixed, list(grounded.fixed_citations), "marker")
        return read_answer(grounded.mode, grounded.passages, text, stopped_by)
