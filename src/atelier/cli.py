"""The ``atelier`` command line: ``serve`` starts the service; every other command is a
client of its HTTP API (through ``atelier.client``), so keys, policies and audit apply.

Configuration: ``ATELIER_URL`` (or ``--url``) and ``ATELIER_API_KEY``; without a key, the
administrator key in ``<data_dir>/admin.key`` is used when it exists. API errors print
``error: <message> (param: <field>)`` to stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from atelier import __version__
from atelier.cli_admin import admin_app
from atelier.cli_limits import limits_app
from atelier.cli_audit import audit_app, keys_app
from atelier.cli_console import console
from atelier.cli_clusters import cluster_app, endpoint_app
from atelier.cli_costs import cost_app
from atelier.cli_files import files_app
from atelier.cli_kb import kb_app
from atelier.cli_finetune import export_model, finetune, jobs_app
from atelier.client import ApiError, AtelierClient, Generation, ServerUnreachable, TextStream, Usage
from atelier.settings import Settings

app = typer.Typer(
    name="atelier",
    help="Atelier: a self-hosted generative-AI service (chat, embeddings, RAG, fine-tuning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would print the API key
)
app.add_typer(audit_app)
app.add_typer(keys_app)
app.add_typer(admin_app)
app.add_typer(files_app)  # atelier files upload|list|show|delete|download
app.add_typer(kb_app)  # atelier kb create|add|list|query|ask|delete
app.command("console")(console)  # atelier console [--host --port]: the research assistant (Streamlit)
app.command("finetune")(finetune)  # atelier finetune --model --data --method [--wait]
app.add_typer(jobs_app)  # atelier jobs list|show|events|cancel
models_app = typer.Typer(name="models", help="Models: list them; export a custom model's adapter.",
                         invoke_without_command=True)
app.add_typer(models_app)
models_app.command("export")(export_model)  # atelier models export ID DIR
admin_app.add_typer(limits_app, name="limits")  # atelier admin limits get|set
app.add_typer(cluster_app)  # atelier cluster create|list|get|update|delete
app.add_typer(endpoint_app)  # atelier endpoint create|list|get|update|delete
app.add_typer(cost_app)  # atelier cost estimate|metered


@dataclass
class State:
    """What the top-level options hand to the commands."""

    url: str | None = None
    transport: httpx.BaseTransport | None = None  # tests pass an httpx.MockTransport


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


# Options shared by `chat` and `complete`. Bounds are checked by the server (one source of
# truth), whose 400 names the parameter.
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


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Server URL (default: ATELIER_URL or http://127.0.0.1:8000).")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Atelier: chat, embeddings, RAG and fine-tuning on your own machine."""
    if version:
        typer.echo(f"atelier {__version__}")
        raise typer.Exit()
    state = ctx.ensure_object(State)
    if url:
        state.url = url


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to bind (default: 8000).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Database, objects and keys (default: ~/.atelier).")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="PEM certificate: serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="PEM private key of --tls-cert.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, max=64, help="Job worker processes to run beside the API (0: none).")
    ] = 1,
) -> None:
    """Start the HTTP service (OpenAI-compatible API under /v1) on embedded defaults, with job workers."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert/--tls-key")
    overrides = {"host": host, "port": port, "data_dir": data_dir}
    settings = _settings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        from atelier.api.server import run  # imported here: the client commands need no server stack
    except ModuleNotFoundError as exc:
        typer.echo(f"error: cannot start the server: module {exc.name!r} is missing (reinstall atelier)", err=True)
        raise typer.Exit(1) from None
    try:
        run(settings, tls_cert=tls_cert, tls_key=tls_key, workers=workers)
    except ValueError as exc:  # the TLS files, checked before anything starts
        raise typer.BadParameter(str(exc), param_hint="--tls-cert/--tls-key") from None


@app.command()
def worker(
    data_dir: Annotated[Path | None, typer.Option(help="Data dir of the service (default: ~/.atelier).")] = None,
    worker_id: Annotated[str | None, typer.Option(help="Lease owner name (default: host-pid-random).")] = None,
    lease_seconds: Annotated[
        float, typer.Option(min=0.5, max=3600, help="A job whose worker is silent this long is resumed elsewhere.")
    ] = 30.0,
    poll_seconds: Annotated[
        float, typer.Option(min=0.05, max=60, help="Queue polling and cancel-check interval.")
    ] = 1.0,
    parent_pid: Annotated[int | None, typer.Option(hidden=True, help="Stop when this process is gone.")] = None,
) -> None:
    """Run queued jobs (fine-tuning...) until SIGTERM or Ctrl+C; `serve` starts one by default."""
    settings = _settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    from atelier.jobs.worker import run_worker_process  # imported here: the client commands need no database

    raise typer.Exit(run_worker_process(settings, worker_id=worker_id, lease_seconds=lease_seconds,
                                        poll_seconds=poll_seconds, parent_pid=parent_pid))


@app.command()
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
    client, settings = _client(ctx)
    params = sampling_params(max_tokens, temperature, top_k, top_p, frequency_penalty, presence_penalty, stop, seed)
    params.update(
        model=model or settings.default_chat_model,
        preamble=system,
        chat_format=chat_format.value if chat_format else None,
        examples=examples or None,
        chain_of_thought=True if cot else None,
    )
    messages = [{"role": "user", "content": _read_arg(message)}]
    with _api_errors():
        _print_generation(client.chat(messages, stream=stream, **params), usage)


@app.command()
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
    client, settings = _client(ctx)
    params = sampling_params(max_tokens, temperature, top_k, top_p, frequency_penalty, presence_penalty, stop, seed)
    params["model"] = model or settings.default_chat_model
    with _api_errors():
        _print_generation(client.complete(_read_arg(prompt), stream=stream, **params), usage)


@app.command()
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
    client, settings = _client(ctx)
    with _api_errors():
        result = client.embed(
            texts,
            model=model or settings.default_embedding_model,
            truncate=truncate.value if truncate else None,
            input_type=input_type.value if input_type else None,
        )
    out = result.raw if raw else {"model": result.model, "dimensions": result.dimensions, "vectors": result.vectors}
    typer.echo(json.dumps(out))


@app.command()
def tokenize(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="Text to tokenize ('-' reads it from stdin).")],
    model: ModelOpt = None,
    raw: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the token ids, token strings and count of a text."""
    client, settings = _client(ctx)
    with _api_errors():
        tokens = client.tokenize(model or settings.default_chat_model, _read_arg(text))
    if raw:
        typer.echo(json.dumps({"ids": tokens.ids, "tokens": tokens.strings, "count": tokens.count}))
        return
    typer.echo(f"ids:    {json.dumps(tokens.ids)}")
    typer.echo(f"tokens: {json.dumps(tokens.strings, ensure_ascii=False)}")
    typer.echo(f"count:  {tokens.count}")


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """List the models the server offers, with their limits (and your custom models)."""
    if ctx.invoked_subcommand is not None:
        return
    client, _ = _client(ctx)
    with _api_errors():
        listed = client.models()
    typer.echo(format_models_table(listed))


@app.command()
def health(ctx: typer.Context) -> None:
    """Ask the server whether it is up (no key needed)."""
    client, _ = _client(ctx)
    with _api_errors():
        typer.echo(json.dumps(client.health()))


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


def render_error(exc: ApiError) -> str:
    """``error: <message> (param: x)``, plus a hint for a missing key or a busy server."""
    line = f"error: {exc.message}"
    if exc.param:
        line += f" (param: {exc.param})"
    if exc.retry_after is not None:
        line += f" (retry after {exc.retry_after:g}s)"
    if exc.status == 401:
        line += "\nhint: set ATELIER_API_KEY (the administrator key is in <data_dir>/admin.key on the server)"
    return line


def format_usage(usage: Usage | None, finish_reason: str | None) -> str:
    if usage is None:
        return "usage: not reported by the server"
    line = f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} tokens"
    return line + (f" (finish: {finish_reason})" if finish_reason else "")


def format_models_table(listed: list[dict[str, Any]]) -> str:
    """A plain aligned table: id, capabilities, context, max output, dims ("-" when not applicable)."""

    def cell(value: Any) -> str:
        if isinstance(value, list):
            return ",".join(map(str, value)) or "-"
        return "-" if value in (None, 0, "") else str(value)

    header = ["ID", "CAPABILITIES", "CONTEXT", "MAX OUTPUT", "DIMS"]
    fields = ["id", "capabilities", "context_length", "max_output_tokens", "dimensions"]
    rows = [[cell(m.get(f)) for f in fields] for m in listed]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(1) from None


def _client(ctx: typer.Context) -> tuple[AtelierClient, Settings]:
    state = ctx.ensure_object(State)
    settings = _settings()
    return AtelierClient.from_env(settings, url=state.url, transport=state.transport), settings


def _read_arg(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _print_generation(result: TextStream | Generation, show_usage: bool) -> None:
    if isinstance(result, Generation):
        typer.echo(result.text)
        usage, finish = result.usage, result.finish_reason
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
        usage, finish = result.usage, result.finish_reason
    if show_usage:
        typer.echo(format_usage(usage, finish), err=True)


@contextmanager
def _api_errors() -> Iterator[None]:
    """API errors and an unreachable server become one line on stderr and exit status 1."""
    try:
        yield
    except ApiError as exc:
        typer.echo(render_error(exc), err=True)
        raise typer.Exit(1) from None
    except ServerUnreachable as exc:
        typer.echo(
            f"error: {exc}\nhint: start it with `atelier serve`, or set ATELIER_URL (or --url) to where it runs",
            err=True,
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
