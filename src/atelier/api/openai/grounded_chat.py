"""The ``knowledge_base`` option of ``POST /v1/chat/completions``: a chat answer grounded in a knowledge base.

The last user message is the question: it is searched in the knowledge base (the caller
needs ``use`` on it; an id that is not the caller's is a 400 naming ``knowledge_base``),
and replaced by the grounded user message of ``rag.grounded_prompt.build_messages`` (the
``<sources>`` block, then the question). The system message becomes the fixed grounding
instructions, followed by the caller's own system message if there was one; earlier turns
are kept. ``knowledge_base.answer_mode`` picks generative (default), extractive or
structured answers (``cloud.grounding``). The response is a ``chat.completion`` (or its
chunks) plus ``citations``: in a stream, on the chunk that carries the finish reason.
Nothing relevant found: the fixed no-answer text, without calling the model. Retrieval,
the answer modes and the citations are ``cloud.grounding``'s.
"""

from __future__ import annotations

from fastapi import Request

from atelier.api.authz import Guard
from atelier.api.citations import CitationOut, citations_out
from atelier.api.openai.choices import ChoiceReader
from atelier.api.openai.protocol import ChatCompletion, ChatCompletionRequest, KnowledgeBaseOption
from atelier.api.openai.serving import respond_chat
from atelier.api.services import Services
from atelier.cloud.knowledge_bases import QueryRequest, SearchFilter
from atelier.errors import InvalidInput
from atelier.prompts.formats import normalize_messages
from atelier.rag.grounded_prompt import build_messages
from atelier.rag.indexing import Hit


class GroundedChatCompletion(ChatCompletion):
    """A ``chat.completion`` with the passages its answer cites (Atelier extension)."""

    citations: list[CitationOut]
    answer_mode: str
    dropped_citations: int


def grounded_messages(messages: list[dict], passages: list[Hit]) -> list[dict]:
    """The conversation with its last user message grounded in ``passages`` (see the module docstring).

    Raises:
        InvalidInput: No user message to answer (``param="messages"``).
    """
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last is None:
        raise InvalidInput("knowledge_base needs a user message to answer", param="messages")
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    head, tail = build_messages(messages[last]["content"], passages, system=system)
    turns = [m for m in messages[:last] if m["role"] != "system"]
    return [head, *turns, tail, *messages[last + 1:]]


def _question(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            return message["content"]
    raise InvalidInput("knowledge_base needs a non-empty user message to answer", param="messages")


async def complete(request: Request, services: Services, guard: Guard, body: ChatCompletionRequest,
                   messages: list[dict]):
    """Answer the chat from the knowledge base named in ``body.knowledge_base``.

    Args:
        request: The HTTP request.
        services: The service's parts.
        guard: The caller's authorization.
        body: The chat request (its last user message, as sent, is the search query).
        messages: The conversation after prompt engineering (what would be rendered).

    Raises:
        InvalidInput: No such knowledge base for the caller (``param="knowledge_base"``), no
            user message, or a prompt that does not fit the model.
        Forbidden: The caller may see the knowledge base but not use it.
    """
    option = body.knowledge_base
    if isinstance(option, str):
        option = KnowledgeBaseOption(id=option)
    kb = guard.reference("knowledge-bases", option.id, "invoke", "knowledge_base")
    raw = normalize_messages([m.model_dump() for m in body.messages])
    question = _question(raw)[:8000]
    query = QueryRequest(query=question, mode=option.mode, top_k=option.top_k,
                         filter=SearchFilter(document_ids=option.document_ids, tags=option.tags), rerank=option.rerank)
    grounding = services.grounding
    hits = await grounding.search(guard.principal, kb, query)
    ready = await grounding.prepare(
        guard, kb, question, hits, mode=option.mode, model=body.model,
        messages_for=lambda passages: grounded_messages(messages, passages), sampling=body.sampling,
        limit=body.limit("messages"), answer_mode=option.answer_mode,
    )  # fmt: skip

    def extras(text: str) -> dict:
        answered = grounding.read(ready, text)
        cited = citations_out(answered.citations, answered.found_by)
        return {"citations": [c.model_dump(mode="json") for c in cited], "answer_mode": option.answer_mode,
                "dropped_citations": answered.dropped_citations}

    top = (body.top_logprobs or 0) if body.logprobs else None
    reader = ChoiceReader(services.generation.tokenizer(ready.served.spec), top_logprobs=top)
    return await respond_chat(request, services.generation, guard.principal, ready.prepared, ready.served, reader,
                              stream=body.stream, include_usage=body.include_usage, fixed_text=ready.fixed,
                              extras=extras)
