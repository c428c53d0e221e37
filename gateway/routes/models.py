"""GET /v1/models and /v1/models/{model}: the one model this server serves (its name, and the
context it allows)."""

from __future__ import annotations

from fastapi import APIRouter

from litelang.gateway.backend import Backend
from litelang.gateway.routes.common import BackendDep

router = APIRouter()


@router.get("/v1/models")
async def models(backend: BackendDep):
    return {"object": "list", "data": [await _model_card(backend)]}


@router.get("/v1/models/{model:path}")
async def model(model: str, backend: BackendDep):
    await backend.check_model(model or "-")
    return await _model_card(backend)


async def _model_card(backend: Backend) -> dict:
    info = await backend.info()
    return {"id": await backend.model_name(), "object": "model", "created": 0, "owned_by": "litelang",
            "root": info.model_path, "max_model_len": info.max_input_length + info.max_output_length}
