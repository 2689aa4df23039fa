"""``POST /v1/embeddings``: OpenAI embeddings, as float lists or base64 float32.

Checks the request against the embedding model's catalog entry (``dimensions``) and hands
the texts to the engine, which truncates, embeds and L2-normalises them. The tokens embedded
count against the tenancy's tokens per minute (refused with 429 once the budget is spent)
and in the metrics. Holds no model math.
"""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter

from atelier.api.deps import PrincipalDep, ServicesDep
from atelier.api.openai.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from atelier.errors import InvalidInput

router = APIRouter(tags=["openai"])


def encode_base64(vector: list[float]) -> str:
    """base64 of the vector as little-endian float32, as OpenAI sends with ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings", response_model=EmbeddingList, summary="Create embeddings")
async def create_embeddings(body: EmbeddingRequest, services: ServicesDep, principal: PrincipalDep) -> EmbeddingList:
    """One L2-normalised vector per input text, in input order."""
    spec = services.catalog.get(body.model, kind="embedding")
    if body.dimensions is not None and spec.dimensions and body.dimensions != spec.dimensions:
        raise InvalidInput(
            f"this model's embeddings have {spec.dimensions} dimensions; dimensions={body.dimensions} is not supported",
            param="dimensions",
        )
    services.meter.check(principal)
    result = await services.engine.embed(spec.name, body.texts, truncate=body.truncate, input_type=body.input_type)
    services.meter.charge(principal, spec.name, result.prompt_tokens)
    as_base64 = body.encoding_format == "base64"
    data = [
        Embedding(index=i, embedding=encode_base64(vector) if as_base64 else vector)
        for i, vector in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=spec.name, usage=usage)
