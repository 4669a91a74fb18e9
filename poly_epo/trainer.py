"""The RL loop: sample N per prompt -> rewards -> labels -> advantages ->
sharded PPO minibatch updates -> metrics / evaluation / checkpoints.

Exact resume: every random choice of step s derives from (seed, s) -- the
prompts from `task.train_prompts(seed * 1_000_003 + s, B)`, the sampling key
from `fold_in(key(seed), s)` -- so the checkpointed params, optimizer state
and step are the whole state. A run killed at any point and started again
with the same command continues with the same metrics.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from flax import nnx

from poly_epo import (checkpointing, config_checks, evaluate, judges, metrics,
                      pretrain, sampling, set_rl, sharding, tasks, update)
from poly_epo.tokenizer import decode_completions, encode_prompts

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("steps", "eval_every", "ckpt_every", "keep_checkpoints",
                    "progress")


def _flat_config(cfg) -> dict:
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
  """Refuse a workdir that belongs to a different config; record ours."""
  os.makedirs(cfg.workdir, exist_ok=True)
  path = os.path.join(cfg.workdir, "config.json")
  mine = _flat_config(cfg)
  if os.path.exists(path):
    with open(path) as f:
      theirs = json.load(f)
    diff = sorted(k for k in set(mine) | set(theirs)
                  if k not in RESUMABLE_FIELDS and mine.get(k) != theirs.get(k))
    if diff:
      raise ValueError(
          f"workdir {cfg.workdir!r} holds a run of a different config "
          f"(fields differ: {', '.join(diff[:8])}); use another "
          "--config.workdir or delete it")
  with open(path + ".tmp", "w") as f:
    json.dump(mine, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def make_judge(cfg):
  if cfg.judge.kind == "http":
    return judges.HttpJudge(cfg.judge.url, cfg.judge.model,
                            timeout=cfg.judge.timeout,
                            max_concurrency=cfg.judge.max_concurrency,
                            cache_path=os.path.join(cfg.workdir,
                                                    "judge_cache.jsonl"))
  if cfg.judge.kind == "inprocess":
    return judges.InProcessJudge(cfg.judge.path)
  return None


def base_policy(cfg, progress: bool):
  """(model, tokenizer): `config.base_policy`, or <workdir>/base, pretrained
  there first when missing (embedded tasks)."""
  path = cfg.base_policy or os.path.join(cfg.workdir, "base")
  if not os.path.isdir(path):
    if cfg.base_policy:
      raise FileNotFoundError(f"config.base_policy: no folder {path!r}")
    print(f"no base policy at {path}: pretraining one")
    s = pretrain.pretrain(cfg, progress=progress)
    print(f"pretrained in {s['total_seconds']:.0f} s: held-out pass@1 "
          f"{s['heldout_pass@1']:.3f}")
  model, tok, _ = checkpointing.load_policy(path)
  return model, tok


class MetricsLog:
  """JSONL (atomic rewrite on resume) + TensorBoard."""

  def __init__(self, workdir: str, start_step: int):
    from tensorboardX import SummaryWriter
    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # A torn last line from a killed run.
          step = rec.get("step", 0)
          is_train = any(k.startswith("train/") for k in rec)
          # Keep what the checkpoint covers: train rows before it, and the
          # evaluation of its own params (written at step == start_step).
          if step < start_step or (step == start_step and not is_train):
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)
    self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, values: dict, prefix: str = "train"):
    rec = {"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    for k, v in values.items():
      if isinstance(v, (int, float)) and np.isfinite(v):
        self.tb.add_scalar(f"{prefix}/{k}", v, step)
    self.tb.flush()


def _eval_summary(ev: dict, m: int) -> dict:
  return {"pass@1": ev["pass@1"], f"pass@{m}": ev[f"pass@{m}"],
          "distinct_correct": ev["distinct_correct"],
          "any_correct": ev["any_correct"]}


def train(cfg) -> dict:
  """Run (or resume) RL training; returns the final summary."""
  config_checks.check_config(cfg)
  check_workdir(cfg)
  progress = cfg.get("progress", True)
  task = tasks.get(cfg.task.name, **dict(cfg.task.options))
  judge = make_judge(cfg)
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  model, tok = base_policy(cfg, progress)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = update.make_optimizer(cfg.lr, weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip,
                             warmup_steps=cfg.warmup_steps,
                             total_steps=cfg.steps,
                             schedule=cfg.lr_schedule)
  params_sh = sharding.tree_shardings(params, mesh)
  params = jax.device_put(params, params_sh)
  opt_state = tx.init(params)
  opt_sh = sharding.tree_shardings(opt_state, mesh)
  opt_state = jax.device_put(opt_state, opt_sh)
  width = cfg.max_prompt_tokens
  update_fn = update.make_update_fn(
      graphdef, tx, mesh, params_sh, opt_sh, prompt_len=width,
      num_minibatches=cfg.num_minibatches,
      num_microbatches=cfg.num_microbatches, temperature=cfg.temperature,
      loss_options=dict(eps_low=cfg.loss.eps_low, eps_high=cfg.loss.eps_high,
                        dual_clip=cfg.loss.dual_clip or None,
                        aggregation=cfg.loss.aggregation,
                        max_len=cfg.max_new_tokens, kl_coef=0.0,
                        entropy_coef=cfg.loss.entropy_coef))

  ckpt_dir = os.path.abspath(os.path.join(cfg.workdir, "checkpoints"))
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(
          max_to_keep=cfg.keep_checkpoints, create=True))
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"params": params,
                                        "opt_state": opt_state})))
    params = restored.state["params"]
    opt_state = restored.state["opt_state"]
    print(f"resumed from {ckpt_dir} at step {start}")
  log = MetricsLog(cfg.workdir, start)

  heldout = task.heldout_prompts(cfg.seed, cfg.eval_prompts) \
      if cfg.eval_prompts else []
  m = cfg.eval_samples

  def run_eval(p):
    ev = evaluate.evaluate(nnx.merge(graphdef, p, rest), tok, task, heldout,
                           num_samples=m, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, seed=cfg.seed)
    return _eval_summary(ev, m)

  base_eval_path = os.path.join(cfg.workdir, "base_eval.json")
  base_eval = None
  if heldout:
    if os.path.exists(base_eval_path):
      with open(base_eval_path) as f:
        base_eval = json.load(f)
    else:
      base_eval = run_eval(params)
      with open(base_eval_path + ".tmp", "w") as f:
        json.dump(base_eval, f)
      os.replace(base_eval_path + ".tmp", base_eval_path)

  key = jax.random.key(cfg.seed)
  nan_run = 0
  bar = tqdm.trange(start, cfg.steps, desc=f"{cfg.algorithm}",
                    initial=start, total=cfg.steps, disable=not progress)
  for step in bar:
    t0 = time.perf_counter()
    prompts = task.train_prompts(cfg.seed * 1_000_003 + step,
                                 cfg.prompts_per_step)
    try:
      p_tok, p_mask = encode_prompts(tok, prompts, width=width)
    except ValueError as e:
      raise ValueError(f"config.max_prompt_tokens={width}: {e}") from None
    out = sampling.generate(
        nnx.merge(graphdef, params, rest), p_tok, p_mask,
        num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        eos_id=tok.eos_token_id, rng=jax.random.fold_in(key, step),
        pad_id=tok.pad_token_id)
    out = jax.device_get(out)
    t_sample = time.perf_counter() - t0
    texts = decode_completions(tok, out.tokens, out.mask)
    rewards, labels = evaluate.score(task, prompts, texts)
    valid = np.ones(len(prompts), bool)
    if judge is not None:
      results = judge.cluster_many(prompts, texts)
      labels = np.array([r.labels for r in results], np.int32)
      valid = np.array([r.valid for r in results])
    options = dict(cfg.objective_options) if cfg.algorithm not in \
        set_rl.baseline_names() else dict(cfg.baseline_options.get(
            cfg.algorithm, {}))
    adv = np.asarray(set_rl.advantages(
        cfg.algorithm, rewards, labels, set_size=cfg.set_size,
        num_sets=cfg.num_sets or None, reduce=cfg.reduce, valid=valid,
        rng=jax.random.fold_in(jax.random.fold_in(key, step), 1), **options))
    k = cfg.num_samples
    batch = update.RolloutBatch(
        tokens_ST=np.concatenate([np.repeat(p_tok, k, 0),
                                  out.tokens.reshape(-1, cfg.max_new_tokens)],
                                 1),
        attn_ST=np.concatenate([np.repeat(p_mask, k, 0),
                                out.mask.reshape(-1, cfg.max_new_tokens)], 1),
        mask_SL=out.mask.reshape(-1, cfg.max_new_tokens),
        old_logp_SL=out.logprobs.reshape(-1, cfg.max_new_tokens),
        adv_S=adv.reshape(-1).astype(np.float32))
    t1 = time.perf_counter()
    params, opt_state, upd = update_fn(params, opt_state, batch)
    upd = {k_: float(v) for k_, v in jax.device_get(upd).items()}
    t_update = time.perf_counter() - t1
    correct = rewards >= 0.5
    n_tok = int(out.mask.sum())
    row = {
        "reward_mean": float(rewards.mean()),
        "pass@1": float(correct.mean()),
        f"pass@{k}": float(correct.any(1).mean()),
        "distinct_correct": float(metrics.distinct_correct(labels,
                                                           correct).mean()),
        "frac_zero_adv": float((np.abs(adv).max(1) == 0).mean()),
        "response_length": float(out.mask.sum(-1).mean()),
        "sample_tok_s": n_tok / max(t_sample, 1e-9),
        "update_tok_s": n_tok / max(t_update, 1e-9),
        "judge_failed": float(judge.counts["failed"]) if judge else 0.0,
        "judge_wrong_count": float(judge.counts["wrong_count"]) if judge
        else 0.0,
        "task_errors": float(sum(task.errors.values())),
        **upd,
    }
    log.write(step, row)
    nan_run = nan_run + 1 if upd["skipped"] else 0
    if nan_run >= cfg.max_nan_steps:
      raise FloatingPointError(
          f"{nan_run} updates in a row had a non-finite loss or gradient "
          f"(last at step {step}); stopping (config.max_nan_steps)")
    bar.set_postfix(reward=f"{row['reward_mean']:.2f}",
                    distinct=f"{row['distinct_correct']:.2f}")
    done = step + 1
    if cfg.eval_every and heldout and done % cfg.eval_every == 0 and \
        done < cfg.steps:
      log.write(done, run_eval(params), prefix="eval")
    if done % cfg.ckpt_every == 0 or done == cfg.steps:
      manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(
          {"params": params, "opt_state": opt_state})))
      manager.wait_until_finished()
  manager.close()

  final = run_eval(params) if heldout else None
  if final is not None:
    log.write(cfg.steps, final, prefix="eval")
  policy_dir = os.path.join(cfg.workdir, "policy")
  checkpointing.save_policy(policy_dir, nnx.merge(graphdef, params, rest), tok,
                            meta={"algorithm": cfg.algorithm,
                                  "steps": cfg.steps, "eval": final})
  summary = {"base": base_eval, "trained": final, "workdir": cfg.workdir,
             "policy": policy_dir, "algorithm": cfg.algorithm,
             "eval_samples": m}
  with open(os.path.join(cfg.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def format_table(summary: dict) -> str:
  m = summary["eval_samples"]
  lines = [f"{'held-out':<12} {'pass@1':>7} {f'pass@{m}':>8} "
           f"{'distinct correct':>17}"]
  for name, ev in (("base", summary["base"]),
                   (summary["algorithm"], summary["trained"])):
    if ev:
      lines.append(f"{name:<12} {ev['pass@1']:>7.3f} {ev[f'pass@{m}']:>8.3f} "
                   f"{ev['distinct_correct']:>17.2f}")
  return "\n".join(lines)
