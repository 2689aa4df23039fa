"""``atelier chat|complete|embed|tokenize|health``: the inference commands.

Each builds one request from its flags (unset flags are not sent, so the server's defaults
apply, and the server checks every bound: one source of truth, whose 400 names the
parameter) and prints the answer: generated text streams to stdout, usage goes to stderr.
The sampling flags ``chat`` and ``complete`` share are the fields of ``Sampling``.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

import typer

from pydantic import BaseModel, Field

from atelier.cli.common import client_for, load_settings, read_stdin_arg
from atelier.cli.model_options import model_options
from atelier.client import Generation, TextStream, Usage


class ChatFormat(str, Enum):
    """``--format``: how the messages become the prompt."""

    template = "template"
    llama2 = "llama2"
    chatml = "chatml"


class Truncate(str, Enum):
    """``--truncate``: what to do with an input longer than the model's context."""

    NONE = "NONE"
    START = "START"
    END = "END"


class InputType(str, Enum):
    """``--input-type``: what the embedded text is used for."""

    search_document = "search_document"
    search_query = "search_query"
    classification = "classification"
    clustering = "clustering"


class Sampling(BaseModel):
    """The sampling flags of ``chat`` and ``complete``, sent as request fields when given.

    No bounds here: the server checks them (one source of truth) and its 400 names the field.
    """

    max_tokens: int | None = Field(None, description="Most tokens to generate.")
    temperature: float | None = Field(None, description="0 = greedy; up to 2.")
    top_k: int | None = Field(None, description="Sample among the k likeliest tokens (0 = all).")
    top_p: float | None = Field(None, description="Nucleus mass in (0, 1], applied after top-k.")
    frequency_penalty: float | None = Field(None, description="In [-2, 2], times a token's count.")
    presence_penalty: float | None = Field(None, description="In [-2, 2], once per token present.")
    stop: tuple[str, ...] | None = Field(None, description="Stop sequence (repeatable).")
    seed: int | None = Field(None, description="Same seed and parameters give the same text.")


sampling_options = model_options(Sampling, into="sampling", names={"temperature": ("--temperature", "-t")})
"""Puts ``Sampling``'s flags in place of a command's ``sampling`` parameter, which receives those given."""

# Options shared by `chat` and `complete`.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model id (default: smollm2-135m-instruct).")]
StreamOpt = Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they are generated.")]
UsageOpt = Annotated[bool, typer.Option("--usage", help="Print token usage to stderr.")]


@sampling_options
def chat(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help="The user message ('-' reads it from stdin).")],
    model: ModelOpt = None,
    *,
    sampling: dict[str, Any],
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt (sent as `preamble`).")] = None,
    chat_format: Annotated[
        ChatFormat | None, typer.Option("--format", help="Prompt format (default: the model's).")
    ] = None,
    example: Annotated[
        list[str] | None, typer.Option("--example", "-e", help="k-shot example 'input=>output' (repeatable).")
    ] = None,
    cot: Annotated[bool, typer.Option("--cot", help="Ask for step-by-step reasoning (chain of thought).")] = False,
    stream: StreamOpt = True,
    usage: UsageOpt = False,
) -> None:
    """Chat with a model; the answer streams to stdout."""
    examples = [parse_example(text) for text in example or []]
    settings = load_settings()
    client = client_for(ctx, settings)
    params = dict(
        sampling,
        model=model or settings.default_chat_model,
        preamble=system,
        chat_format=chat_format.value if chat_format else None,
        examples=examples or None,
        chain_of_thought=True if cot else None,
    )
    messages = [{"role": "user", "content": read_stdin_arg(message)}]
    print_generation(client.chat(messages, stream=stream, **params), usage)


@sampling_options
def complete(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="Text to continue ('-' reads it from stdin).")],
    model: ModelOpt = None,
    *,
    sampling: dict[str, Any],
    stream: StreamOpt = True,
    usage: UsageOpt = False,
) -> None:
    """Continue a raw prompt (no chat template)."""
    settings = load_settings()
    client = client_for(ctx, settings)
    params = dict(sampling, model=model or settings.default_chat_model)
    print_generation(client.complete(read_stdin_arg(prompt), stream=stream, **params), usage)


def embed(
    ctx: typer.Context,
    texts: Annotated[list[str], typer.Argument(help="Texts to embed (one vector each).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model id (default: all-minilm-l6-v2).")] = None,
    truncate: Annotated[
        Truncate | None, typer.Option(help="Too-long input: error (NONE) or cut (default: the server's).")
    ] = None,
    input_type: Annotated[InputType | None, typer.Option(help="What the text is used for.")] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the API's whole response (with usage).")] = False,
) -> None:
    """Embed texts; prints JSON: model, dimensions and one vector per text."""
    settings = load_settings()
    result = client_for(ctx, settings).embed(
        texts,
        model=model or settings.default_embedding_model,
        truncate=truncate.value if truncate else None,
        input_type=input_type.value if input_type else None,
    )
    out = result.raw if raw else {"model": result.model, "dimensions": result.dimensions, "vectors": result.vectors}
    typer.echo(json.dumps(out))


def tokenize(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="Text to tokenize ('-' reads it from stdin).")],
    model: ModelOpt = None,
    raw: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the token ids, token strings and count of a text."""
    settings = load_settings()
    tokens = client_for(ctx, settings).tokenize(model or settings.default_chat_model, read_stdin_arg(text))
    if raw:
        typer.echo(json.dumps({"ids": tokens.ids, "tokens": tokens.strings, "count": tokens.count}))
        return
    typer.echo(f"ids:    {json.dumps(tokens.ids)}")
    typer.echo(f"tokens: {json.dumps(tokens.strings, ensure_ascii=False)}")
    typer.echo(f"count:  {tokens.count}")


def health(ctx: typer.Context) -> None:
    """Ask the server whether it is up (no key needed)."""
    typer.echo(json.dumps(client_for(ctx).health()))


# --- helpers (pure ones are unit-tested) ---------------------------------------------------


def parse_example(text: str) -> dict[str, str]:
    """``"input=>output"`` → ``{"input", "output"}`` (split at the first ``=>``, trimmed).

    Raises:
        typer.BadParameter: no ``=>``, or an empty side.
    """
    source, sep, target = text.partition("=>")
    source, target = source.strip(), target.strip()
    if not sep or not source or not target:
        raise typer.BadParameter(f"expected 'input=>output', got {text!r}", param_hint="--example")
    return {"input": source, "output": target}


def format_usage(usage: Usage | None, finish_reason: str | None) -> str:
    """``usage: P prompt + C completion = T tokens (finish: stop)``."""
    if usage is None:
        return "usage: not reported by the server"
    line = f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} tokens"
    return line + (f" (finish: {finish_reason})" if finish_reason else "")


def print_generation(result: TextStream | Generation, show_usage: bool) -> None:
    """Print generated text (a stream as it arrives), then, with ``show_usage``, its usage to stderr."""
    if isinstance(result, Generation):
        typer.echo(result.text)
    else:
        printed = False
        try:
            for delta in result:
                typer.echo(delta, nl=False)
                printed = True
        finally:
            result.close()
            if printed:
                typer.echo()
    if show_usage:
        typer.echo(format_usage(result.usage, result.finish_reason), err=True)
