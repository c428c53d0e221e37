"""JSON values as litelang.v1.JsonValue and back (written by hand, beside the generated stubs):
the client sends a chat's tools as structure, and the scheduler reads them back as the dicts
a chat template takes, in the order the client wrote them and with integers kept."""

from __future__ import annotations

from typing import Any

from litelang.proto import litelang_pb2 as pb

_INT64 = range(-(2**63), 2**63)


def json_value(value: Any) -> pb.JsonValue:
    """A JSON-like Python value (what json.loads returns; tuples as lists) as a JsonValue, or
    TypeError for anything else."""
    if value is None:
        return pb.JsonValue(null=0)
    if isinstance(value, bool):
        return pb.JsonValue(boolean=value)
    if isinstance(value, int):  # past int64: a JSON number all the same
        return pb.JsonValue(integer=value) if value in _INT64 else pb.JsonValue(number=value)
    if isinstance(value, float):
        return pb.JsonValue(number=value)
    if isinstance(value, str):
        return pb.JsonValue(text=value)
    if isinstance(value, (list, tuple)):
        return pb.JsonValue(list=pb.JsonList(values=[json_value(v) for v in value]))
    if isinstance(value, dict):
        return pb.JsonValue(object=json_object(value))
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def json_object(value: dict) -> pb.JsonObject:
    if not all(isinstance(k, str) for k in value):
        raise TypeError("JSON object keys must be strings")
    return pb.JsonObject(members=[pb.JsonMember(key=k, value=json_value(v)) for k, v in value.items()])


def plain_value(value: pb.JsonValue, where: str) -> Any:
    """The Python value (as json.loads would give it), or ValueError naming `where` in it when a
    value has no kind set."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise ValueError(f"{where} is a JSON value with no kind set")
    if kind == "null":
        return None
    if kind == "list":
        return [plain_value(v, f"{where}[{i}]") for i, v in enumerate(value.list.values)]
    if kind == "object":
        return plain_object(value.object, where)
    return getattr(value, kind)


def plain_object(value: pb.JsonObject, where: str) -> dict:
    """A repeated key takes its last value, as json.loads does."""
    return {m.key: plain_value(m.value, f"{where}.{m.key}") for m in value.members}
