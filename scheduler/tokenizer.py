"""The checkpoint's tokenizer, chat template and stop tokens, as the scheduler needs them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from transformers import AutoTokenizer

from litelang.scheduler.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, byte_level_table
from litelang.scheduler.errors import InvalidRequest

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_token_ids = self._eos_ids(model_dir)
        self.has_chat_template = bool(getattr(self.hf, "chat_template", None))

    @functools.cached_property
    def _byte_table(self):
        """Built on first use (about 0.5 s): the engine process needs it, the frontend only for
        token bytes (logprobs replies, Detokenize)."""
        return byte_level_table(self.hf)

    def detokenizer(self, skip_special_tokens: bool = False):
        """A fresh incremental detokenizer: the table-driven one for byte-level BPE tokenizers."""
        if self._byte_table is not None:
            table, special = self._byte_table
            return ByteLevelDetokenizer(table, special, skip_special_tokens)
        return IncrementalDetokenizer(self, skip_special_tokens)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each id's bytes on its own: the byte table's entry, or (other tokenizers) its text. An
        id past the tokenizer's entries (the model's padded vocabulary) has none: b""."""
        if self._byte_table is not None:
            table = self._byte_table[0]
            return [table[i] if 0 <= i < len(table) else b"" for i in ids]
        return [self.decode([i]).encode("utf-8") for i in ids]

    def _eos_ids(self, model_dir: Path) -> list[int]:
        ids: list[int] = []
        gen = model_dir / "generation_config.json"
        if gen.exists():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if not ids and self.hf.eos_token_id is not None:
            ids = [self.hf.eos_token_id]
        return [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    @functools.cached_property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """The ids of <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|> when the vocabulary has all
        three as added tokens (Qwen2.5 and Qwen2.5-Coder do), else None."""
        added = self.hf.get_added_vocab()
        ids = tuple(added.get(t) for t in FIM_TOKENS)
        return None if None in ids else ids

    def encode_fill_in_middle(self, prefix: str, suffix: str) -> list[int]:
        """The prompt of a fill-in-the-middle request, in the prefix-suffix-middle order the
        Qwen coders were trained on: the model's reply is what goes between prefix and suffix."""
        if self.fim_ids is None:
            raise InvalidRequest(f"this checkpoint's tokenizer has no fill-in-the-middle tokens ({', '.join(FIM_TOKENS)}); "
                                 "send the prompt without a suffix")
        fim_prefix, fim_suffix, fim_middle = self.fim_ids
        return [fim_prefix, *self.encode(prefix), fim_suffix, *self.encode(suffix), fim_middle]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            continue_final_message: bool = False) -> list[int]:
        """continue_final_message: leave the last (assistant) message open to be continued, instead
        of starting a new assistant turn."""
        if not self.has_chat_template:
            raise InvalidRequest("this checkpoint's tokenizer has no chat template; send a raw prompt instead")
        text = self.hf.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=not continue_final_message,
                                           continue_final_message=continue_final_message)
        return self.encode(text)
