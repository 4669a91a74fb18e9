"""A run's configuration as the trainer sees it: `0 = derive` fields filled
for the devices, the run's identity (`config.json`) and the check that a
workdir holds a run of the same config."""

from __future__ import annotations

import jax

from poly_epo import distributed, storage

# Fields that may change between a run and its resumption (or differ between
# the processes of one run).
RESUMABLE_FIELDS = ("steps", "eval_every", "ckpt_every", "keep_checkpoints",
                    "progress", "coordinator_address", "num_processes",
                    "process_id", "distributed", "export_hf", "judge.url",
                    "judge.timeout", "judge.max_concurrency",
                    "compilation_cache_dir", "lock_timeout_s", "workdir")


def flat_config(cfg) -> dict:
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      key = f"{prefix}{k}"
      if hasattr(v, "items"):
        walk(key + ".", v)
      else:
        out[key] = v if isinstance(v, (int, float, str, bool)) or v is None \
            else str(v)
  walk("", cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  return out


def check_workdir(cfg) -> None:
  """Refuse a workdir that belongs to a different config (every process
  reads the shared config.json; nothing is written here)."""
  path = storage.join(cfg.workdir, "config.json")
  if not storage.exists(path):
    return
  mine, theirs = flat_config(cfg), storage.read_json(path)
  diff = sorted(k for k in set(mine) | set(theirs)
                if k not in RESUMABLE_FIELDS and mine.get(k) != theirs.get(k))
  if diff:
    raise ValueError(
        f"workdir {cfg.workdir!r} holds a run of a different config "
        f"(fields differ: {', '.join(diff[:8])}); use another "
        "--config.workdir or delete it")


def resolve_config(cfg):
  """`cfg` with its 0 = derive fields (mesh.fsdp, num_microbatches,
  rollout.chunk_prompts) filled for these devices (`poly_epo.autoscale`);
  config.json records the fields as given, so one file serves any slice."""
  from poly_epo import autoscale
  memory = autoscale.device_memory(jax.devices())
  needs = cfg.num_microbatches == 0 or cfg.rollout.chunk_prompts == 0 or \
      cfg.model.remat == "auto"
  mcfg = autoscale.model_config(cfg) if memory and needs else None
  out = autoscale.resolve(cfg, jax.device_count(), memory, mcfg,
                          jax.process_count())
  derived = autoscale.derived_fields(cfg, out)
  if derived and distributed.is_main():
    print("derived for these devices: " + ", ".join(
        f"{k}={v}" for k, v in derived.items()))
  return out
