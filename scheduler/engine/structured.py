"""Structured outputs in the engine: a request's format (scheduler/output_format.py) as an
xgrammar grammar compiled against the served vocabulary, and one matcher per completion that
says which tokens may come next (a bitmask the worker applies to the logits) and takes each token
sampled. RequestFormats gives each request its matcher, compiling off the engine loop.

xgrammar, the library vLLM and SGLang use, does the grammar work. It is imported only when a
request asks for a format, so a server that never sees one never loads it. TokenFilter masks the
same way for allowed_token_ids and bad_words, without xgrammar."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import numpy as np

from litelang.scheduler.engine.request import Request
from litelang.scheduler.errors import InvalidRequest
from litelang.scheduler.output_format import OutputFormat, parse
from litelang.scheduler.tokenizer import Tokenizer

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


class RequestFormats:
    """Each request's token matcher: a TokenFilter (allowed_token_ids, bad_words), a compiled
    format's OutputMatcher, or both (the filter wrapping the format's, masks ANDed). Formats
    compile on a background thread; a request is admitted once its format is ready."""

    def __init__(self, tokenizer: Tokenizer, wake: asyncio.Event):
        self.tokenizer, self._wake = tokenizer, wake
        self.vocab_size = 0  # the model's, once the workers are connected
        self._grammars: GrammarCompiler | None = None  # made on first use

    def prepare(self, req: Request) -> None:
        """At submit: the filter now, the format's compile started (the loop wakes up when done)."""
        s = req.sampling
        if s.allowed_token_ids or s.bad_words:
            req.token_filter = TokenFilter(self.vocab_size, s.allowed_token_ids,
                                           bad_word_token_ids(self.tokenizer.encode, s.bad_words))
        if s.output_format is not None:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer.hf, self.vocab_size, self.tokenizer.eos_token_ids)
            req.grammar = self._grammars.compile(s.output_format)
            loop = asyncio.get_running_loop()
            req.grammar.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wake.set))
        elif req.token_filter is not None:
            req.matcher = req.token_filter

    def ready(self, r: Request) -> bool:
        """Whether r may be admitted as far as its format goes: none, or compiled (its matcher
        made now). InvalidRequest if the format failed to compile."""
        if r.grammar is None or r.matcher is not None:
            return True
        if not r.grammar.done():
            return False
        error = r.grammar.exception()
        if error is not None:
            raise InvalidRequest(f"structured_output does not compile: {error}")
        r.matcher = OutputMatcher(r.grammar.result())
        if r.token_filter is not None:
            r.token_filter.inner, r.matcher = r.matcher, r.token_filter
        return True

    def close(self) -> None:
        if self._grammars is not None:
            self._grammars.close()
