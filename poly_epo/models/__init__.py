"""The policy model: NNX Llama / Qwen2 / Qwen3 decoder and HF checkpoint I/O."""

from poly_epo.models.config import PRESETS, ModelConfig, preset
from poly_epo.models.hf_io import load_hf, save_hf
from poly_epo.models.transformer import KVCache, Transformer, init_cache, init_model

__all__ = ["ModelConfig", "PRESETS", "preset", "Transformer", "KVCache",
           "init_cache", "init_model", "load_hf", "save_hf"]
