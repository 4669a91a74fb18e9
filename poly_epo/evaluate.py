"""Held-out evaluation of a policy on a task: sample m per prompt, score, and
report pass@k, distinct correct strategies and the share of prompts solved."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from poly_epo import distributed, metrics, rollout
from poly_epo.labels import DEGENERATE
from poly_epo.tokenizer import decode_completions, encode_prompts


def score(task, prompts, texts):
  """(rewards float32 [P, N], labels int32 [P, N]) of N completions per
  prompt from the task's own reward and labels (DEGENERATE everywhere when
  the task defers its labels to a judge)."""
  rewards = np.array([[task.reward(p, r) for r in row]
                      for p, row in zip(prompts, texts)], np.float32)
  labels = []
  for p, row in zip(prompts, texts):
    row_labels = task.label(p, row)
    labels.append(row_labels if row_labels is not None
                  else [DEGENERATE] * len(row))
  return rewards, np.array(labels, np.int32)


def sample_and_score(model, tokenizer, task, prompts, *, num_samples: int,
                     max_new_tokens: int, temperature: float = 1.0,
                     seed: int = 0, batch_prompts: int = 64,
                     progress: bool = False, mesh=None,
                     compute_dtype: str | None = None) -> dict:
  """Completions, rewards [P, m] and labels [P, m] for `prompts`.

  Prompt i's samples are seeded by `fold_in(key(seed), i)`. On several
  processes each samples and scores its own block of prompts (padded to equal
  blocks, so every process makes the same sampler calls) and the rewards and
  labels are gathered; `texts` holds this process's completions only.
  """
  procs, me = jax.process_count(), jax.process_index()
  block = -(-len(prompts) // procs)
  mine = list(prompts[me * block:(me + 1) * block])
  n_mine = len(mine)
  share = mine + [mine[0] if mine else prompts[0]] * (block - n_mine)
  tokens, mask = encode_prompts(tokenizer, share, pad_to_multiple=8)
  if procs > 1:  # Every process needs the same prompt width.
    width = int(distributed.allgather(np.array([tokens.shape[1]])).max())
    tokens, mask = encode_prompts(tokenizer, share, width=width)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  out = rollout.rollout(
      graphdef, params, rest, tokens, mask,
      np.arange(me * block, me * block + block), rng=jax.random.key(seed),
      num_samples=num_samples, max_new_tokens=max_new_tokens,
      eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
      temperature=temperature, chunk_prompts=batch_prompts, mesh=mesh,
      compute_dtype=compute_dtype, progress=progress)
  texts = decode_completions(tokenizer, out.tokens, out.mask)[:n_mine]
  rewards, labels = score(task, mine, texts)
  if procs > 1:
    pad = block - n_mine
    rewards = distributed.allgather(np.pad(rewards, ((0, pad), (0, 0))))
    labels = distributed.allgather(np.pad(labels, ((0, pad), (0, 0))))
    keep = np.concatenate([np.arange(p * block, p * block + min(
        block, max(len(prompts) - p * block, 0))) for p in range(procs)])
    rewards, labels = rewards[keep], labels[keep]
  return {"texts": texts, "rewards": rewards, "labels": labels}


def evaluate(model, tokenizer, task, prompts, *, num_samples: int,
             max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
             progress: bool = False, mesh=None,
             compute_dtype: str | None = None,
             batch_prompts: int = 64) -> dict:
  """pass@k for k = 1, 2, 4, ..., m; mean distinct correct answers per prompt;
  share of prompts with any correct sample."""
  res = sample_and_score(model, tokenizer, task, prompts,
                         num_samples=num_samples,
                         max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed,
                         progress=progress, mesh=mesh,
                         compute_dtype=compute_dtype,
                         batch_prompts=batch_prompts)
  correct = res["rewards"] >= 0.5
  curve = metrics.pass_at_k_curve(correct)
  return {
      "pass@k": curve,
      "pass@1": curve[1],
      f"pass@{num_samples}": curve[num_samples],
      "distinct_correct": float(metrics.distinct_correct(res["labels"],
                                                         correct).mean()),
      "any_correct": float(correct.any(1).mean()),
      "reward_mean": float(res["rewards"].mean()),
      "samples": res,
  }
