"""Held-out evaluation of a policy on a task: sample m per prompt, score, and
report pass@k, distinct correct strategies and the share of prompts solved."""

from __future__ import annotations

import jax
import numpy as np
import tqdm

from poly_epo import metrics, sampling
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
                     progress: bool = False) -> dict:
  """Completions, rewards [P, m] and labels [P, m] for `prompts`."""
  texts = []
  chunks = range(0, len(prompts), batch_prompts)
  for start in tqdm.tqdm(chunks, desc="eval", disable=not progress,
                         leave=False):
    chunk = prompts[start:start + batch_prompts]
    tokens, mask = encode_prompts(tokenizer, chunk, pad_to_multiple=8)
    if len(chunk) < batch_prompts and len(prompts) > batch_prompts:
      pad = batch_prompts - len(chunk)  # Same shape for every chunk.
      tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]),
                                                tokens.dtype)])
      mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        np.arange(start, start + tokens.shape[0]))
    out = sampling.generate(model, tokens, mask, num_samples=num_samples,
                            max_new_tokens=max_new_tokens,
                            temperature=temperature,
                            eos_id=tokenizer.eos_token_id, rng=keys,
                            pad_id=tokenizer.pad_token_id)
    texts += decode_completions(tokenizer, out.tokens, out.mask)[:len(chunk)]
  rewards, labels = score(task, prompts, texts)
  return {"texts": texts, "rewards": rewards, "labels": labels}


def evaluate(model, tokenizer, task, prompts, *, num_samples: int,
             max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
             progress: bool = False) -> dict:
  """pass@k for k = 1, 2, 4, ..., m; mean distinct correct answers per prompt;
  share of prompts with any correct sample."""
  res = sample_and_score(model, tokenizer, task, prompts,
                         num_samples=num_samples,
                         max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed,
                         progress=progress)
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
