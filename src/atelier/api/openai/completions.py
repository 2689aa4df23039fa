"""``POST /v1/completions``: OpenAI (legacy) text completions on a chat model, streamed or not.

The prompt is continued as is, with no chat template: a string (tokenized without special
tokens, as ``prompts.tokens`` does) or token ids. Holds no model math.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from atelier.api.deps import CatalogDep, EngineDep, PrincipalDep
from atelier.api.errors import domain_error_payload, server_error_payload
from atelier.api.openai import generation, served_models
from atelier.api.openai.generation import CLIENT_CLOSED
from atelier.api.openai.protocol import Completion, CompletionChoice, CompletionRequest
from atelier.api.streaming import DONE, SSEResponse, sse_event
from atelier.catalog import ModelSpec
from atelier.engine.client import EngineClient
from atelier.engine.types import GenerationRequest, Usage
from atelier.errors import AtelierError, InvalidInput

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])


def prompt_ids(engine: EngineClient, spec: ModelSpec, body: CompletionRequest) -> list[int]:
    """Token ids of the prompt (blocking: may load the tokenizer; run it in a thread).

    Raises:
        InvalidInput: An empty prompt, or a token id outside the model's vocabulary.
    """
    tokenizer = engine.tokenizer(spec.name)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    else:
        vocab = len(tokenizer)
        for i, token in enumerate(prompt):
            if not 0 <= token < vocab:
                message = f"token id {token} is outside the vocabulary (0 to {vocab - 1})"
                raise InvalidInput(message, param=f"prompt[{i}]")
        ids = list(prompt)
    if not ids:
        raise InvalidInput("prompt must not be empty", param="prompt")
    return ids


@router.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A text_completion, or SSE chunks."}},
    summary="Create a text completion",
)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep, catalog: CatalogDep, principal: PrincipalDep
):
    """Continue a prompt, as one ``text_completion`` or as streamed ``text_completion`` chunks."""
    served = await served_models.resolve(request, engine, catalog, body.model)
    spec = served.spec
    ids = await run_in_threadpool(prompt_ids, engine, spec, body)
    requested, max_param = body.requested_max_tokens()
    max_tokens = generation.max_new_tokens(spec, len(ids), requested, prompt_param="prompt", max_param=max_param)
    completion_id = generation.new_id("cmpl")
    job = GenerationRequest(
        request_id=completion_id, prompt_ids=ids, params=body.sampling(max_tokens), adapter_slot=served.adapter_slot
    )
    events = await generation.open_generation(request, principal, engine, spec.name, job)
    head = {**generation.response_head(completion_id, spec), "model": served.name}
    if body.stream:
        return SSEResponse(generation.ClosingBody(_chunks(events, head, len(ids), body.include_usage), events))
    outcome = await generation.collect(events, len(ids), request)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    return Completion(
        **head,
        choices=[CompletionChoice(text=outcome.text, finish_reason=outcome.finish_reason)],
        usage=generation.usage_info(outcome.usage),
    )


async def _chunks(
    events: generation.Metered, head: dict, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """SSE events: text pieces, the finish reason, optionally the usage, then ``[DONE]``."""
    generated = 0
    try:
        async for event in events:
            generated += len(event.token_ids)
            finish = generation.finish_reason(event) if event.finish_reason is not None else None
            if event.text or finish is not None:
                choice = CompletionChoice(text=event.text, finish_reason=finish)
                yield sse_event(Completion(**head, choices=[choice]))
            if finish is not None:
                if include_usage:
                    usage = event.usage or Usage(prompt_tokens, generated)
                    yield sse_event(Completion(**head, choices=[], usage=generation.usage_info(usage)))
                break
        yield DONE
    except AtelierError as exc:
        yield sse_event(domain_error_payload(exc))
    except Exception:
        log.exception("completion stream %s failed", head["id"])
        yield sse_event(server_error_payload())
    finally:
        await events.aclose()
