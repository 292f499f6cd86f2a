"""GGUF export for llama.cpp: pruned, quantised (types from the spectra) and width-pruned models."""

from .types import TYPES, USER_TYPES, parse_type
from .writer import GGUFSummary, dequantized_state_dict, write_gguf

__all__ = ["GGUFSummary", "TYPES", "USER_TYPES", "dequantized_state_dict", "parse_type", "write_gguf"]
