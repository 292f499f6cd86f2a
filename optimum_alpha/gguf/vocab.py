"""The tokenizer as GGUF metadata (``tokenizer.ggml.*``), read by llama.cpp and by transformers' GGUF reader.

The tokenizer is saved to a scratch folder and read back with the ``gguf`` package's own vocabulary readers
(``BpeVocab`` for byte-level BPE, ``LlamaHfVocab`` for SentencePiece-style BPE with byte fallback, and
``SpecialVocab`` for merges, special ids, ``add_bos``/``add_eos`` and the chat template), the same readers
llama.cpp's converters build on. What they leave open:

* ``tokenizer.ggml.pre``, the pre-tokenizer llama.cpp splits text with, is named from the tokenizer's own
  pre-tokenizer: plain byte-level -> ``gpt-2``, single digits then byte-level -> ``smollm``, a split regex
  that transformers' GGUF reader knows -> its name (``llama3``, ``qwen2``...), anything else -> ``default``
  with a warning;
* added tokens marked special are CONTROL tokens, other added tokens USER_DEFINED;
* a vocabulary shorter than the embedding is padded with ``[PAD<i>]`` UNUSED tokens; a longer one is refused.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType
from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

from ..errors import CheckpointError

logger = logging.getLogger(__name__)


@dataclass
class VocabMetadata:
    """Everything ``tokenizer.*`` of the file holds."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    pre: str | None
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None
    special: SpecialVocab
    defaults: dict[str, int] = field(default_factory=dict)  # special ids from the model config

    def add_to(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        self.special.add_to_gguf(writer, quiet=True)
        for kind, token_id in self.defaults.items():
            if kind not in self.special.special_token_ids:
                getattr(writer, f"add_{kind}_token_id")(token_id)


def _known_splits() -> dict[str, str]:
    """Split regex -> pre-tokenizer name, from transformers' GGUF reader (first name of each regex)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # an older transformers without this table
        return {}
    known: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        known.setdefault(regex, name)
    return known


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer a ``tokenizer.json`` describes (see the module docstring)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        name = _known_splits().get((parts[0].get("pattern") or {}).get("Regex"))
        if name is not None:
            return name
    logger.warning("the tokenizer's pre-tokenizer %s has no llama.cpp name here; the file says 'default', so "
                   "llama.cpp may split some text differently from transformers.", kinds)
    return "default"


def _token_types(tokenizer_json: dict[str, Any], count: int, base: list[int]) -> list[int]:
    types = list(base)
    for added in tokenizer_json.get("added_tokens", []):
        index = added.get("id")
        if isinstance(index, int) and 0 <= index < count:
            types[index] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    return types


def vocab_metadata(tokenizer: Any, vocab_size: int, config: Any = None) -> VocabMetadata:
    """Read ``tokenizer`` (a transformers tokenizer) into GGUF metadata for a model of ``vocab_size`` tokens."""
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        raise CheckpointError(
            "GGUF export needs the model's tokenizer (llama.cpp reads it from the file); pass tokenizer= or "
            "export a folder that holds tokenizer.json."
        )
    with tempfile.TemporaryDirectory(prefix="optimum-alpha-vocab-") as scratch:
        folder = Path(scratch)
        tokenizer.save_pretrained(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError("GGUF export needs a fast tokenizer (tokenizer.json); this one saved none.")
        tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
        model = tokenizer_json.get("model", {})
        if model.get("type") != "BPE":
            raise CheckpointError(
                f"GGUF export writes BPE tokenizers (byte-level or SentencePiece-style); this one is "
                f"{model.get('type')!r}."
            )
        if model.get("byte_fallback"):
            reader: Any = LlamaHfVocab(folder)
            kind, pre = "llama", None
        else:
            try:
                reader = BpeVocab(folder)
            except (FileNotFoundError, ValueError, TypeError, KeyError) as error:
                decoder = (tokenizer_json.get("decoder") or {}).get("type")
                raise CheckpointError(
                    f"the tokenizer is not a GPT-2 style byte-level BPE (decoder {decoder!r}, {error}); GGUF "
                    "export writes byte-level BPE or SentencePiece-style BPE with byte fallback."
                ) from error
            kind, pre = "gpt2", pre_tokenizer_name(tokenizer_json)
        entries = list(reader.all_tokens())
        special = SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
    if len(entries) > vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(entries)} tokens but the model's embedding only {vocab_size} rows; "
            "export the tokenizer the model was trained with."
        )
    tokens = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t, _, _ in entries]
    scores = [float(s) for _, s, _ in entries]
    types = _token_types(tokenizer_json, len(entries), [int(t) for _, _, t in entries])
    for index in range(len(entries), vocab_size):  # llama.cpp's converters pad the same way
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    defaults = {}
    for kind_name in ("bos", "eos", "pad"):
        value = getattr(config, f"{kind_name}_token_id", None)
        if isinstance(value, int) and 0 <= value < vocab_size:
            defaults[kind_name] = value
    return VocabMetadata(kind, pre, tokens, types, scores if kind == "llama" else None, special, defaults)
