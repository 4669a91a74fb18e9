"""The RL loop, one straight line per step:

    prompts -> rollout -> score (rewards, labels) -> advantages -> update -> log

on one device, a mesh, or every host of a pod (each process handles its own
contiguous block of the step's prompts; see poly_epo/distributed.py).

Exact resume: every random choice of step s derives from (seed, s) -- the
prompts from `task.train_prompts(seed * 1_000_003 + s, B)`, prompt i's samples
from `fold_in(fold_in(key(seed), s), i)` -- so the checkpointed params,
optimizer state and step are the whole state. A run killed at any point and
started again with the same command continues with the same metrics.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from poly_epo import (checkpointing, compile_cache, config_checks,
                      distributed, evaluation, export, losses, metrics,
                      packing, pretrain, rollout, scoring, set_rl, sharding,
                      step_watch, storage, tasks, update)
from poly_epo.convert import policy_path
from poly_epo.engine import settings
from poly_epo.judges.factory import JudgeWatch, make_judge
from poly_epo.run_config import check_workdir, identity, resolve_config
from poly_epo.metrics_writer import MetricsWriter
from poly_epo.tokenizer import chat_format, encode_prompts

def _write_json(obj, path: str) -> None:
  """Atomic JSON write by the main process (any storage)."""
  if distributed.is_main():
    storage.write_json(path, obj)


def model_overrides(cfg) -> dict:
  """ModelConfig fields the experiment config sets on the loaded policy."""
  m = cfg.model
  return dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
              attention=m.attention, attention_chunk=m.attention_chunk)


def base_policy(cfg, mesh=None, progress: bool = True, stop=None):
  """(model, tokenizer): `config.base_policy` (a policy or Hugging Face
  folder), or <workdir>/base, pretrained there first when missing (embedded
  tasks), loaded straight onto the mesh in the config's dtypes."""
  path = policy_path(cfg.base_policy) or storage.join(cfg.workdir, "base")
  if not storage.isdir(path):
    if cfg.base_policy:
      raise FileNotFoundError(f"config.base_policy: no folder {path!r}")
    if distributed.is_main():
      print(f"no base policy at {path}: pretraining one")
      s = pretrain.pretrain(cfg, progress=progress, stop=stop)
      print(f"pretrained in {s['total_seconds']:.0f} s: held-out pass@1 "
            f"{s['heldout_pass@1']:.3f}; {pretrain.strategy_line(s)}")
    distributed.barrier("pretrain")
  model, tok, _ = checkpointing.load_any(path, mesh, **model_overrides(cfg))
  return model, tok


loss_options = losses.config_options  # (Kept under its old name.)


@dataclasses.dataclass
class Run:
  """What every step needs besides the params and optimizer state."""
  cfg: object
  task: object
  judge: object
  mesh: object
  tok: object
  graphdef: object
  rest: object
  update_fn: object
  key: jax.Array
  block: tuple  # [start, stop) of this process's prompts in every step.
  layout: dict  # update.layout: shared_prefix, on_policy, recompute.
  rollout: object  # engine.settings.RolloutSettings, resolved once.

  def model(self, params):
    return nnx.merge(self.graphdef, params, self.rest)


def setup(cfg, progress: bool, task, judge, stop=None):
  """Build the run and its initial (params, opt_state)."""
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  model, tok = base_policy(cfg, mesh, progress, stop)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = update.make_optimizer(cfg.lr, weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip,
                             warmup_steps=cfg.warmup_steps,
                             total_steps=cfg.steps,
                             schedule=cfg.lr_schedule)
  params_sh = sharding.tree_shardings(params, mesh)
  opt_sh = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  update_fn, layout = update.build(cfg, graphdef, tx, mesh, params_sh,
                                   opt_sh)
  block = distributed.prompt_blocks(mesh, cfg.prompts_per_step,
                                   cfg.num_samples)[jax.process_index()]
  drop_long_prompts(task, tok, cfg)
  rollout_settings = settings.from_config(
      cfg, settings.platform_of(mesh), eos_id=tok.eos_token_id,
      pad_id=tok.pad_token_id)
  run = Run(cfg, task, judge, mesh, tok, graphdef, rest, update_fn,
            jax.random.key(cfg.seed), block, layout, rollout_settings)
  return run, params, opt_state


def drop_long_prompts(task, tok, cfg) -> None:
  """Problems whose prompt exceeds config.max_prompt_tokens are dropped at
  load, with a count (verl's filter_overlong_prompts), not hours in."""
  chat = task.chat_template == "auto"
  limit = cfg.max_prompt_tokens
  fits = lambda p: len(tok.encode(chat_format(tok, p) if chat else p,
                                  add_special_tokens=False)) <= limit
  dropped = task.filter_prompts(fits)
  if any(dropped.values()) and distributed.is_main():
    print("dropped prompts longer than config.max_prompt_tokens="
          f"{limit}: " + ", ".join(f"{k}: {v}" for k, v in dropped.items()
                                   if v))


def step_prompts(run: Run, step: int):
  """This process's prompts of a step, encoded [B_local, P]."""
  cfg = run.cfg
  prompts = run.task.train_batch(cfg.seed, step, cfg.prompts_per_step)
  mine = prompts[run.block[0]:run.block[1]]
  try:
    tokens, mask = encode_prompts(run.tok, mine, width=cfg.max_prompt_tokens,
                                  chat=run.task.chat_template == "auto")
  except ValueError as e:
    raise ValueError(f"config.max_prompt_tokens={cfg.max_prompt_tokens}: "
                     f"{e}") from None
  return mine, tokens, mask


def rollout_step(run: Run, params, tokens, mask, step: int, on_done=None):
  """N completions per prompt: NumPy SampleOutput [B_local, N, L]."""
  return rollout.rollout(
      run.graphdef, params, run.rest, tokens, mask,
      np.arange(*run.block), rng=jax.random.fold_in(run.key, step),
      settings=run.rollout, mesh=run.mesh,
      compute_dtype=run.cfg.model.dtype, on_done=on_done)


def advantages_step(run: Run, rewards, labels, valid, step: int):
  cfg = run.cfg
  if cfg.algorithm in set_rl.baseline_names():
    options = dict(cfg.baseline_options.get(cfg.algorithm, {}))
  else:
    options = dict(cfg.objective_options)
  rng = jax.random.fold_in(jax.random.fold_in(run.key, step), 1)
  return np.asarray(set_rl.advantages(
      cfg.algorithm, rewards, labels, set_size=cfg.set_size,
      num_sets=cfg.num_sets or None, reduce=cfg.reduce, valid=valid, rng=rng,
      **options))


def update_step(run: Run, params, opt_state, tokens, mask, out, adv):
  """One rollout batch of PPO minibatch updates; returns host metrics."""
  cfg = run.cfg
  k, length = cfg.num_samples, cfg.max_new_tokens
  if run.layout["shared_prefix"]:
    batch = update.SharedBatch(
        tokens.astype(np.int32), mask.astype(bool),
        out.tokens.astype(np.int32), out.mask.astype(bool),
        out.logprobs.astype(np.float32), adv.astype(np.float32))
  else:
    batch = update.RolloutBatch(
        tokens_ST=np.concatenate([np.repeat(tokens, k, 0),
                                  out.tokens.reshape(-1, length)], 1),
        attn_ST=np.concatenate([np.repeat(mask, k, 0),
                                out.mask.reshape(-1, length)], 1),
        mask_SL=out.mask.reshape(-1, length),
        old_logp_SL=out.logprobs.reshape(-1, length),
        adv_S=adv.reshape(-1).astype(np.float32))
    if cfg.packing:
      batch = packing.packed_batch(batch, cfg.num_minibatches,
                                   cfg.num_microbatches, run.mesh)
  batch = sharding.host_local_to_global(run.mesh, batch)
  params, opt_state, upd = run.update_fn(params, opt_state, batch)
  upd = {name: float(distributed.host_value(v)) for name, v in upd.items()}
  return params, opt_state, upd


def log_row(run: Run, rewards, labels, adv, out, upd, t_sample, t_update):
  """The step's metrics over the whole batch: rewards, labels and adv
  [B_all, N] already gathered from every process."""
  k = run.cfg.num_samples
  lengths = distributed.allgather(out.mask.sum(-1))
  judge = run.judge
  counts = distributed.allgather(np.array([[
      judge.counts["failed"] if judge else 0,
      judge.counts["wrong_count"] if judge else 0,
      sum(run.task.errors.values()) - run.task.errors["unparsed"],
      run.task.errors["timeout"], run.task.errors["unparsed"]]],
      np.float64))
  correct = rewards >= 0.5
  n_tok = int(lengths.sum())
  return {
      "reward_mean": float(rewards.mean()),
      "pass@1": float(correct.mean()),
      f"pass@{k}": float(correct.any(1).mean()),
      "distinct_correct": float(metrics.distinct_correct(labels,
                                                         correct).mean()),
      "frac_zero_adv": float((np.abs(adv).max(1) == 0).mean()),
      "response_length": float(lengths.mean()),
      "sample_tok_s": n_tok / max(t_sample, 1e-9),
      "update_tok_s": n_tok / max(t_update, 1e-9),
      "judge_failed": float(counts[:, 0].sum()),
      "judge_wrong_count": float(counts[:, 1].sum()),
      "task_errors": float(counts[:, 2].sum()),
      "task_timeouts": float(counts[:, 3].sum()),
      "unparsed_total": float(counts[:, 4].sum()),  # No readable answer.
      **upd,
  }


def stop_check(stop, where: str):
  """A `rollout` stop_check: every process raises `Preempted` together
  once any was asked to stop (a collective: call it where all do)."""
  def check():
    if stop is not None and distributed.any_process(stop.requested):
      stop.requested = True  # Another process's request stops this one.
      stop.check(where)
  return check


def run_eval(run: Run, params, sets: dict, stop=None,
             where: str = "") -> dict:
  """{set name: metrics row} over the held-out sets (stopped between
  rollout chunks by a stop request)."""
  cfg = run.cfg
  out = {}
  for name, prompts in sets.items():
    ev = evaluation.evaluate(run.model(params), run.tok, run.task, prompts,
                             num_samples=cfg.eval_samples,
                             max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, seed=cfg.seed,
                             mesh=run.mesh, compute_dtype=cfg.model.dtype,
                             batch_prompts=cfg.rollout.chunk_prompts or 64,
                             stop_check=stop_check(stop, where),
                             samples_field="config.eval_samples",
                             rollout_options=settings.config_options(cfg))
    out[name] = evaluation.metrics_row(ev, cfg.eval_samples)
  return out


def log_eval(log, step: int, results: dict) -> None:
  """The held-out split logs as eval/...; a named set as eval/<name>/..."""
  for name, row in results.items():
    log.write(step, row, prefix="eval" if name == "heldout"
              else f"eval/{name}")


def train(cfg) -> dict:
  """Run (or resume) RL training; returns the final summary.

  Start-up runs in stages that every process agrees on
  (`distributed.fail_together`): an error on any host (config, lock,
  unshared workdir, data, base policy, judge health check) stops every
  process with the same one-line message. SIGTERM stops the run after the
  current step, with a checkpoint, so the same command resumes it."""
  lock = distributed.WorkdirLock(cfg.workdir, cfg.lock_timeout_s)
  try:
    given = cfg
    with distributed.fail_together("config and workdir lock") as box:
      cfg = resolve_config(given)
      config_checks.check_config(cfg)
      storage.makedirs(cfg.workdir)
      lock.acquire()
      if distributed.is_main():
        box["value"] = distributed.write_nonce(cfg.workdir)
    with distributed.fail_together("workdir, data and judge"):
      distributed.shared_workdir_check(cfg.workdir, box["all"][0])
      check_workdir(given)
      task = tasks.get(cfg.task.name, **dict(cfg.task.options))
      config_checks.check_labels(cfg, task)
      judge = make_judge(cfg)
    compile_cache.enable(cfg.compilation_cache_dir, cfg.workdir,
                         say=print if distributed.is_main() else
                         (lambda _: None))
    with distributed.StopRequest() as stop:
      return _train(cfg, task, judge, stop, identity(given))
  finally:
    lock.release()


Preempted = distributed.Stopped  # (Kept under its old name.)


def _train(cfg, task, judge, stop, ident: dict) -> dict:
  progress = cfg.get("progress", True) and distributed.is_main()
  run, params, opt_state = setup(cfg, progress, task, judge, stop)
  # The run's identity is written once start-up has passed: a start that
  # fails (a typo in base_policy) leaves nothing that blocks its fix.
  _write_json(ident, storage.join(cfg.workdir, "config.json"))
  ckpts = checkpointing.TrainCheckpoints(cfg.workdir, cfg.keep_checkpoints,
                                         identity=ident)
  say = print if distributed.is_main() else (lambda *_: None)
  start, params, opt_state = ckpts.restore_latest(params, opt_state, say)
  if start:
    say(f"resumed from {ckpts.dir} at step {start}")
  log = MetricsWriter(cfg.workdir, start, cfg.steps, say)
  heldout = run.task.eval_sets(cfg.seed, cfg.eval_prompts)

  base_eval_path = storage.join(cfg.workdir, "base_eval.json")
  base_eval = None
  if heldout:
    # Every process sees the same shared file, so all skip or all evaluate.
    if storage.exists(base_eval_path):
      base_eval = storage.read_json(
          base_eval_path, "delete it to evaluate the base policy again "
          "(only before the first checkpoint: later, delete the workdir)")
    else:
      base_eval = run_eval(run, params, heldout, stop,
                           "during the base policy's evaluation")
      _write_json(base_eval, base_eval_path)
    distributed.barrier("base_eval")
  if heldout and cfg.eval_every and start % cfg.eval_every == 0 and \
      0 < start < cfg.steps and distributed.any_process(
          distributed.is_main() and start not in log.eval_steps):
    # A stop cut the evaluation at this step short: redo it.
    log_eval(log, start, run_eval(run, params, heldout, stop,
                                  f"during the evaluation at step {start}"))

  nan_run = 0
  watch = JudgeWatch(cfg.judge.max_failed_fraction, cfg.judge.failure_window)
  zero_watch = step_watch.ZeroAdvantageWatch(cfg)
  bar = tqdm.trange(start, cfg.steps, desc=f"{cfg.algorithm}", initial=start,
                    total=cfg.steps, disable=not progress)
  for step in bar:
    t0 = time.perf_counter()
    unparsed_at_start = run.task.errors["unparsed"]
    prompts, tokens, mask = step_prompts(run, step)
    scorer = scoring.StepScorer(run.task, run.tok, run.judge, prompts)
    out = rollout_step(run, params, tokens, mask, step,
                       on_done=scorer.submit if cfg.rollout.score_while_decoding
                       else None)
    t_sample = time.perf_counter() - t0
    rewards, labels, valid, statuses = scorer.result(out)
    if run.judge is not None:
      run.judge.flush(f"step_{step:07d}")  # Shared cache: same labels on
      # resume.
    t_score = time.perf_counter()
    adv = advantages_step(run, rewards, labels, valid, step)
    t1 = time.perf_counter()
    params, opt_state, upd = update_step(run, params, opt_state, tokens, mask,
                                         out, adv)
    t2 = time.perf_counter()
    all_rewards, all_labels, all_adv = (distributed.allgather(x)
                                        for x in (rewards, labels, adv))
    row = log_row(run, all_rewards, all_labels, all_adv, out, upd, t_sample,
                  t2 - t1)
    row.update({"time/rollout_s": t_sample,
                "time/score_s": t_score - t0 - t_sample,
                "time/advantages_s": t1 - t_score, "time/update_s": t2 - t1,
                "time/step_s": t2 - t0})
    if run.judge is not None:
      row.update(watch.step(distributed.allgather(statuses[None]).sum(0),
                            step))
      reasons = run.judge.take_reasons()
      if reasons and distributed.is_main():
        say(f"step {step}: judge " + "; ".join(
            f"{kind} x{int(run.judge.counts[kind])} so far, first this "
            f"step: {why}" for kind, why in reasons.items()))
        storage.append_line(storage.join(cfg.workdir, "judge_failures.jsonl"),
                            {"step": step, **reasons})
    # This step's responses only (evaluations count in unparsed_total).
    unparsed = int(distributed.allgather(np.array(
        [[run.task.errors["unparsed"] - unparsed_at_start]])).sum())
    row["unparsed"] = float(unparsed)
    note = zero_watch.step(step, all_adv, all_rewards, all_labels, unparsed)
    if note:
      say(note)
    log.write(step, row)
    watch.check(step)  # Before this step's update is checkpointed.
    nan_run = nan_run + 1 if upd["skipped"] else 0
    if nan_run >= cfg.max_nan_steps:
      raise FloatingPointError(
          f"{nan_run} updates in a row had a non-finite loss, gradient or "
          "new weights "
          f"(last at step {step}); stopping (config.max_nan_steps)")
    bar.set_postfix(reward=f"{row['reward_mean']:.2f}",
                    distinct=f"{row['distinct_correct']:.2f}")
    done = step + 1
    stopping = distributed.any_process(stop.requested) and done < cfg.steps
    if cfg.eval_every and heldout and done % cfg.eval_every == 0 and \
        done < cfg.steps:
      try:
        log_eval(log, done, run_eval(run, params, heldout, stop,
                                     f"during the evaluation at step {done}"))
      except Preempted as e:  # Keep the step; its evaluation is redone.
        ckpts.save(done, params, opt_state)
        ckpts.close()
        log.close()
        raise Preempted(f"{e} (checkpoint of step {done} saved in "
                        f"{ckpts.dir}; its evaluation is redone on resume)",
                        e.signum) from None
    if done % cfg.ckpt_every == 0 or done == cfg.steps or stopping:
      ckpts.save(done, params, opt_state)
    if stopping:
      ckpts.close()
      log.close()
      raise Preempted(f"stopped by {stop.name} after step {done} "
                      f"(checkpoint saved in {ckpts.dir}); run the same "
                      "command to resume", stop.signum)
  ckpts.close()
  return finish(run, params, heldout, base_eval, log)


def finish(run: Run, params, heldout, base_eval, log) -> dict:
  """Final evaluation, the policy folder, the HF export and the summary."""
  cfg = run.cfg
  final = run_eval(run, params, heldout) if heldout else None
  if final is not None:
    log_eval(log, cfg.steps, final)
  log.close()
  model = run.model(params)
  policy_dir = checkpointing.save_policy(
      storage.join(cfg.workdir, "policy"), model, run.tok,
      meta={"algorithm": cfg.algorithm, "steps": cfg.steps, "eval": final,
            "task": tasks.identity(cfg.task.name, cfg.task.options)})
  hf_dir = None
  if cfg.export_hf:
    hf_dir = export.export_hf(model, run.tok,
                              storage.join(cfg.workdir, "policy_hf"),
                              dtype=cfg.export_dtype or None)
  first = lambda d: next(iter(d.values())) if d else None
  summary = {"base": first(base_eval), "trained": first(final),
             "eval_sets": {"base": base_eval, "trained": final},
             "workdir": cfg.workdir,
             "policy": policy_dir, "policy_hf": hf_dir,
             "algorithm": cfg.algorithm, "eval_samples": cfg.eval_samples,
             "metrics_gaps": log.gaps}
  _write_json(summary, storage.join(cfg.workdir, "summary.json"))
  return summary
