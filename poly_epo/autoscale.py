"""`0 = derive`: the config fields that scale with the slice.

`mesh.fsdp`, `num_microbatches` and `rollout.chunk_prompts` may be 0 in a
config; `resolve` fills them from the device count and the per-device memory,
so one config file runs on 8 or 64 chips:

- `mesh.fsdp = 0`: every device not used by `mesh.data` (when set) and
  `mesh.tensor` shards parameters and batch (ZeRO-3 over the whole slice).
- `num_microbatches = 0`: on an accelerator (memory known), one sequence
  per batch shard per micro-batch: the TPU compiler's figures for the 4B
  recipe show its update temporaries do not shrink in proportion to the
  micro-batch, so no simple formula picks fewer safely (`plan` shows the
  room to use fewer). When the memory is unknown (CPU), the fewest
  micro-batches of at most `CPU_MICRO_TOKENS` padded tokens per device,
  whole prompts each: a CPU update runs from caches, and SmolLM2-135M's
  update of 64 sequences x 192 tokens took 36.5 s in one piece and 26.7 s
  in 4 (`bench train --policy ... --seqs 64 --micro 1|4`).
- `model.remat = "auto"`: "none" when the update's activations without
  rematerialisation (`activation_bytes`, an upper bound) fit beside the
  parameters, optimizer state and gradients, else "full"; "none" when the
  memory is unknown (CPU hosts: on SmolLM2-135M, 16 x 192 tokens, the
  update took 8.2 s without remat and 9.8 s with it).
- `rollout.chunk_prompts = 0`: the most prompts per rollout chunk whose KV
  cache (exact) and decode temporaries fit; unchanged (the whole batch) when
  the memory is unknown.

The estimates are deliberately conservative; `python -m poly_epo.plan`
compiles the real programs and reports what the compiler needs.
"""

from __future__ import annotations

import copy
import os

import numpy as np

HEADROOM = 0.9
CPU_MICRO_TOKENS = 4096
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def device_memory(devices) -> int | None:
  """Bytes one device can allocate, or None when unknown (CPU)."""
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - abstract or CPU devices.
    return None
  return stats.get("bytes_limit")


def host_memory() -> int | None:
  """Bytes this host can still allocate (MemAvailable), None if unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def rollout_row_bytes(mcfg, prompt_len: int, new_tokens: int) -> dict:
  """Bytes one sampled row costs (an upper estimate): "decode" while its
  rollout runs (KV cache of prompt + response, the step's logits and
  sampling temporaries, its hidden states) and "kept" afterwards on the
  host (tokens, mask, log-probs, the decoded text and scoring)."""
  width = prompt_len + new_tokens
  kv = width * mcfg.num_layers * 2 * mcfg.num_kv_heads * mcfg.head_dim * \
      ITEMSIZE[mcfg.dtype]
  temporaries = mcfg.vocab_size * 4 * 4 + mcfg.hidden_size * 4 * 16
  kept = new_tokens * (4 + 1 + 4 + 8 + 16) + 512  # Arrays, text, labels.
  return {"decode": 2 * (kv + temporaries), "kept": kept}


def evaluation_rollouts(mcfg, prompts: int, samples: int, prompt_len: int,
                        new_tokens: int, memory: int | None,
                        samples_field: str) -> int | None:
  """Prompts per rollout chunk for an evaluation of `prompts` x `samples`
  rows within `memory` bytes (devices together, or the host's; half of it
  is used): every row's kept outputs plus one chunk's decoding must fit.
  None when the memory is unknown; ValueError naming `samples_field` and
  the most samples per prompt that fit when even one prompt cannot."""
  if not memory:
    return None
  row = rollout_row_bytes(mcfg, prompt_len, new_tokens)
  budget = memory * 0.5
  free = budget - prompts * samples * row["kept"]
  per_prompt = samples * row["decode"]
  if free < per_prompt:
    most = int(budget // (prompts * row["kept"] + row["decode"]))
    raise ValueError(
        f"{samples_field}={samples}: {prompts} prompts x {samples} samples "
        f"need ~{(prompts * samples * row['kept'] + per_prompt) / 2**30:.1f}"
        f" GiB, more than the {budget / 2**30:.1f} GiB this evaluation may "
        f"use; at most {max(most, 0)} samples per prompt fit (or evaluate "
        "fewer prompts)")
  return max(1, min(prompts, int(free // per_prompt)))


def divisors(n: int):
  return [d for d in range(1, n + 1) if n % d == 0]


def mesh_fsdp(cfg, n_devices: int) -> int:
  if cfg.mesh.fsdp:
    return cfg.mesh.fsdp
  return max(n_devices // (cfg.mesh.tensor * max(cfg.mesh.data, 1)), 1)


def param_bytes_per_device(mcfg, shards: int) -> dict:
  """Master params, AdamW state, gradients and the compute-dtype sampler
  copy, per device, with parameters sharded `shards` ways."""
  n = mcfg.num_params
  master = ITEMSIZE[mcfg.param_dtype] * n / shards
  compute = 0 if mcfg.dtype == mcfg.param_dtype else \
      ITEMSIZE[mcfg.dtype] * n / shards
  return {"params": master, "optimizer": 2 * master, "gradients": master,
          "sampler_params": compute}


def kv_bytes_per_prompt(mcfg, cfg) -> float:
  """KV cache of one prompt group (N rows x (P + L) positions), all
  devices together."""
  width = cfg.max_prompt_tokens + cfg.max_new_tokens
  return (cfg.num_samples * width * mcfg.num_layers * 2 * mcfg.num_kv_heads
          * mcfg.head_dim * ITEMSIZE[mcfg.dtype])


def model_config(cfg):
  """The ModelConfig the run would use (shapes from the base policy or the
  preset, dtypes and memory options from the config)."""
  from poly_epo import checkpointing, storage
  from poly_epo.models import ModelConfig, preset
  from poly_epo.convert import policy_path
  path = policy_path(cfg.base_policy)
  if path and checkpointing.is_policy_dir(path):
    mcfg = checkpointing.config_from_dict(storage.read_json(
        storage.join(path, "model_config.json"),
        f"the policy folder {path} is damaged: save or export it again"))
  elif path and storage.isfile(storage.join(path, "config.json")):
    mcfg = ModelConfig.from_hf_json(storage.local_copy(path))
  else:
    mcfg = preset(cfg.model.preset)
  m = cfg.model
  return mcfg.replace(param_dtype=m.param_dtype, dtype=m.dtype,
                      remat="full" if m.remat == "auto" else m.remat,
                      attention=m.attention,
                      attention_chunk=m.attention_chunk)


def activation_bytes(mcfg, cfg, seqs: int) -> float:
  """What the backward pass keeps of `seqs` sequences of P + L tokens
  without rematerialisation (an upper bound: every layer's matmul inputs
  and outputs, norms and SwiGLU terms, and the float32 attention
  probabilities)."""
  t = cfg.max_prompt_tokens + cfg.max_new_tokens
  per_token = mcfg.num_layers * (
      ITEMSIZE[mcfg.dtype] * (12 * mcfg.hidden_size
                              + 4 * mcfg.intermediate_size)
      + 4 * mcfg.num_heads * t)
  return seqs * t * per_token


def resolve(cfg, n_devices: int, device_bytes: int | None, mcfg=None,
            processes: int = 1):
  """A copy of `cfg` with every 0-means-derive field filled (see module
  docstring); `cfg` itself is unchanged. `mcfg`: the model's ModelConfig
  (only needed when memory is known)."""
  cfg = copy.deepcopy(cfg)
  fsdp = mesh_fsdp(cfg, n_devices)
  cfg.mesh.fsdp = fsdp
  data = max(n_devices // (fsdp * cfg.mesh.tensor), 1) if not cfg.mesh.data \
      else cfg.mesh.data
  shards = data * fsdp
  seqs = cfg.prompts_per_step * cfg.num_samples
  per_mini = seqs // max(cfg.num_minibatches, 1)
  known = device_bytes is not None and mcfg is not None
  budget = HEADROOM * device_bytes if known else None
  if known:
    parts = param_bytes_per_device(mcfg, fsdp * cfg.mesh.tensor)
    fixed = parts["params"] + parts["optimizer"]
  if cfg.num_microbatches == 0:
    ok = [m for m in divisors(per_mini) if (per_mini // m) % shards == 0]
    if cfg.get("shared_prefix", "auto") != "off" and not cfg.packing:
      # The shared-prefix update splits whole prompts (update.layout).
      prompts = cfg.prompts_per_step // max(cfg.num_minibatches, 1)
      whole = [m for m in ok if prompts % m == 0 and
               (prompts // m) % shards == 0]
      ok = whole or ok
    # Memory known (an accelerator): one sequence per batch shard per
    # micro-batch, the setting the TPU compiler shows the 4B recipe needs
    # (its update temporaries do not shrink in proportion to the
    # micro-batch; `python -m poly_epo.plan` reports them). Unknown (CPU):
    # the whole minibatch at once.
    if known:
      cfg.num_microbatches = max(ok) if ok else 1
    else:
      prompts = cfg.prompts_per_step // max(cfg.num_minibatches, 1)
      t = cfg.max_prompt_tokens + cfg.max_new_tokens
      whole = [m for m in ok if prompts % m == 0]
      small = [m for m in whole
               if per_mini // m * t <= CPU_MICRO_TOKENS * shards]
      cfg.num_microbatches = min(small) if small else max(whole or [1])
  if cfg.model.remat == "auto":
    micro_seqs = per_mini // max(cfg.num_microbatches, 1) / shards
    cfg.model.remat = "none" if not known or (
        fixed + parts["gradients"] + parts["sampler_params"]
        + activation_bytes(mcfg, cfg, micro_seqs) <= budget) else "full"
  if cfg.rollout.chunk_prompts == 0 and known:
    b = cfg.prompts_per_step
    ok = [c for c in divisors(b) if (c * cfg.num_samples) % shards == 0
          and c % processes == 0]
    kv = kv_bytes_per_prompt(mcfg, cfg) / shards
    # Decode temporaries: logits and sampling of the chunk's rows.
    tmp = cfg.num_samples * mcfg.vocab_size * 4 * 4 / shards
    fits = [c for c in ok if fixed + parts["sampler_params"] +
            c * (kv + tmp) <= budget]
    cfg.rollout.chunk_prompts = int(max(fits) if fits else min(ok or [b]))
  return cfg


def derived_fields(given, resolved) -> dict:
  """{field: value} of what `resolve` filled in."""
  out = {}
  for field, get in (("model.remat", lambda c: c.model.remat),
                     ("mesh.fsdp", lambda c: c.mesh.fsdp),
                     ("num_microbatches", lambda c: c.num_microbatches),
                     ("rollout.chunk_prompts",
                      lambda c: c.rollout.chunk_prompts)):
    if get(given) in (0, "auto") and get(resolved) != get(given):
      value = get(resolved)
      out[field] = value if isinstance(value, str) else int(np.asarray(value))
  return out
