"""vLLM's POST /tokenize and /detokenize: the scheduler's own tokenization (text, or chat messages
through the chat template) and its inverse, for clients that count or build prompts in ids."""

from __future__ import annotations

from fastapi import APIRouter

from litelang.gateway.protocol import DetokenizeRequest, TokenizeRequest
from litelang.gateway.routes.common import BackendDep
from litelang.proto import litelang_pb2 as pb

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, backend: BackendDep):
    await backend.check_model(body.model)
    info = await backend.info()
    reply = await backend.stub.Tokenize(body.litelang(), timeout=30)
    return {"tokens": list(reply.token_ids), "count": len(reply.token_ids),
            "max_model_len": info.max_input_length + info.max_output_length}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, backend: BackendDep):
    await backend.check_model(body.model)
    reply = await backend.stub.Detokenize(pb.DetokenizeRequest(token_ids=body.tokens), timeout=30)
    return {"prompt": reply.text}
