"""`python -m poly_epo.plan --config configs/<exp>.py [--devices N]
[--chip v5e|v5p|v6e|h100|h200] [--topology 2x2x2] [--json]
[--config.field=value ...]`

Will this run fit, and how long will a step take? Per device, with abstract
shapes only (no weights, no accelerator). For TPU chips with the `tpu` extra
installed (libtpu), the rollout and update programs are compiled ahead of
time by the real TPU compiler for the topology's abstract devices
(`jax.experimental.topologies`; default: the standard slice holding the
chips), so memory and cost are the TPU compiler's (`"compiler": "tpu"`).
Otherwise (GPU chips, or no libtpu) they are compiled for a forced-device
CPU mesh of the config's shape (`"compiler": "xla-cpu"`):

- `params` (f32 master weights), `optimizer` (AdamW state), `gradients`,
  `sampler_params` (the compute-dtype copy the rollout uses, laid out for
  decoding: replicated over data/fsdp) and `kv_cache` (the decode slots of
  one chunk) are exact: shard shapes x dtype sizes;
- `rollout_temp` (a prefill, a decode step) and `update_temp` (the
  whole jitted update: activations of one micro-batch, gradient accumulators,
  log-prob chunks) come from XLA's `compiled.memory_analysis()`. XLA:CPU
  fuses differently from XLA:GPU/TPU (and has no flash attention), so read
  them as estimates; it is run with its memory-minimising scheduler.

Peak = max(rollout phase, update phase), where rollout = params + optimizer +
sampler_params + kv_cache + rollout_temp and update = params + optimizer +
update_temp; it FITS when the peak is under 90% of the chip's memory. The
planner also reports the largest `rollout.chunk_prompts` and the smallest
`num_microbatches` that fit, scaling the per-row parts linearly.

Time: `estimated_seconds` of one decode step (every slot of a device,
reading the whole cache), one prefill chunk and one update micro-batch from
the compiler's cost model (`cost_analysis()`: the TPU compiler's
`optimal_seconds`; else the chip's roofline of flops and bytes accessed);
the rollout replayed per schedule of the rollout engine for a spread of
response lengths (`--lengths`, `poly_epo/plan_rollout.py`; `rollout` is
the configured `rollout.engine`'s), the update (minibatches x
micro-batches) and one RL step. Fields set to 0 = derive (`mesh.fsdp`,
`num_microbatches`, `rollout.chunk_prompts`) are filled for the devices and
memory (`poly_epo.autoscale`) and reported under `derived`.

Model shapes: `base_policy` (policy or Hugging Face folder) when it exists,
else `model.preset` (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, tiny, ...).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from poly_epo import plan_rollout, tpu_topology
from poly_epo.autoscale import HEADROOM, divisors

# Usable memory per chip in bytes (what a JAX process can allocate; the
# GPU figures are what these cards report to JAX).
CHIPS = {
    "v5e": 16 * 2**30,
    "v5p": 95 * 2**30,
    "v6e": 32 * 2**30,
    "h100": 79 * 2**30,
    "h200": 139 * 2**30,
}
# (peak bf16 FLOP/s, HBM bytes/s) per chip, for the roofline estimate.
CHIP_SPEED = {
    "v5e": (197e12, 819e9),
    "v5p": (459e12, 2765e9),
    "v6e": (918e12, 1640e9),
    "h100": (989e12, 3350e9),
    "h200": (989e12, 4800e9),
}
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
  from poly_epo import autoscale
  return autoscale.model_config(cfg)


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                        sharding=s),
                      tree, shardings)


def _temp(compiled) -> int:
  ma = compiled.memory_analysis()
  return int(getattr(ma, "temp_size_in_bytes", 0) or 0)


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
  fn, lay = update.build(cfg, graphdef, tx, mesh, params_sh, opt_sh,
                         num_microbatches=num_microbatches, dtype=mcfg.dtype)
  batch = update.abstract_batch(cfg, lay, mesh)
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
          "num_params": mcfg.num_params}, {"update_microbatch": compiled}


def _cost(compiled, chip: str) -> dict:
  """The compiler's cost model for one run of a program on one chip. Loop
  bodies (the decode `while_loop`, the micro-batch `scan`) count once, so
  a decode program's figure is one decode step and the update's is one
  micro-batch (plus the optimizer step). `estimated_seconds`: the TPU
  compiler's `optimal_seconds` when it gives one, else the roofline
  max(flops / peak, bytes / bandwidth) of the chip."""
  ca = compiled.cost_analysis() or {}
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = float(ca.get("flops", 0.0))
  nbytes = float(ca.get("bytes accessed", 0.0))
  peak, bw = CHIP_SPEED[chip]
  roofline = max(flops / peak, nbytes / bw)
  optimal = float(ca.get("optimal_seconds", 0.0) or 0.0)
  est = optimal if optimal > 0 else roofline  # <= 0: no estimate given.
  return {"flops": flops, "bytes_accessed": nbytes,
          "roofline_seconds": roofline, "estimated_seconds": est}


def plan(cfg, chip: str = "h100", devices=None, lengths: str = "max"
         ) -> dict:
  """The memory (and time) plan of `cfg` on `devices` (default: the current
  ones; abstract TPU devices when the TPU compiler is used)."""
  import jax
  from poly_epo import autoscale, sharding
  if chip not in CHIPS:
    raise ValueError(f"--chip={chip!r}: one of {', '.join(CHIPS)}")
  devices = list(devices if devices is not None else jax.devices())
  compiler = "tpu" if devices[0].platform == "tpu" else "xla-cpu"
  if compiler == "tpu":
    from poly_epo.models import splash
    splash.INTERPRET = False  # Compile the real kernel for the TPU.
  cap = CHIPS[chip]
  mcfg = model_config(cfg)
  given = cfg
  cfg = autoscale.resolve(cfg, len(devices), cap, mcfg,
                          len({d.process_index for d in devices}))
  mcfg = mcfg.replace(remat=cfg.model.remat)  # "auto" resolved above.
  from poly_epo import config_checks
  target = "tpu" if chip in tpu_topology.SHAPES else "gpu"
  config_checks.check_config(cfg, n_devices=len(devices), platform=target)
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                            devices=devices)
  b = cfg.prompts_per_step
  chunk = cfg.rollout.chunk_prompts or b
  micro = cfg.num_microbatches
  per_dev, programs = update_memory(mcfg, mesh, cfg, micro)
  num_params = per_dev.pop("num_params")
  mem, more, specs = plan_rollout.compile_programs(mcfg, mesh, cfg, chunk,
                                                   _abstract, _tree_bytes,
                                                   target)
  per_dev.update(mem)
  per_dev["rollout_temp"] = max(_temp(c) for c in more.values())
  programs.update(more)
  per_dev["judge_params"] = judge_bytes(cfg, devices)
  fixed = per_dev["params"] + per_dev["optimizer"] + per_dev["judge_params"]

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
  chunks = [c for c in divisors(b) if (c * cfg.num_samples) %
            rows_per_shard == 0 or c == b]
  fit_chunks = [c for c in chunks if rollout_peak(c) <= HEADROOM * cap]
  per_mini = b * cfg.num_samples // cfg.num_minibatches
  micros = [m for m in divisors(per_mini)
            if (per_mini // m) % rows_per_shard == 0]
  fit_micros = [m for m in micros if update_peak(m) <= HEADROOM * cap]
  cost = {name: _cost(c, chip) for name, c in programs.items()}
  est = {k: v["estimated_seconds"] for k, v in cost.items()}
  every = {spread: plan_rollout.estimate(cfg, cost, specs, spread, b)
           for spread in plan_rollout.SPREADS}
  schedules = every[lengths]
  w_full = specs["windows"][0]
  est["decode_step"] = est.pop(f"decode_step_w{w_full}")
  cost["decode_step"] = cost.pop(f"decode_step_w{w_full}")
  rollout_s = schedules[plan_rollout.configured(cfg, target)]["seconds"]
  update_s = cfg.num_minibatches * micro * est["update_microbatch"]
  return {
      "compiler": compiler,
      "compiler_note": (
          "TPU compiler (libtpu), deviceless ahead-of-time compile for "
          f"{tpu_topology.describe(devices)}" if compiler == "tpu" else
          "XLA:CPU on forced host devices: an estimate of what an "
          "accelerator's compiler allocates" + (
              "; install the tpu extra (libtpu) for the TPU compiler's "
              "figures" if chip in tpu_topology.SHAPES else "")),
      "model": {k: getattr(mcfg, k) for k in (
          "model_type", "hidden_size", "num_layers", "num_heads",
          "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
          "param_dtype", "dtype", "remat", "attention", "attention_chunk")},
      "num_params": num_params,
      "devices": len(devices),
      "mesh": dict(mesh.shape),
      "chip": chip,
      "device_bytes": cap,
      "derived": autoscale.derived_fields(given, cfg),
      "rollout_chunk_prompts": chunk,
      "num_microbatches": micro,
      "per_device_bytes": per_dev,
      "rollout_peak_bytes": int(peak_r),
      "update_peak_bytes": int(peak_u),
      "peak_bytes": int(peak),
      "fits": bool(peak <= HEADROOM * cap),
      "max_chunk_prompts": max(fit_chunks) if fit_chunks else None,
      "min_num_microbatches": min(fit_micros) if fit_micros else None,
      "cost": cost,
      "rollout_schedules": schedules,
      "rollout_schedules_by_lengths": every,
      "estimated_seconds": {
          **est, "rollout": rollout_s, "update": update_s,
          "rl_step": rollout_s + update_s},
  }


def judge_bytes(cfg, devices) -> int:
  """Per-device bytes of an in-process judge (compute dtype, sharded over
  one host's devices); 0 for the task labels or an HTTP judge."""
  if cfg.judge.kind != "inprocess" or not cfg.judge.path:
    return 0
  from poly_epo import storage
  from poly_epo.models import ModelConfig
  if not storage.isfile(storage.join(cfg.judge.path, "config.json")):
    return 0
  jcfg = ModelConfig.from_hf_json(storage.local_copy(cfg.judge.path))
  per_host = sum(d.process_index == devices[0].process_index
                 for d in devices)
  from poly_epo.autoscale import ITEMSIZE
  return int(jcfg.num_params * ITEMSIZE[cfg.model.dtype] / per_host)


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
  if p.get("derived"):
    lines.append("derived: " + ", ".join(f"{k}={v}" for k, v in
                                         p["derived"].items()))
  e = p["estimated_seconds"]
  lines += [
      f"estimated time ({p['compiler']} cost model): decode step "
      f"{e['decode_step'] * 1e3:.2f} ms, prefill chunk "
      f"{e['prefill_chunk'] * 1e3:.1f} ms, update micro-batch "
      f"{e['update_microbatch'] * 1e3:.1f} ms; rollout {e['rollout']:.0f} s "
      f"+ update {e['update']:.0f} s = RL step {e['rl_step']:.0f} s",
      f"rollout by schedule ({p['rollout_schedules']['lengths']} response "
      "lengths; --json has every spread): " + "; ".join(
          f"{name} {r['seconds']:.0f} s, {r['decode_steps']} steps, "
          f"{r['bytes_per_token'] / 1e6:.1f} MB read per token"
          for name, r in p["rollout_schedules"].items()
          if isinstance(r, dict)),
      f"compiler: {p['compiler_note']}"]
  return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).",
    lock_config=True)
flags.DEFINE_integer("devices", 0, "devices to plan for (default: the "
                     "config's mesh size, or the topology's chips)")
flags.DEFINE_enum("chip", "h100", list(CHIPS), "accelerator to plan for")
flags.DEFINE_string("topology", "", "TPU topology, e.g. 2x2x2 (default: the "
                    "standard slice holding --devices chips)")
flags.DEFINE_enum("compiler", "auto", ["auto", "tpu", "xla-cpu"],
                  "auto: the TPU compiler for TPU chips when libtpu is "
                  "installed, else XLA:CPU on forced host devices")
flags.DEFINE_enum("lengths", "max", list(plan_rollout.SPREADS),
                  "response lengths the rollout estimate assumes: max (all "
                  "at max_new_tokens), uniform on [L/20, L], capped (30% at "
                  "L, the rest uniform below)")
flags.DEFINE_bool("json", False, "print one JSON object")


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config=configs/<exp>.py is required")
  chip, f = flags.FLAGS.chip, flags.FLAGS
  try:
    n = tpu_topology.validate(chip, f.devices, f.topology,
                              tuple(tpu_topology.SHAPES)) or (
        max(cfg.mesh.data, 1) * max(cfg.mesh.fsdp, 1) * cfg.mesh.tensor)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if "jax" in sys.modules:
    raise RuntimeError("poly_epo.plan must set the device count before "
                       "jax is imported")
  os.environ["JAX_PLATFORMS"] = "cpu"
  tpu = chip in tpu_topology.SHAPES and f.compiler != "xla-cpu" and \
      tpu_topology.libtpu_available()
  if f.compiler == "tpu" and not tpu:
    print(f"error: --compiler=tpu needs a TPU --chip ({', '.join(tpu_topology.SHAPES)})"
          " and the tpu extra (pip install -e '.[tpu]')", file=sys.stderr)
    return 2
  if not tpu:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}"
                               + MEMORY_SCHEDULER_FLAG)
  try:
    devices = tpu_topology.devices(chip, n, f.topology) if tpu else None
    p = plan(cfg, chip, devices, f.lengths)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(p, indent=1) if f.json else format_plan(p))
  return 0


if __name__ == "__main__":
  from poly_epo.cli import parse_flags
  sys.exit(app.run(main, flags_parser=parse_flags))
