"""``POST /v1/tokenize`` (Atelier extension): a text's token ids, their strings and count.

Counts are exactly what the engine sees (no special tokens added), via ``prompts.tokens``.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from atelier.api.deps import ServicesDep
from atelier.api.openai.protocol import TokenizeRequest, TokenizeResponse
from atelier.prompts.tokens import tokenize

router = APIRouter(tags=["atelier"])


@router.post("/tokenize", response_model=TokenizeResponse, summary="Tokenize a text")
async def tokenize_text(body: TokenizeRequest, services: ServicesDep) -> TokenizeResponse:
    """Token ids of ``text`` for ``model`` (chat or embedding), each decoded alone, and their count."""
    spec = services.catalog.get(body.model or services.settings.default_chat_model)

    def run() -> dict:
        return tokenize(services.engine.tokenizer(spec.name), body.text)

    result = await run_in_threadpool(run)
    return TokenizeResponse(model=spec.name, **result)
