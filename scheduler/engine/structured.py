"""Structured outputs: a request's format (StructuredOutput) as an xgrammar grammar, compiled
against the served vocabulary, and one matcher per completion that says which tokens may come
next (a bitmask the worker applies to the logits) and takes each token sampled.

xgrammar, the library vLLM and SGLang use, does the grammar work. It is imported only when a
request asks for a format, so a server that never sees one never loads it. TokenFilter masks the
same way for allowed_token_ids and bad_words, without xgrammar."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import numpy as np

from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.request import OutputFormat
from litelang.scheduler.validation import InvalidRequest

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


def add_token_mask(step: worker_pb2.StepRequest, rid: int, allowed: bytes, seen: dict[bytes, int]) -> None:
    """rid's TokenMask in the step: its bytes the first time a mask occurs in the step, a
    reference to that one (same_as) after. seen: the step's masks so far -> their index."""
    first = seen.setdefault(allowed, len(step.token_masks))
    if first == len(step.token_masks):
        step.token_masks.add(rid=rid, allowed=allowed)
    else:
        step.token_masks.add(rid=rid, same_as=first + 1)


class GrammarCompiler:
    """Compiles formats against the vocabulary on one background thread (a JSON schema takes
    tens of milliseconds: not on the engine loop), each distinct format once."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: list[int]):
        self._hf, self._vocab_size, self._stop_ids = hf_tokenizer, vocab_size, stop_token_ids
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar")
        self._compiled: dict[OutputFormat, concurrent.futures.Future] = {}
        self._compiler = None
        self._lock = threading.Lock()

    def compile(self, fmt: OutputFormat) -> concurrent.futures.Future:
        """A future of the compiled grammar (done at once for a format seen before)."""
        with self._lock:
            future = self._compiled.get(fmt)
            if future is None or (future.done() and future.exception() is not None):
                future = self._compiled[fmt] = self._pool.submit(self._compile, fmt)
            return future

    def _compile(self, fmt: OutputFormat):
        import xgrammar as xgr

        if self._compiler is None:  # the vocabulary's tables: built once, on first use (~0.5 s)
            info = xgr.TokenizerInfo.from_huggingface(self._hf, vocab_size=self._vocab_size,
                                                      stop_token_ids=list(self._stop_ids))
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler.compile_grammar(parse(fmt))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class OutputMatcher:
    """One completion's place in its format: the tokens allowed next, as the worker's bitmask,
    and each sampled token taken in order."""

    def __init__(self, compiled):
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def allowed(self) -> bytes:
        """TokenMask.allowed: bit j of int32 word i allows token 32 * i + j."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        return self._bitmask.numpy().tobytes()

    def accept(self, token: int) -> bool:
        """Take a sampled token; False if the format does not allow it (never, when the mask was applied)."""
        return self._matcher.accept_token(token)

    @property
    def complete(self) -> bool:
        """The output matched the whole format and a stop token ended it."""
        return self._matcher.is_terminated()


class TokenFilter:
    """vLLM's allowed_token_ids and bad_words, as a matcher like OutputMatcher (the engine sends
    its mask each step, so the worker needs nothing new): the allowed tokens, minus each bad
    word's last token wherever the generated tokens end with the ones before it. With a format
    too, its matcher is `inner` and the masks are ANDed."""

    def __init__(self, vocab_size: int, allowed_ids: list[int], bad_words: list[list[int]]):
        words = (vocab_size + 31) // 32
        if allowed_ids:
            ids = np.asarray(allowed_ids, np.int64)
            self._base = np.zeros(words, np.uint32)
            np.bitwise_or.at(self._base, ids >> 5, np.left_shift(1, ids & 31).astype(np.uint32))
        else:
            self._base = np.full(words, 0xFFFFFFFF, np.uint32)
        for seq in bad_words:
            if len(seq) == 1:
                _ban(self._base, seq[0])
        self._after = [seq for seq in bad_words if len(seq) > 1]  # banned only after their prefix
        self._generated: list[int] = []
        self.inner: OutputMatcher | None = None

    def allowed(self) -> bytes:
        mask = self._base.copy()
        if self.inner is not None:
            mask &= np.frombuffer(self.inner.allowed(), np.uint32)
        for seq in self._after:
            n = len(seq) - 1
            if self._generated[-n:] == seq[:-1]:
                _ban(mask, seq[-1])
        return mask.tobytes()

    def accept(self, token: int) -> bool:
        self._generated.append(token)
        return self.inner.accept(token) if self.inner is not None else True

    @property
    def complete(self) -> bool:
        return self.inner.complete if self.inner is not None else False


def _ban(mask: np.ndarray, token: int) -> None:
    """Clear the token's bit in a uint32 mask."""
    mask[token >> 5] &= np.uint32(~(1 << (token & 31)) & 0xFFFFFFFF)


def bad_word_token_ids(encode, words: list[str]) -> list[list[int]]:
    """Each bad word's token ids as written and after a space (how it reads mid-text), as vLLM
    tokenizes them; duplicates once."""
    out: list[list[int]] = []
    for word in words:
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = encode(text)
            if ids and ids not in out:
                out.append(ids)
    return out
