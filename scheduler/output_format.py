"""A request's structured-output format (StructuredOutput) as plain values, read and checked on
the frontend and compiled against the vocabulary in the engine (engine/structured.py). Checking
parses it with xgrammar, imported only when a request asks for a format."""

from __future__ import annotations

import json
from dataclasses import dataclass

from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.errors import InvalidRequest


@dataclass(frozen=True)
class OutputFormat:
    """A validated format: kind is "json_schema", "regex" or "grammar" (json_object and choice
    arrive as one of those)."""

    kind: str
    spec: str


MAX_FORMAT_CHARS = 64 * 1024  # a schema, regex or grammar longer than this is refused
MAX_CHOICES = 256


def output_format(spec: pb.StructuredOutput) -> OutputFormat:
    """The request's format, checked by parsing it (a bad one raises InvalidRequest now, before
    anything is queued, with the parser's own words)."""
    kind = spec.WhichOneof("format")
    if kind is None:
        raise InvalidRequest("structured_output is empty: set json_schema, json_object, regex, grammar or choice")
    if kind == "json_object":
        if not spec.json_object:
            raise InvalidRequest("structured_output.json_object must be true when set")
        fmt = OutputFormat("json_schema", '{"type": "object"}')
    elif kind == "choice":
        choices = list(spec.choice.choices)
        if not choices or len(choices) > MAX_CHOICES or not all(choices):
            raise InvalidRequest(f"structured_output.choice needs 1 to {MAX_CHOICES} non-empty strings (got {len(choices)})")
        # EBNF string literals take JSON's escapes
        fmt = OutputFormat("grammar", "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices))
    else:
        text = getattr(spec, kind)
        if not text:
            raise InvalidRequest(f"structured_output.{kind} is empty")
        if len(text) > MAX_FORMAT_CHARS:
            raise InvalidRequest(f"structured_output.{kind} has {len(text)} characters; at most {MAX_FORMAT_CHARS}")
        if kind == "json_schema":
            try:
                json.loads(text)
            except ValueError as e:
                raise InvalidRequest(f"structured_output.json_schema is not JSON: {e}") from None
        fmt = OutputFormat(kind, text)
    parse(fmt)
    return fmt


def parse(fmt: OutputFormat):
    """The format as an xgrammar Grammar (no vocabulary needed: cheap, used to validate)."""
    import xgrammar as xgr

    try:
        if fmt.kind == "json_schema":  # one fixed layout, no free whitespace: a model cannot
            # loop on newlines inside a value it was asked to produce (vLLM's disable-any-whitespace)
            return xgr.Grammar.from_json_schema(fmt.spec, any_whitespace=False)
        if fmt.kind == "regex":
            return xgr.Grammar.from_regex(fmt.spec)
        return xgr.Grammar.from_ebnf(fmt.spec)
    except RuntimeError as e:  # xgrammar's parse errors: "[time] file:line: what is wrong"
        reason = str(e).strip().split(": ", 1)[-1]
        raise InvalidRequest(f"structured_output: the {fmt.kind.replace('_', ' ')} does not parse: {reason}") from None
