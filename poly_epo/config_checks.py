"""Fail fast, before any compile, on configs that cannot work; every message
names the config field."""

from __future__ import annotations

import jax

from poly_epo import losses, set_rl, sharding, storage, tasks
from poly_epo.engine import settings


def check_config(cfg, n_devices: int | None = None,
                 platform: str | None = None) -> None:
  """Every field checked before anything runs (ValueError naming it);
  `n_devices` / `platform`: the devices to check for (default: this
  process's view; `plan` passes the slice it plans). The rollout's
  settings are resolved here as the run will resolve them
  (`engine.settings.from_config`), so a combination that cannot run on
  the platform stops the run before pretraining."""
  def need(cond, field, msg):
    if not cond:
      raise ValueError(f"config.{field}: {msg}")

  need(cfg.algorithm in set_rl.algorithm_names(), "algorithm",
       f"unknown algorithm {cfg.algorithm!r}; known: "
       f"{', '.join(set_rl.algorithm_names())}")
  need(cfg.task.name in tasks.task_names(), "task.name",
       f"unknown task {cfg.task.name!r}; known: "
       f"{', '.join(tasks.task_names())}")
  need(cfg.num_samples >= 2, "num_samples", "needs at least 2 samples")
  need(cfg.temperature > 0, "temperature",
       f"{cfg.temperature} must be > 0 (the loss divides logits by it; "
       "greedy decoding is not a policy-gradient sampler)")
  for field in ("param_dtype", "dtype"):
    need(cfg.model[field] in ("float32", "bfloat16", "float16"),
         f"model.{field}", "'float32', 'bfloat16' or 'float16'")
  need(cfg.model.remat in ("none", "full", "dots", "auto"), "model.remat",
       "'none', 'full', 'dots' or 'auto'")
  need(cfg.model.attention in ("einsum", "xla", "cudnn", "splash"),
       "model.attention", "'einsum', 'xla', 'cudnn' or 'splash' (TPU)")
  need(cfg.model.logprob_chunk >= 0, "model.logprob_chunk", "must be >= 0")
  need(cfg.model.attention_chunk >= 0, "model.attention_chunk",
       "must be >= 0")
  need(cfg.recompute_old_logprobs in ("auto", "on", "off"),
       "recompute_old_logprobs", "'auto', 'on' or 'off'")
  procs = jax.process_count()
  need(cfg.prompts_per_step % procs == 0, "prompts_per_step",
       f"{cfg.prompts_per_step} prompts do not split over {procs} processes")
  chunk = cfg.rollout.chunk_prompts
  need(chunk >= 0, "rollout.chunk_prompts", "must be >= 0")
  need(chunk == 0 or chunk % procs == 0, "rollout.chunk_prompts",
       f"{chunk} does not split over {procs} processes")
  r = cfg.rollout
  try:
    settings.from_config(cfg, platform or jax.default_backend())
  except ValueError as e:
    raise ValueError(f"config.{e}") from None
  n_devices = n_devices or jax.device_count()
  shards = max(n_devices // max(cfg.mesh.tensor, 1), 1)
  rows = cfg.prompts_per_step * cfg.num_samples
  need(rows % shards == 0, "mesh",
       f"a step's {rows} rows (prompts_per_step x num_samples) do not split "
       f"over {shards} batch shards ({n_devices} devices / mesh.tensor="
       f"{cfg.mesh.tensor}); use a device count that divides them")
  need(r.slots == 0 or r.slots // shards >= cfg.num_samples * r.refill,
       "rollout.slots", f"{r.slots} slots over {shards} batch shards cannot "
       f"hold one refill of rollout.refill x num_samples = {r.refill} x "
       f"{cfg.num_samples} rows per device")
  need(1 <= cfg.set_size <= cfg.num_samples, "set_size",
       f"{cfg.set_size} must be between 1 and num_samples={cfg.num_samples}")
  need(cfg.algorithm in set_rl.baseline_names() or
       cfg.set_size < cfg.num_samples, "set_size",
       f"{cfg.set_size} = num_samples: one set per prompt, so every set "
       f"advantage f(S) - mean f is 0 and {cfg.algorithm} cannot learn; "
       "use num_samples > set_size (N = 8, n = 4: 70 sets)")
  need(cfg.reduce in ("mean", "sum"), "reduce", "'mean' or 'sum'")
  need(cfg.loss.aggregation in losses.AGGREGATIONS, "loss.aggregation",
       f"one of {losses.AGGREGATIONS}")
  for alg, fields in cfg.get("loss_overrides", {}).items():
    need(alg in set_rl.algorithm_names(), f"loss_overrides.{alg}",
         f"unknown algorithm; known: {', '.join(set_rl.algorithm_names())}")
    for field in fields:
      need(field in cfg.loss, f"loss_overrides.{alg}.{field}",
           f"not a loss field; loss fields: {', '.join(cfg.loss)}")
  need(cfg.steps >= 1 and cfg.prompts_per_step >= 1, "steps",
       "steps and prompts_per_step must be >= 1")
  # Value ranges of every numeric field.
  ranges = [
      ("seed", cfg.seed >= 0, "must be >= 0"),
      ("lr", cfg.lr > 0, "must be > 0"),
      ("warmup_steps", cfg.warmup_steps >= 0, "must be >= 0"),
      ("weight_decay", cfg.weight_decay >= 0, "must be >= 0"),
      ("grad_clip", cfg.grad_clip > 0, "must be > 0"),
      ("lr_schedule", cfg.lr_schedule in ("constant", "cosine"),
       "'constant' or 'cosine'"),
      ("max_new_tokens", cfg.max_new_tokens >= 1, "must be >= 1"),
      ("max_prompt_tokens", cfg.max_prompt_tokens >= 1, "must be >= 1"),
      ("num_sets", cfg.num_sets >= 0, "must be >= 0 (0 = all sets)"),
      ("eval_samples", cfg.eval_samples >= 1, "must be >= 1"),
      ("loss.eps_low", 0 <= cfg.loss.eps_low < 1, "must be in [0, 1)"),
      ("loss.eps_high", cfg.loss.eps_high >= 0, "must be >= 0"),
      ("loss.dual_clip", cfg.loss.dual_clip == 0 or cfg.loss.dual_clip > 1,
       "must be 0 (off) or > 1"),
      ("loss.entropy_coef", cfg.loss.entropy_coef >= 0, "must be >= 0"),
      ("pretrain.steps", cfg.pretrain.steps >= 1, "must be >= 1"),
      ("pretrain.batch_size", cfg.pretrain.batch_size >= 1, "must be >= 1"),
      ("pretrain.lr", cfg.pretrain.lr > 0, "must be > 0"),
      ("pretrain.weight_decay", cfg.pretrain.weight_decay >= 0,
       "must be >= 0"),
      ("pretrain.eval_samples", cfg.pretrain.eval_samples >= 1,
       "must be >= 1"),
      ("judge.timeout", cfg.judge.timeout > 0, "must be > 0"),
      ("judge.max_concurrency", cfg.judge.max_concurrency >= 1,
       "must be >= 1"),
  ]
  for field, ok, msg in ranges:
    value = cfg
    for part in field.split("."):
      value = value[part]
    need(ok, field, f"{value!r} {msg}")
  seqs = cfg.prompts_per_step * cfg.num_samples
  chunks = cfg.num_minibatches * cfg.num_microbatches
  need(cfg.num_minibatches >= 1 and cfg.num_microbatches >= 1,
       "num_minibatches", "num_minibatches and num_microbatches must be >= 1")
  need(seqs % chunks == 0, "num_minibatches",
       f"prompts_per_step x num_samples = {seqs} sequences do not split into "
       f"num_minibatches x num_microbatches = {chunks} equal parts")
  data = sharding.resolve_data_axis(cfg.mesh.data, cfg.mesh.fsdp,
                                    cfg.mesh.tensor, jax.device_count())
  n_dev = data * cfg.mesh.fsdp * cfg.mesh.tensor
  need(min(data, cfg.mesh.fsdp, cfg.mesh.tensor) >= 1, "mesh",
       "mesh sizes must be >= 1 (data may be 0: all remaining devices)")
  need(n_dev == jax.device_count(), "mesh",
       f"data x fsdp x tensor = {n_dev} but there are {jax.device_count()} "
       "devices")
  batch_shards = data * cfg.mesh.fsdp
  need(cfg.prompts_per_step % batch_shards == 0 or
       batch_shards % cfg.prompts_per_step == 0, "prompts_per_step",
       f"{cfg.prompts_per_step} prompts do not split over the data x fsdp = "
       f"{batch_shards} batch shards (nor divide them)")
  need((seqs // chunks) % batch_shards == 0, "mesh.data",
       f"micro-batches of {seqs // chunks} sequences do not split over "
       f"data x fsdp = {batch_shards} devices")
  need(cfg.lock_timeout_s > 0, "lock_timeout_s", "must be > 0")
  from poly_epo import update
  update.layout(cfg, batch_shards)  # Its own one-line config errors.
  if cfg.base_policy:
    from poly_epo.convert import is_gguf, resolve_gguf
    if is_gguf(cfg.base_policy):
      try:
        resolve_gguf(cfg.base_policy)
      except FileNotFoundError as e:
        need(False, "base_policy", str(e))
    else:
      need(storage.isdir(cfg.base_policy), "base_policy",
           f"no checkpoint folder at {cfg.base_policy!r}")
  need(cfg.export_dtype in ("", "float32", "bfloat16", "float16"),
       "export_dtype", "'', 'float32', 'bfloat16' or 'float16'")
  need(cfg.ckpt_every >= 1 and cfg.keep_checkpoints >= 1, "ckpt_every",
       "ckpt_every and keep_checkpoints must be >= 1")
  need(cfg.eval_every >= 0 and cfg.eval_prompts >= 0, "eval_every",
       "eval_every and eval_prompts must be >= 0")
  need(cfg.max_nan_steps >= 1, "max_nan_steps", "must be >= 1")
  need(cfg.judge.kind in ("task", "http", "inprocess"), "judge.kind",
       "'task' (programmatic labels), 'http' or 'inprocess'")
  need(cfg.judge.max_reply_tokens >= 1 and cfg.judge.max_response_tokens >= 1,
       "judge.max_response_tokens",
       "max_response_tokens and max_reply_tokens must be >= 1")
  need(0 <= cfg.judge.max_failed_fraction <= 1 and
       cfg.judge.failure_window >= 1, "judge.max_failed_fraction",
       "max_failed_fraction must be in [0, 1] and failure_window >= 1")
  if cfg.judge.kind == "http":
    need(bool(cfg.judge.url), "judge.url", "the HTTP judge needs a base URL")
  if cfg.judge.kind == "inprocess":
    need(storage.isdir(cfg.judge.path), "judge.path",
         f"no model folder at {cfg.judge.path!r}")


def check_labels(cfg, task) -> None:
  """Refuse an algorithm that reads strategy labels on a task that gives
  none when no LM judge is configured (every label would be DEGENERATE and
  every advantage 0, silently)."""
  if cfg.algorithm in set_rl.NEEDS_LABELS and cfg.judge.kind == "task" \
      and not task.gives_labels():
    hint = (" or config.task.options.labels=answer (the canonical final "
            "answer is the strategy)" if task.name == "math" else "")
    raise ValueError(
        f"config.algorithm={cfg.algorithm} needs strategy labels, but task "
        f"{task.name!r} gives none and config.judge.kind=task: set "
        f"config.judge.kind=http or inprocess{hint}")
