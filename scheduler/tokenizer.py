"""The checkpoint's tokenizer, chat template and stop tokens, as the scheduler needs them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from transformers import AutoTokenizer

from litelang.scheduler.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, byte_level_table
from litelang.scheduler.validation import InvalidRequest


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_token_ids = self._eos_ids(model_dir)
        self.has_chat_template = bool(getattr(self.hf, "chat_template", None))

    @functools.cached_property
    def _byte_table(self):
        """Built on first use (about 0.5 s): the engine process needs it, the frontend does not."""
        return byte_level_table(self.hf)

    def detokenizer(self, skip_special_tokens: bool = False):
        """A fresh incremental detokenizer: the table-driven one for byte-level BPE tokenizers."""
        if self._byte_table is not None:
            table, special = self._byte_table
            return ByteLevelDetokenizer(table, special, skip_special_tokens)
        return IncrementalDetokenizer(self, skip_special_tokens)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each id's bytes on its own: the byte table's entry, or (other tokenizers) its text."""
        if self._byte_table is not None:
            table = self._byte_table[0]
            return [table[i] for i in ids]
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
