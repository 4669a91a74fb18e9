"""`python -m poly_epo.plan --config configs/<exp>.py [--devices N]
[--chip v5e|v5p|v6e|h100|h200] [--json] [--config.field=value ...]`

Will this run fit? Per device, with abstract shapes only (no weights, no
accelerator: the programs are compiled for a forced-device CPU mesh of the
config's shape):

- `params` (f32 master weights), `optimizer` (AdamW state), `gradients`,
  `sampler_params` (the compute-dtype copy the rollout uses) and `kv_cache`
  (one rollout chunk) are exact: shard shapes x dtype sizes;
- `rollout_temp` (prefill + decode loop of one chunk) and `update_temp` (the
  whole jitted update: activations of one micro-batch, gradient accumulators,
  log-prob chunks) come from XLA's `compiled.memory_analysis()`. XLA:CPU
  fuses differently from XLA:GPU/TPU (and has no flash attention), so read
  them as estimates; it is run with its memory-minimising scheduler.

Peak = max(rollout phase, update phase), where rollout = params + optimizer +
sampler_params + kv_cache + rollout_temp and update = params + optimizer +
update_temp; it FITS when the peak is under 90% of the chip's memory. The
planner also reports the largest `rollout.chunk_prompts` and the smallest
`num_microbatches` that fit, scaling the per-row parts linearly.

Model shapes: `base_policy` (policy or Hugging Face folder) when it exists,
else `model.preset` (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, tiny, ...).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

# Usable memory per chip in bytes (what a JAX process can allocate; the
# GPU figures are what these cards report to JAX).
CHIPS = {
    "v5e": 16 * 2**30,
    "v5p": 95 * 2**30,
    "v6e": 32 * 2**30,
    "h100": 79 * 2**30,
    "h200": 139 * 2**30,
}
HEADROOM = 0.9
# XLA:CPU's default scheduler favours running independent ops concurrently
# over reusing buffers (its temp sizes then grow with every layer, remat or
# not); the memory-minimising schedule is what an accelerator compiler does.
MEMORY_SCHEDULER_FLAG = " --xla_cpu_enable_concurrency_optimized_scheduler=false"


def _bytes(struct, sharding) -> int:
  import numpy as np
  shape = sharding.shard_shape(struct.shape) if struct.shape else ()
  return int(np.prod(shape, dtype=np.int64)) * struct.dtype.itemsize


def _tree_bytes(tree, shardings) -> int:
  import jax
  return sum(_bytes(x, s) for x, s in zip(jax.tree.leaves(tree),
                                          jax.tree.leaves(shardings)))


def model_config(cfg):
  """The ModelConfig the run would use (shapes from the base policy or the
  preset, dtypes and memory options from the config)."""
  from poly_epo import checkpointing
  from poly_epo.models import ModelConfig, preset
  path = cfg.base_policy
  if path and checkpointing.is_policy_dir(path):
    with open(os.path.join(path, "model_config.json")) as f:
      mcfg = checkpointing.config_from_dict(json.load(f))
  elif path and os.path.isfile(os.path.join(path, "config.json")):
    mcfg = ModelConfig.from_hf_json(path)
  else:
    mcfg = preset(cfg.model.preset)
  m = cfg.model
  return mcfg.replace(param_dtype=m.param_dtype, dtype=m.dtype,
                      remat=m.remat, attention=m.attention,
                      attention_chunk=m.attention_chunk)


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                        sharding=s),
                      tree, shardings)


def _temp(compiled) -> int:
  ma = compiled.memory_analysis()
  return int(getattr(ma, "temp_size_in_bytes", 0) or 0)


def rollout_memory(mcfg, mesh, rows_prompts: int, cfg) -> dict:
  """KV cache and compiled temporaries of one rollout chunk."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from poly_epo import sampling, sharding
  from poly_epo.models import init_cache
  from poly_epo.models.transformer import Transformer
  n = cfg.num_samples
  p, length = cfg.max_prompt_tokens, cfg.max_new_tokens
  model = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, jnp.dtype(mcfg.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x.dtype), state)
  state = _abstract(state, sharding.tree_shardings(state, mesh))
  batch = lambda shape, dt: jax.ShapeDtypeStruct(
      shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0),
                                                 rows_prompts))
  keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype,
                              sharding=sharding.batch_sharding(mesh, 1))
  pre = sampling._prefill.lower(
      graphdef, state, batch((rows_prompts, p), jnp.int32),
      batch((rows_prompts, p), jnp.bool_), keys, num_samples=n,
      max_new_tokens=length, mesh=mesh).compile()
  out = jax.eval_shape(lambda *a: sampling._prefill(
      graphdef, *a, num_samples=n, max_new_tokens=length, mesh=mesh), state,
      batch((rows_prompts, p), jnp.int32), batch((rows_prompts, p),
                                                 jnp.bool_), keys)
  cache_abs = jax.eval_shape(lambda: init_cache(mcfg, rows_prompts * n,
                                                p + length))
  cache_sh = sharding.cache_shardings(mesh, cache_abs)
  rows = lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim))
  dec = sampling._decode.lower(
      graphdef, state, _abstract(cache_abs, cache_sh), rows(out[1]),
      rows(out[2]), rows(out[3]), max_new_tokens=length,
      temperature=float(cfg.temperature), top_k=int(cfg.top_k),
      top_p=float(cfg.top_p), eos_id=0, pad_id=0).compile()
  return {"kv_cache": _tree_bytes(cache_abs, cache_sh),
          "rollout_temp": max(_temp(pre), _temp(dec))}


def update_memory(mcfg, mesh, cfg, num_microbatches: int) -> dict:
  """Params, optimizer, gradients and the compiled update's temporaries."""
  import jax
  import jax.numpy as jnp
  from poly_epo import checkpointing, sharding, update
  graphdef, params, _ = checkpointing.abstract_model(mcfg)
  tx = update.make_optimizer(cfg.lr, weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip)
  params_sh = sharding.tree_shardings(params, mesh)
  opt = jax.eval_shape(tx.init, params)
  opt_sh = sharding.tree_shardings(opt, mesh)
  s = cfg.prompts_per_step * cfg.num_samples
  t = cfg.max_prompt_tokens + cfg.max_new_tokens
  length = cfg.max_new_tokens
  fn = update.make_update_fn(
      graphdef, tx, mesh, params_sh, opt_sh, prompt_len=cfg.max_prompt_tokens,
      num_minibatches=cfg.num_minibatches, num_microbatches=num_microbatches,
      temperature=cfg.temperature, logprob_chunk=cfg.model.logprob_chunk,
      recompute_old_logprobs=cfg.recompute_old_logprobs == "on" or (
          cfg.recompute_old_logprobs == "auto" and mcfg.dtype != "float32"),
      loss_options=dict(max_len=length))
  b = lambda shape, dt: jax.ShapeDtypeStruct(
      shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
  batch = update.RolloutBatch(b((s, t), jnp.int32), b((s, t), jnp.bool_),
                              b((s, length), jnp.bool_),
                              b((s, length), jnp.float32),
                              b((s,), jnp.float32))
  compiled = fn.lower(_abstract(params, params_sh), _abstract(opt, opt_sh),
                      batch).compile()
  param_bytes = _tree_bytes(params, params_sh)
  itemsize = jnp.dtype(mcfg.dtype).itemsize / jnp.dtype(
      mcfg.param_dtype).itemsize
  return {"params": param_bytes, "optimizer": _tree_bytes(opt, opt_sh),
          "gradients": param_bytes,
          "sampler_params": 0 if mcfg.dtype == mcfg.param_dtype
          else int(param_bytes * itemsize),
          "update_temp": _temp(compiled),
          "num_params": mcfg.num_params}


def _divisors(n: int):
  return [d for d in range(1, n + 1) if n % d == 0]


def plan(cfg, chip: str = "h100") -> dict:
  """The memory plan of `cfg` on the current (forced) devices."""
  import jax
  from poly_epo import sharding
  if chip not in CHIPS:
    raise ValueError(f"--chip={chip!r}: one of {', '.join(CHIPS)}")
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  mcfg = model_config(cfg)
  b = cfg.prompts_per_step
  chunk = cfg.rollout.chunk_prompts or b
  micro = cfg.num_microbatches
  per_dev = update_memory(mcfg, mesh, cfg, micro)
  num_params = per_dev.pop("num_params")
  per_dev.update(rollout_memory(mcfg, mesh, chunk, cfg))
  cap = CHIPS[chip]
  fixed = per_dev["params"] + per_dev["optimizer"]

  def rollout_peak(c):
    scale = c / chunk
    return (fixed + per_dev["sampler_params"] +
            (per_dev["kv_cache"] + per_dev["rollout_temp"]) * scale)

  act = max(per_dev["update_temp"] - per_dev["gradients"], 0)

  def update_peak(m):
    return fixed + per_dev["gradients"] + act * micro / m

  peak_r, peak_u = rollout_peak(chunk), update_peak(micro)
  peak = max(peak_r, peak_u)
  rows_per_shard = sharding.batch_shards(mesh)
  chunks = [c for c in _divisors(b) if (c * cfg.num_samples) %
            rows_per_shard == 0 or c == b]
  fit_chunks = [c for c in chunks if rollout_peak(c) <= HEADROOM * cap]
  per_mini = b * cfg.num_samples // cfg.num_minibatches
  micros = [m for m in _divisors(per_mini)
            if (per_mini // m) % rows_per_shard == 0]
  fit_micros = [m for m in micros if update_peak(m) <= HEADROOM * cap]
  return {
      "model": {k: getattr(mcfg, k) for k in (
          "model_type", "hidden_size", "num_layers", "num_heads",
          "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
          "param_dtype", "dtype", "remat", "attention", "attention_chunk")},
      "num_params": num_params,
      "devices": jax.device_count(),
      "mesh": dict(mesh.shape),
      "chip": chip,
      "device_bytes": cap,
      "rollout_chunk_prompts": chunk,
      "num_microbatches": micro,
      "per_device_bytes": per_dev,
      "rollout_peak_bytes": int(peak_r),
      "update_peak_bytes": int(peak_u),
      "peak_bytes": int(peak),
      "fits": bool(peak <= HEADROOM * cap),
      "max_chunk_prompts": max(fit_chunks) if fit_chunks else None,
      "min_num_microbatches": min(fit_micros) if fit_micros else None,
  }


def format_plan(p: dict) -> str:
  gib = lambda x: f"{x / 2**30:8.2f} GiB"
  lines = [f"model {p['model']['model_type']} {p['num_params'] / 1e9:.3f}B "
           f"params ({p['model']['param_dtype']} master, "
           f"{p['model']['dtype']} compute, remat={p['model']['remat']}), "
           f"mesh {p['mesh']} on {p['devices']} x {p['chip']} "
           f"({p['device_bytes'] / 2**30:.0f} GiB each)",
           "per device:"]
  for k, v in p["per_device_bytes"].items():
    lines.append(f"  {k:<15}{gib(v)}")
  lines += [
      f"  rollout peak   {gib(p['rollout_peak_bytes'])}  (chunk of "
      f"{p['rollout_chunk_prompts']} prompts)",
      f"  update peak    {gib(p['update_peak_bytes'])}  "
      f"({p['num_microbatches']} micro-batches)",
      ("FITS" if p["fits"] else "DOES NOT FIT") +
      f" (peak {p['peak_bytes'] / 2**30:.2f} GiB vs {HEADROOM:.0%} of "
      f"{p['device_bytes'] / 2**30:.0f} GiB)",
      f"largest rollout.chunk_prompts that fits: {p['max_chunk_prompts']}; "
      f"smallest num_microbatches that fits: {p['min_num_microbatches']}"]
  return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
flags.DEFINE_integer("devices", 0, "devices to plan for (default: the "
                     "config's mesh size)")
flags.DEFINE_enum("chip", "h100", list(CHIPS), "accelerator memory to check")
flags.DEFINE_bool("json", False, "print one JSON object")


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config=configs/<exp>.py is required")
  n = flags.FLAGS.devices or max(cfg.mesh.data, 1) * cfg.mesh.fsdp * \
      cfg.mesh.tensor
  if "jax" in sys.modules:
    raise RuntimeError("poly_epo.plan must set the device count before "
                       "jax is imported")
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n}"
                             + MEMORY_SCHEDULER_FLAG)
  try:
    p = plan(cfg, flags.FLAGS.chip)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(p, indent=1) if flags.FLAGS.json else format_plan(p))
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
