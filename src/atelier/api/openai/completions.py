"""``POST /v1/completions``: OpenAI (legacy) text completions on a chat model, streamed or not.

The prompt is continued as is, with no chat template: a string (tokenized without special
tokens) or token ids, through the one generation pipeline (``cloud.generation``) and
answered in OpenAI's shape (``api/openai/serving.py``). Holds no model math.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from dataclasses import replace

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.openai.choices import ChoiceReader
from atelier.api.openai.options import output_constraint
from atelier.api.openai.protocol import Completion, CompletionRequest
from atelier.api.openai.serving import respond_completion
from atelier.cloud.generation import Shape
from atelier.errors import InvalidInput

router = APIRouter(tags=["openai"])


@router.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A text_completion, or SSE chunks."}},
    summary="Create a text completion",
)
async def create_completion(body: CompletionRequest, request: Request, services: ServicesDep, guard: GuardDep):
    """Continue a prompt, as one ``text_completion`` or as streamed ``text_completion`` chunks."""
    if body.best_of is not None:
        if body.best_of < body.n:
            raise InvalidInput(f"best_of ({body.best_of}) must be at least n ({body.n})", param="best_of")
        if body.stream and body.best_of > 1:
            raise InvalidInput("best_of cannot be streamed", param="best_of")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    constraint, param = output_constraint(None, body.structured_outputs)
    choices = body.best_of or body.n

    def sampling(max_tokens: int):
        params = body.sampling(max_tokens)
        if body.best_of and params.logprobs is None:  # best_of ranks the choices by their log probabilities
            params = replace(params, logprobs=0)
        return params

    prepared = await services.generation.prepare_text(guard, body.model, prompt, sampling, limit=body.limit("prompt"),
                                                      shape=Shape(constraint, param or "structured_outputs", choices))
    reader = ChoiceReader(services.generation.tokenizer(prepared.served.spec), top_logprobs=body.logprobs)
    return await respond_completion(request, services.generation, guard.principal, prepared, reader,
                                    stream=body.stream, include_usage=body.include_usage, echo=body.echo,
                                    best_of=body.best_of, n=body.n)
