"""Tiny random Hugging Face checkpoints, built by the tests themselves."""

import torch
import transformers


def tiny_hf_config(kind: str):
  common = dict(vocab_size=97, hidden_size=64, intermediate_size=96,
                num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, rms_norm_eps=1e-6)
  if kind == "llama":
    return transformers.LlamaConfig(
        num_key_value_heads=4, tie_word_embeddings=True, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        **common)
  if kind == "llama3-rope":
    return transformers.LlamaConfig(
        num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0,
                         "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16},
        **common)
  if kind == "qwen2":
    return transformers.Qwen2Config(
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        **common)
  if kind == "qwen3":
    return transformers.Qwen3Config(
        num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
  raise ValueError(kind)


def make_hf_model(kind: str, seed: int = 0):
  """A random-initialised PyTorch model; biases and norms made non-trivial."""
  torch.manual_seed(seed)
  cfg = tiny_hf_config(kind)
  model = transformers.AutoModelForCausalLM.from_config(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.float().eval()


def save_hf_model(model, path: str, **kw):
  model.save_pretrained(path, safe_serialization=True, **kw)
  return path
