"""poly_epo.autoscale: 0 = derive, checked against independent counts (the
KV cache's bytes from `init_cache`'s shapes, brute force over divisors)."""

import jax
import numpy as np

from poly_epo import autoscale
from poly_epo.models import init_cache, preset


def _recipe():
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "recipe", os.path.join(root, "configs", "qwen3_4b_polaris.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _mcfg(cfg):
  m = cfg.model
  return preset("qwen3-4b").replace(param_dtype=m.param_dtype, dtype=m.dtype,
                                    remat=m.remat)


def test_unknown_memory_keeps_cpu_defaults():
  cfg = _recipe()
  out = autoscale.resolve(cfg, 8, None)
  # 512 sequences per minibatch of 5,120 tokens: no micro-batch of whole
  # sequences per device stays under CPU_MICRO_TOKENS, so one sequence per
  # device per micro-batch (64 prompts / 64).
  assert out.mesh.fsdp == 8 and out.num_microbatches == 64
  assert out.rollout.chunk_prompts == 0  # The whole batch, as before.
  assert cfg.mesh.fsdp == 0  # The given config is untouched.
  assert autoscale.derived_fields(cfg, out) == {"mesh.fsdp": 8,
                                                "num_microbatches": 64}


def test_cpu_micro_batches_are_the_fewest_under_the_token_budget():
  from poly_epo.config_defaults import smollm2_config
  cfg = smollm2_config()
  cfg.num_microbatches = 0
  for prompts in (1, 2, 4, 8, 16):
    cfg.prompts_per_step = prompts
    out = autoscale.resolve(cfg, 1, None)
    tokens = prompts * 8 * (128 + 64)  # Brute force over every count.
    want = min(m for m in range(1, prompts + 1) if prompts % m == 0 and
               tokens / m <= autoscale.CPU_MICRO_TOKENS or m == prompts)
    assert out.num_microbatches == want, prompts


def test_kv_bytes_match_the_cache_the_sampler_allocates():
  cfg = _recipe()
  mcfg = _mcfg(cfg)
  rows = cfg.num_samples
  cache = jax.eval_shape(lambda: init_cache(
      mcfg, rows, cfg.max_prompt_tokens + cfg.max_new_tokens))
  kv = sum(int(np.prod(x.shape)) * x.dtype.itemsize  # Keys and values.
           for x in jax.tree.leaves(cache) if x.ndim == 4)
  assert autoscale.kv_bytes_per_prompt(mcfg, cfg) == kv


def test_the_same_recipe_scales_from_8_to_64_chips():
  cfg = _recipe()
  mcfg = _mcfg(cfg)
  mem = 95 * 2**30
  for n in (8, 64):
    out = autoscale.resolve(cfg, n, mem, mcfg)
    assert out.mesh.fsdp == n
    per_mini = cfg.prompts_per_step * cfg.num_samples // cfg.num_minibatches
    m = out.num_microbatches
    assert per_mini % m == 0 and (per_mini // m) % n == 0
    c = out.rollout.chunk_prompts
    assert cfg.prompts_per_step % c == 0
    # Brute force: no larger chunk fits the same budget.
    fixed = 3 * 4 * mcfg.num_params / n + 2 * mcfg.num_params / n
    kv = autoscale.kv_bytes_per_prompt(mcfg, cfg) / n
    tmp = cfg.num_samples * mcfg.vocab_size * 16 / n
    fits = [d for d in range(1, cfg.prompts_per_step + 1)
            if cfg.prompts_per_step % d == 0 and (d * 8) % n == 0 and
            fixed + d * (kv + tmp) <= 0.9 * mem]
    assert c == max(fits), (n, c, fits)
  # Less memory: more micro-batches, smaller chunks.
  small = autoscale.resolve(cfg, 8, 40 * 2**30, mcfg)
  big = autoscale.resolve(cfg, 8, mem, mcfg)
  assert small.num_microbatches >= big.num_microbatches
  assert small.rollout.chunk_prompts <= big.rollout.chunk_prompts


def test_remat_auto_is_off_where_the_activations_fit():
  cfg = _recipe()
  cfg.model.remat = "auto"
  mcfg = autoscale.model_config(cfg)
  assert mcfg.remat == "full"  # Shapes only; resolve decides.
  assert autoscale.resolve(cfg, 8, None).model.remat == "none"  # CPU.
  # Brute force: the activations of one micro-batch (the recipe: one
  # sequence per device) counted layer by layer from the shapes.
  t = cfg.max_prompt_tokens + cfg.max_new_tokens
  layer = t * (2 * (12 * mcfg.hidden_size + 4 * mcfg.intermediate_size)
               + 4 * mcfg.num_heads * t)
  acts = mcfg.num_layers * layer
  parts = autoscale.param_bytes_per_device(mcfg, 8)
  fixed = sum(parts.values())
  need = (fixed + acts) / autoscale.HEADROOM
  roomy = autoscale.resolve(cfg, 8, int(need * 1.01), mcfg)
  tight = autoscale.resolve(cfg, 8, int(need * 0.99), mcfg)
  assert roomy.model.remat == "none" and tight.model.remat == "full"
  assert autoscale.derived_fields(cfg, tight)["model.remat"] == "full"
