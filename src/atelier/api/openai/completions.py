"""``POST /v1/completions``: OpenAI (legacy) text completions on a chat model, streamed or not.

The prompt is continued as is, with no chat template: a string (tokenized without special
tokens) or token ids, through the one generation pipeline (``cloud.generation``) and
answered in OpenAI's shape (``api/openai/serving.py``). Holds no model math.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.openai.protocol import Completion, CompletionRequest
from atelier.api.openai.serving import respond_completion

router = APIRouter(tags=["openai"])


@router.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A text_completion, or SSE chunks."}},
    summary="Create a text completion",
)
async def create_completion(body: CompletionRequest, request: Request, services: ServicesDep, guard: GuardDep):
    """Continue a prompt, as one ``text_completion`` or as streamed ``text_completion`` chunks."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    prepared = await services.generation.prepare_text(guard, body.model, prompt, body.sampling,
                                                      limit=body.limit("prompt"))
    return await respond_completion(request, services.generation, guard.principal, prepared,
                                    stream=body.stream, include_usage=body.include_usage)
