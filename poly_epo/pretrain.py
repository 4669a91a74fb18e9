"""`python -m poly_epo.pretrain --config configs/<task>.py`: the base policy.

Trains a tiny model from scratch on the task's corpus of broad, unrefined
attempts (next-token loss on the response and its EOS), saves it with its
tokenizer and config (`checkpointing.save_policy`) to
`<workdir>/base`, and prints held-out pass@1 / pass@m / distinct correct
answers, the starting point of RL. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from poly_epo import checkpointing, evaluation, storage, tasks
from poly_epo.logprobs import token_logprobs
from poly_epo.models import init_model, preset
from poly_epo.tokenizer import char_tokenizer

def encode_corpus(tokenizer, pairs, width: int | None = None):
  """(tokens int32 [E, W], loss_mask bool [E, W], attn_mask bool [E, W]):
  prompt + response + EOS, right-padded; the loss covers the response + EOS.
  Characters are looked up directly (the char tokenizer is 1 char = 1 id)."""
  vocab = tokenizer.get_vocab()
  unk = tokenizer.unk_token_id
  eos = tokenizer.eos_token_id
  rows, starts = [], []
  for i, (p, r) in enumerate(pairs):
    ids_p = [vocab.get(ch, unk) for ch in p]
    ids_r = [vocab.get(ch, unk) for ch in r] + [eos]
    rows.append(ids_p + ids_r)
    starts.append(len(ids_p))
  w = width or max(len(r) for r in rows)
  tokens = np.full((len(rows), w), tokenizer.pad_token_id, np.int32)
  loss_mask = np.zeros((len(rows), w), bool)
  attn = np.zeros((len(rows), w), bool)
  for i, (row, s) in enumerate(zip(rows, starts)):
    if len(row) > w:
      raise ValueError(f"corpus example {i} has {len(row)} tokens > width {w}")
    tokens[i, :len(row)] = row
    attn[i, :len(row)] = True
    loss_mask[i, s:len(row)] = True
  return tokens, loss_mask, attn


def make_train_step(graphdef, tx):
  """One jitted AdamW step on next-token cross-entropy over `loss_mask`."""

  def loss_fn(params, tokens, loss_mask, attn):
    model = nnx.merge(graphdef, params)
    logits = model(tokens[:, :-1], None, attn[:, :-1])
    nll = -token_logprobs(logits, tokens[:, 1:])
    m = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)

  @jax.jit
  def step(params, opt_state, tokens, loss_mask, attn):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, loss_mask, attn)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _state_path(cfg) -> str:
  return storage.join(cfg.workdir, "base_pretrain_state.npz")


def _save_state(path: str, step: int, params, opt_state) -> None:
  """Pretraining's own checkpoint (a stop request mid-way): every leaf of
  (params, opt_state) and the step, in one atomic .npz."""
  buf = io.BytesIO()
  leaves = jax.tree.leaves((params, opt_state))
  np.savez(buf, step=np.int64(step),
           **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
  storage.makedirs(os.path.dirname(path))
  storage.write_bytes(path, buf.getvalue())


def _load_state(path: str, params, opt_state):
  """(step, params, opt_state) from `_save_state`; (0, ...) unchanged when
  there is none. A file that does not fit this pretraining (another
  config, damaged) is a ValueError naming it."""
  if not storage.exists(path):
    return 0, params, opt_state
  leaves, treedef = jax.tree.flatten((params, opt_state))
  try:
    with np.load(io.BytesIO(storage.read_bytes(path))) as f:
      step = int(f["step"])
      new = [f[f"leaf{i}"] for i in range(len(leaves))]
  except Exception as e:  # noqa: BLE001 - zip, key or format errors.
    raise ValueError(f"{path}: not this pretraining's saved state ({e}); "
                     "delete it to pretrain from the start") from None
  if any(a.shape != np.shape(b) for a, b in zip(new, leaves)):
    raise ValueError(f"{path}: saved for another model; delete it to "
                     "pretrain from the start")
  params, opt_state = jax.tree.unflatten(
      treedef, [jnp.asarray(a, dtype=jnp.asarray(b).dtype)
                for a, b in zip(new, leaves)])
  return step, params, opt_state


def pretrain(cfg, progress: bool = True, stop=None) -> dict:
  """Train, save and evaluate the base policy; returns a summary dict.

  A stop request (`distributed.StopRequest`: SIGTERM, SIGINT) is honoured
  between steps: the state is saved to `<workdir>/base_pretrain_state.npz`
  and `distributed.Stopped` raised; the same command resumes from it (the
  batches are indexed by step, so the result is the same)."""
  pc = cfg.pretrain
  task = tasks.get(cfg.task.name, **dict(cfg.task.options))
  if not task.embedded:
    raise ValueError(f"config.task.name={cfg.task.name!r} is not an embedded "
                     "task; pretraining needs a generated corpus")
  for field in ("steps", "batch_size"):
    if pc[field] < 1:
      raise ValueError(f"config.pretrain.{field}={pc[field]} must be >= 1")
  t_start = time.perf_counter()
  tokenizer = char_tokenizer(task.alphabet)
  model = init_model(preset(cfg.model.preset, vocab_size=len(tokenizer)),
                     seed=cfg.seed)
  pairs = task.corpus(cfg.seed, pc.steps * pc.batch_size)
  tokens, loss_mask, attn = encode_corpus(tokenizer, pairs)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, pc.lr, max(1, pc.steps // 20), pc.steps, pc.lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=pc.weight_decay))
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = tx.init(params)
  step = make_train_step(graphdef, tx)
  state_path = _state_path(cfg)
  first, params, opt_state = _load_state(state_path, params, opt_state)
  if first:
    print(f"pretraining resumes at step {first} ({state_path})")
  bar = tqdm.trange(first, pc.steps, desc="pretrain", disable=not progress,
                    initial=first, total=pc.steps)
  losses = []

  def stop_here(i, where):  # Save steps [0, i), then stop, if asked to.
    if stop is not None and stop.requested:
      _save_state(state_path, i, params, opt_state)
      stop.check(where)
  for i in bar:
    stop_here(i, f"while pretraining the base policy, at step {i} of "
              f"{pc.steps} (saved {state_path})")
    sl = slice(i * pc.batch_size, (i + 1) * pc.batch_size)
    params, opt_state, loss = step(params, opt_state, tokens[sl],
                                   loss_mask[sl], attn[sl])
    if i % 50 == 0 or i == pc.steps - 1:
      losses.append(float(loss))
      bar.set_postfix(loss=f"{losses[-1]:.3f}")
  model = nnx.merge(graphdef, params)
  train_seconds = time.perf_counter() - t_start
  prompts = task.heldout_prompts(cfg.seed, pc.eval_prompts)
  ev = evaluation.evaluate(model, tokenizer, task, prompts,
                           num_samples=pc.eval_samples,
                           max_new_tokens=cfg.max_new_tokens,
                           temperature=1.0, seed=cfg.seed, progress=progress,
                           stop_check=lambda: stop_here(
                               pc.steps, "while evaluating the pretrained "
                               f"base policy (its training is saved in "
                               f"{state_path})"))
  m = pc.eval_samples
  summary = {"task": cfg.task.name, "params": model.cfg.num_params,
             "steps": pc.steps,
             "final_loss": losses[-1] if losses else float("nan"),
             "train_seconds": train_seconds,
             "heldout_pass@1": ev["pass@1"], f"heldout_pass@{m}": ev[f"pass@{m}"],
             "heldout_distinct_correct": ev["distinct_correct"],
             "heldout_top_strategy_share": ev["top_strategy_share"],
             "heldout_strategy_shares": ev.get("strategy_shares"),
             "heldout_pass@k": {str(k): v for k, v in ev["pass@k"].items()},
             "eval_prompts": pc.eval_prompts, "eval_samples": m}
  meta = dict(summary, task=tasks.identity(cfg.task.name, cfg.task.options))
  path = checkpointing.save_policy(storage.join(cfg.workdir, "base"), model,
                                   tokenizer, meta=meta)
  summary["path"] = path
  if storage.exists(state_path):
    storage.remove(state_path)
  summary["total_seconds"] = time.perf_counter() - t_start
  return summary


def strategy_line(summary: dict) -> str:
  """The base's own strategy distribution, in one line."""
  shares = summary.get("heldout_strategy_shares")
  return (f"strategies: the dominant one's share per prompt "
          f"{summary['heldout_top_strategy_share']:.3f}" + (
              "; shares " + json.dumps({k: round(v, 3)
                                        for k, v in shares.items()})
              if shares else ""))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  cfg = flags.FLAGS.config
  if cfg is None:
    raise app.UsageError("--config=configs/<task>.py is required")
  from poly_epo import distributed
  lock = distributed.WorkdirLock(cfg.workdir, cfg.lock_timeout_s)
  try:
    storage.makedirs(cfg.workdir)
    lock.acquire()  # A live run's base policy is never replaced under it.
    with distributed.StopRequest() as stop:
      s = pretrain(cfg, stop=stop)
  except (ValueError, OSError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return distributed.exit_code(e)
  finally:
    lock.release()
  m = s["eval_samples"]
  print(f"base policy for {s['task']}: {s['params'] / 1e6:.2f}M params, "
        f"{s['steps']} steps, final loss {s['final_loss']:.3f}, "
        f"{s['total_seconds']:.0f} s")
  print(f"held-out ({s['eval_prompts']} prompts x {m} samples): "
        f"pass@1 {s['heldout_pass@1']:.3f}  pass@{m} {s[f'heldout_pass@{m}']:.3f}"
        f"  distinct correct answers {s['heldout_distinct_correct']:.2f}")
  print(strategy_line(s))
  print("pass@k: " + json.dumps({k: round(v, 3)
                                  for k, v in s["heldout_pass@k"].items()
                                  if int(k) & (int(k) - 1) == 0 or
                                  int(k) == m}))
  print(f"saved {s['path']}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py).",
      lock_config=True)
  from poly_epo.cli import parse_flags
  sys.exit(app.run(main, flags_parser=parse_flags))
