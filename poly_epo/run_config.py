"""A run's configuration as the trainer sees it: `0 = derive` fields filled
for the devices, the run's identity (`config.json`) and the check that a
workdir holds a run of the same config."""

from __future__ import annotations

import os

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


def _resolved(key: str, value):
  """A path-valued field as an absolute path (a relative path names the
  same thing from any folder only once resolved)."""
  if not isinstance(value, str) or not value or storage.is_url(value) or \
      value.startswith("pkg:"):
    return value
  if key in PATH_FIELDS or (key.startswith("task.options.") and
                            os.path.exists(value)):
    return storage.absolute(os.path.expanduser(value))
  return value


PATH_FIELDS = ("base_policy", "judge.path")


def identity(cfg) -> dict:
  """The run's identity: its flat config as given, path fields resolved to
  absolute paths (written to config.json and to every checkpoint)."""
  flat = cfg if isinstance(cfg, dict) else flat_config(cfg)
  return {k: _resolved(k, v) for k, v in flat.items()}


def _differ(mine: dict, theirs: dict) -> list[str]:
  theirs = identity(theirs)  # Older files kept relative paths.
  return sorted(k for k in set(mine) | set(theirs)
                if k not in RESUMABLE_FIELDS and mine.get(k) != theirs.get(k))


def check_workdir(cfg, say=print) -> None:
  """Refuse a workdir that belongs to a different config: the run's
  identity is compared with config.json and with the copy kept in the
  newest checkpoint, so losing or damaging config.json alone never lets
  another config continue the checkpoints. A missing or damaged config.json
  beside matching checkpoints is rebuilt (the trainer writes the identity
  once start-up passes). Every process reads; nothing is written here."""
  from poly_epo.checkpointing import saved_identity
  path = storage.join(cfg.workdir, "config.json")
  mine = identity(cfg)
  fix = ("use another --config.workdir, or delete the workdir to start "
         "over")
  theirs, damaged = None, None
  if storage.exists(path):
    try:
      theirs = storage.read_json(path)
    except ValueError as e:
      damaged = str(e).split("; ")[0]
  saved = saved_identity(cfg.workdir)
  if theirs is not None:
    diff = _differ(mine, theirs)
    if diff:
      raise ValueError(
          f"workdir {cfg.workdir!r} holds a run of a different config "
          f"({path}: fields differ: {', '.join(diff[:8])}); {fix}")
  if saved is None:
    return
  step, copy = saved
  ckpt = storage.join(storage.absolute(cfg.workdir), "checkpoints", str(step))
  if copy is None:
    if theirs is None:
      raise ValueError(
          f"workdir {cfg.workdir!r} has checkpoints ({ckpt}) but "
          f"{damaged or path + ' is missing'}, and those checkpoints predate "
          "kept run configs: nothing says which config they belong to; "
          f"restore config.json, or {fix}")
    return
  diff = _differ(mine, copy)
  if diff:
    raise ValueError(
        f"workdir {cfg.workdir!r} holds checkpoints of a different config "
        f"(the copy in {ckpt}: fields differ: {', '.join(diff[:8])}"
        + (f"; {path}: {damaged or 'missing'}" if theirs is None else "")
        + f"); {fix}")
  if theirs is None and distributed.is_main():
    say(f"{damaged or path + ' is missing'}: rebuilt from the copy in {ckpt}")


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
