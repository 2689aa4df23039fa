"""``POST /v1/chat/completions``: OpenAI chat completions, streamed or not.

Messages go through Atelier's prompt engineering (preamble, k-shot examples, chain of
thought), then through the one generation pipeline (``cloud.generation``: model resolved
after the policy check, rendered in the model's chat format with the tools, by the model's
own template when it has a tools section, else Hermes-style (``prompts/tools.py``), sized, the output constrained when the request
asks for JSON, a schema or a forced tool call, admitted; ``n`` choices) and are answered in
OpenAI's shape (``api/openai/serving.py``). With ``knowledge_base`` the answer is grounded
(``grounded_chat.py``). Holds no model math and no authentication.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.openai import grounded_chat
from atelier.api.openai.choices import ChoiceReader
from atelier.api.openai.options import ToolPlan, output_constraint, plan_tools
from atelier.api.openai.protocol import ChatCompletion, ChatCompletionRequest
from atelier.api.openai.serving import respond_chat
from atelier.cloud.generation import Shape
from atelier.errors import InvalidInput
from atelier.prompts.formats import normalize_messages, with_system
from atelier.prompts.templates import PromptTemplate

router = APIRouter(tags=["openai"])


def build_messages(body: ChatCompletionRequest) -> list[dict]:
    """The conversation after prompt engineering, tool calls and tool results kept.

    K-shot examples and chain of thought apply to the last user message (the examples become
    user/assistant turns just before it); ``preamble`` replaces any system message. The tools
    are rendered with the conversation (``render_chat``).

    Raises:
        InvalidInput: Invalid messages, or examples/chain of thought without a user message.
    """
    messages = normalize_messages([m.model_dump() for m in body.messages], tool_turns=True)
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


def shape_of(body: ChatCompletionRequest, tools: ToolPlan) -> Shape:
    """The constraint and the number of choices a chat request asks for.

    Raises:
        InvalidInput: A forced tool call together with a response format or structured outputs.
    """
    constraint, param = output_constraint(body.response_format, body.structured_outputs)
    if tools.constraint is not None:
        if constraint is not None:
            raise InvalidInput("a forced tool call and a response format cannot be combined", param="tool_choice")
        constraint, param = tools.constraint, "tools"
    return Shape(constraint, param or "response_format", body.n)


def reader_for(services, served, body: ChatCompletionRequest, tools: ToolPlan) -> ChoiceReader:
    """How a chat request's choices are read (tool calls, log probabilities)."""
    top = (body.top_logprobs or 0) if body.logprobs else None
    return ChoiceReader(services.generation.tokenizer(served.spec), tools, top)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A chat.completion, or SSE chunks."}},
    summary="Create a chat completion",
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, services: ServicesDep,
                                 guard: GuardDep):
    """Answer a conversation, as one ``chat.completion`` or as ``chat.completion.chunk`` events."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
    tools = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    messages = build_messages(body)
    if body.knowledge_base is not None:  # grounded in a knowledge base: answer with citations
        if tools.mode != "none" or body.n != 1:
            raise InvalidInput("knowledge_base answers one choice without tools", param="knowledge_base")
        if body.response_format is not None or body.structured_outputs is not None:
            raise InvalidInput("knowledge_base has its own answer shape: use knowledge_base.answer_mode "
                               "\"structured\" instead of response_format", param="response_format")
        return await grounded_chat.complete(request, services, guard, body, messages)
    prepared = await services.generation.prepare_chat(guard, body.model, messages, body.sampling,
                                                      limit=body.limit("messages"), chat_format=body.chat_format,
                                                      shape=shape_of(body, tools), functions=tools.functions)
    return await respond_chat(request, services.generation, guard.principal, prepared, prepared.served,
                              reader_for(services, prepared.served, body, tools), stream=body.stream,
                              include_usage=body.include_usage)
