"""``POST /v1/chat/completions``: OpenAI chat completions, streamed or not.

Messages go through Atelier's prompt engineering (preamble, k-shot examples, chain of
thought), then through the one generation pipeline (``cloud.generation``: model resolved
after the policy check, rendered in the model's chat format, sized, admitted) and are
answered in OpenAI's shape (``api/openai/serving.py``). With ``knowledge_base`` the answer
is grounded (``grounded_chat.py``). Holds no model math and no authentication.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.openai import grounded_chat
from atelier.api.openai.protocol import ChatCompletion, ChatCompletionRequest
from atelier.api.openai.serving import respond_chat
from atelier.errors import InvalidInput
from atelier.prompts.formats import normalize_messages, with_system
from atelier.prompts.templates import PromptTemplate

router = APIRouter(tags=["openai"])


def build_messages(body: ChatCompletionRequest) -> list[dict]:
    """The conversation after prompt engineering.

    k-shot examples and chain of thought apply to the last user message (the examples
    become user/assistant turns just before it); ``preamble`` replaces any system message.

    Raises:
        InvalidInput: Invalid messages, or examples/chain of thought without a user message.
    """
    messages = normalize_messages([m.model_dump() for m in body.messages])
    if body.examples or body.chain_of_thought:
        last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
        if last is None:
            param = "examples" if body.examples else "chain_of_thought"
            raise InvalidInput(f"{param} needs a user message to apply to", param=param)
        template = PromptTemplate(examples=body.examples, chain_of_thought=body.chain_of_thought)
        messages = messages[:last] + template.messages(messages[last]["content"]) + messages[last + 1 :]
    if body.preamble is not None:
        messages = with_system(messages, body.preamble)
    return messages


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A chat.completion, or SSE chunks."}},
    summary="Create a chat completion",
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, services: ServicesDep,
                                 guard: GuardDep):
    """Answer a conversation, as one ``chat.completion`` or as ``chat.completion.chunk`` events."""
    messages = build_messages(body)
    if body.knowledge_base is not None:  # grounded in a knowledge base: answer with citations
        return await grounded_chat.complete(request, services, guard, body, messages)
    prepared = await services.generation.prepare_chat(guard, body.model, messages, body.sampling,
                                                      limit=body.limit("messages"), chat_format=body.chat_format)
    return await respond_chat(request, services.generation, guard.principal, prepared, prepared.served,
                              stream=body.stream, include_usage=body.include_usage)
