"""``atelier chat|complete|embed|tokenize|health``: the inference commands.

Each builds one request from its flags (unset flags are not sent, so the server's defaults
apply, and the server checks every bound: one source of truth, whose 400 names the
parameter) and prints the answer: generated text streams to stdout, usage goes to stderr.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli.common import client_for, load_settings, read_stdin_arg
from atelier.client import Generation, TextStream, Usage


class ChatFormat(str, Enum):
    template = "template"
    llama2 = "llama2"
    chatml = "chatml"


class Truncate(str, Enum):
    NONE = "NONE"
    START = "START"
    END = "END"


class InputType(str, Enum):
    search_document = "search_document"
    search_query = "search_query"
    classification = "classification"
    clustering = "clustering"


# Options shared by `chat` and `complete`.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model id (default: smollm2-135m-instruct).")]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", "-t", help="0 = greedy; up to 2.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Sample among the k likeliest tokens (0 = all).")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus mass in (0, 1], applied after top-k.")]
FrequencyOpt = Annotated[float | None, typer.Option("--frequency-penalty", help="In [-2, 2], times a token's count.")]
PresenceOpt = Annotated[float | None, typer.Option("--presence-penalty", help="In [-2, 2], once per token present.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence (repeatable).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Same seed and parameters give the same text.")]
StreamOpt = Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they are generated.")]
UsageOpt = Annotated[bool, typer.Option("--usage", help="Print token usage to stderr.")]


def chat(
    ctx: typer.Context,
    message: Annotated[str, typer.Argument(help="The user message ('-' reads it from stdin).")],
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    frequency_penalty: FrequencyOpt = None,
    presence_penalty: PresenceOpt = None,
    stop: StopOpt = None,
    seed: SeedOpt = None,
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
    params = sampling_params(max_tokens, temperature, top_k, top_p, frequency_penalty, presence_penalty, stop, seed)
    params.update(
        model=model or settings.default_chat_model,
        preamble=system,
        chat_format=chat_format.value if chat_format else None,
        examples=examples or None,
        chain_of_thought=True if cot else None,
    )
    messages = [{"role": "user", "content": read_stdin_arg(message)}]
    print_generation(client.chat(messages, stream=stream, **params), usage)


def complete(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="Text to continue ('-' reads it from stdin).")],
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    frequency_penalty: FrequencyOpt = None,
    presence_penalty: PresenceOpt = None,
    stop: StopOpt = None,
    seed: SeedOpt = None,
    stream: StreamOpt = True,
    usage: UsageOpt = False,
) -> None:
    """Continue a raw prompt (no chat template)."""
    settings = load_settings()
    client = client_for(ctx, settings)
    params = sampling_params(max_tokens, temperature, top_k, top_p, frequency_penalty, presence_penalty, stop, seed)
    params["model"] = model or settings.default_chat_model
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


def sampling_params(
    max_tokens: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    frequency_penalty: float | None,
    presence_penalty: float | None,
    stop: list[str] | None,
    seed: int | None,
) -> dict[str, Any]:
    """Request fields of the sampling flags; unset flags are left to the server's defaults."""
    params = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
        "stop": list(stop) if stop else None,
        "seed": seed,
    }
    return {k: v for k, v in params.items() if v is not None}


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
