"""Held-out evaluation (DESIGN 3.6), the library below the training loop:
sample m per prompt, score, and report the whole pass@k curve, majority@k
and vote share, distinct strategies, branching; evaluate saved policies
into eval.json and overlay plots (`evaluate_policies`); an evaluation as a
metrics row and the run summary's table. The command line is
`poly_epo/evaluate.py` (`python -m poly_epo.evaluate`)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from poly_epo import autoscale, distributed, metrics, rollout, storage
from poly_epo.engine import settings
from poly_epo.labels import DEGENERATE
from poly_epo.tokenizer import decode_completions, encode_prompts


def score(task, prompts, texts):
  """(rewards float32 [P, N], labels int32 [P, N]) of N completions per
  prompt from the task's own reward and labels (DEGENERATE everywhere when
  the task defers its labels to a judge)."""
  rewards = task.rewards(prompts, texts)
  labels = []
  for p, row in zip(prompts, texts):
    row_labels = task.label(p, row)
    labels.append(row_labels if row_labels is not None
                  else [DEGENERATE] * len(row))
  return rewards, np.array(labels, np.int32)


def _memory() -> int | None:
  """Bytes an evaluation can see: all devices' memory, else the host's."""
  per = autoscale.device_memory(jax.devices())
  return per * jax.device_count() if per else autoscale.host_memory()


def sample_and_score(model, tokenizer, task, prompts, *, num_samples: int,
                     max_new_tokens: int, temperature: float = 1.0,
                     seed: int = 0, batch_prompts: int = 64,
                     progress: bool = False, mesh=None,
                     compute_dtype: str | None = None, judge=None,
                     stop_check=None, samples_field: str = "num_samples",
                     rollout_options: dict | None = None) -> dict:
  """Completions, rewards [P, m] and labels [P, m] for `prompts` (labels
  from `judge` when given, else the task's own). `stop_check()` runs before
  each rollout chunk (it raises to stop: SIGTERM/SIGINT during evaluation).
  The prompts are sampled in chunks of at most `batch_prompts` that fit the
  memory in sight (the devices', or the host's on CPU:
  `autoscale.evaluation_rollouts`); a request that can never fit is a
  ValueError naming `samples_field` and the most samples that would.
  `rollout_options`: the rollout's settings (`engine.settings.make`
  keywords: a run's `settings.config_options(cfg)`, as the trainer and
  `evaluate` pass); None: the evaluation's own, the static engine with the
  window kernel and no top-k / top-p truncation. `temperature` and the
  chunk (`batch_prompts`) are the evaluation's either way.

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
  chat = getattr(task, "chat_template", "none") == "auto"
  tokens, mask = encode_prompts(tokenizer, share, pad_to_multiple=8, chat=chat)
  if procs > 1:  # Every process needs the same prompt width.
    width = int(distributed.allgather(np.array([tokens.shape[1]])).max())
    tokens, mask = encode_prompts(tokenizer, share, width=width, chat=chat)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fit = autoscale.evaluation_rollouts(
      model.cfg, len(prompts), num_samples, tokens.shape[1], max_new_tokens,
      _memory(), samples_field)
  if fit is not None and fit < batch_prompts:
    batch_prompts = max(procs, fit // procs * procs)
  rollout_settings = settings.make(**{
      **(rollout_options or {}), "num_samples": num_samples,
      "max_new_tokens": max_new_tokens, "eos_id": tokenizer.eos_token_id,
      "pad_id": tokenizer.pad_token_id, "temperature": temperature,
      "chunk_prompts": batch_prompts, "platform": settings.platform_of(mesh)})
  out = rollout.rollout(
      graphdef, params, rest, tokens, mask,
      np.arange(me * block, me * block + block), rng=jax.random.key(seed),
      settings=rollout_settings, mesh=mesh, compute_dtype=compute_dtype,
      progress=progress, stop_check=stop_check)
  texts = decode_completions(tokenizer, out.tokens, out.mask)[:n_mine]
  rewards, labels = score(task, mine, texts)
  if judge is not None:
    labels = np.array([r.labels for r in judge.cluster_many(mine, texts)],
                      np.int32)
  ks = vote_ks(num_samples)
  answers = [task.group_answers(p, [task.answer(p, r) for r in row])
             for p, row in zip(mine, texts)]
  votes = np.array([[metrics.majority_vote([a], [r >= 0.5], k) for k in ks]
                    for a, r in zip(answers, rewards)], np.float64)
  branch = np.array([metrics.branching(out.tokens[i], out.mask[i])
                     for i in range(n_mine)], np.float64)
  per_prompt = {"rewards": rewards, "labels": labels,
                "votes": votes.reshape(n_mine, len(ks), 2),
                "branching": branch.reshape(n_mine, max_new_tokens)}
  if procs > 1:
    pad = block - n_mine
    keep = np.concatenate([np.arange(p * block, p * block + min(
        block, max(len(prompts) - p * block, 0))) for p in range(procs)])
    per_prompt = {k: distributed.allgather(np.pad(
        v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)))[keep]
        for k, v in per_prompt.items()}
  return {"texts": texts, "answers": answers, "tokens": out.tokens[:n_mine],
          "mask": out.mask[:n_mine], **per_prompt}


def vote_ks(m: int) -> list[int]:
  """k = 1, 2, 4, ..., m for majority voting."""
  return sorted({min(2**i, m) for i in range(m.bit_length())} | {m})


def evaluate(model, tokenizer, task, prompts, *, num_samples: int,
             max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
             progress: bool = False, mesh=None,
             compute_dtype: str | None = None,
             batch_prompts: int = 64, judge=None, stop_check=None,
             samples_field: str = "num_samples",
             rollout_options: dict | None = None) -> dict:
  """Every evaluation number of DESIGN 3.6 over `prompts`, m samples each.

  Returns pass@k for every k = 1..m ("pass@k", and "pass@1", "pass@m"),
  "num_correct" per prompt, majority@k accuracy and winning vote share for
  k = 1, 2, 4, ..., m (answers grouped by the task's canonical answer, ties
  to the first seen), distinct strategy labels among correct and among all
  responses, the dominant strategy's share per prompt
  ("top_strategy_share"; "strategy_shares" by name when the task's labels
  are named), the share of prompts with any correct response, branching
  (distinct token prefixes per position, mean over prompts) and the mean
  first fork position; "samples" holds this process's completions.
  """
  res = sample_and_score(model, tokenizer, task, prompts,
                         num_samples=num_samples,
                         max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed,
                         progress=progress, mesh=mesh,
                         compute_dtype=compute_dtype,
                         batch_prompts=batch_prompts, judge=judge,
                         stop_check=stop_check, samples_field=samples_field,
                         rollout_options=rollout_options)
  out = summarize(res, num_samples)
  names = getattr(task, "label_names", None)
  if names and judge is None:  # Task labels that mean the same everywhere.
    out["strategy_shares"] = strategy_shares(res["labels"], names)
  return out


def strategy_shares(labels_PM, names) -> dict:
  """{strategy name: share of all responses}, "degenerate" for the rest."""
  labels = np.asarray(labels_PM).ravel()
  shares = {n: float(np.mean(labels == i)) for i, n in enumerate(names)}
  shares["degenerate"] = float(np.mean((labels < 0) | (labels >= len(names))))
  return shares


def summarize(res: dict, m: int) -> dict:
  """The metrics of `evaluate` from `sample_and_score`'s output."""
  correct = res["rewards"] >= 0.5
  curve = metrics.pass_at_k_curve(correct, ks=range(1, m + 1))
  ks = vote_ks(m)
  votes = res["votes"].mean(0)  # [k, (accuracy, share)]
  branch = res["branching"]
  forks = [metrics.first_fork(row) for row in branch]
  all_labels = np.where(res["labels"] >= 0, res["labels"], -1)
  return {
      "pass@k": curve,
      "pass@1": curve[1],
      f"pass@{m}": curve[m],
      "num_correct": [int(c) for c in correct.sum(1)],
      "majority@k": {k: float(v) for k, v in zip(ks, votes[:, 0])},
      "vote_share@k": {k: float(v) for k, v in zip(ks, votes[:, 1])},
      "distinct_correct": float(metrics.distinct_correct(res["labels"],
                                                         correct).mean()),
      "distinct_all": float(metrics.distinct_correct(
          all_labels, np.ones_like(correct)).mean()),
      "any_correct": float(correct.any(1).mean()),
      "top_strategy_share": metrics.top_label_share(res["labels"]),
      "reward_mean": float(res["rewards"].mean()),
      "branching": [float(x) for x in branch.mean(0)],
      "first_fork": float(np.mean(forks)) if forks else 0.0,
      "samples": res,
  }


# ---- Saved policies (`python -m poly_epo.evaluate`) ----

def policy_name(path: str) -> str:
  """"base", or the run's name for <workdir>/policy, else the folder name."""
  path = os.path.normpath(path)
  if os.path.basename(path) in ("policy", "base", "policy_hf"):
    return f"{os.path.basename(os.path.dirname(path))}/" \
        f"{os.path.basename(path)}"
  return os.path.basename(path)


def check_task(meta: dict, cfg, where: str) -> None:
  """Refuse a policy whose metadata records another task than `cfg`'s."""
  from poly_epo import tasks
  theirs = meta.get("task")
  mine = tasks.identity(cfg.task.name, cfg.task.options)
  if not theirs or theirs == mine:
    return
  if theirs.get("name") != mine["name"]:
    what = f"task {theirs.get('name')!r}, not {mine['name']!r}"
  else:
    keys = sorted(k for k in set(theirs["options"]) | set(mine["options"])
                  if theirs["options"].get(k) != mine["options"].get(k))
    what = f"task {mine['name']!r} with other options ({', '.join(keys)})"
  raise ValueError(f"{where} was trained on {what}; evaluate it with its own "
                   "config, or pass --allow_task_mismatch")


def evaluate_policies(cfg, policies, *, samples: int, prompts: int, out: str,
                      progress: bool = True,
                      allow_task_mismatch: bool = False) -> dict:
  """Evaluate each policy on the task's held-out prompts (for `math` with
  named `eval_sets`, each set on its own under `out/<set>/`); write
  eval.json and the overlay PNGs; return the (first set's) eval.json
  content (JSON types: string keys for k). Strategy labels come from the
  config's judge when it has one, else from the task."""
  from poly_epo import checkpointing, tasks
  from poly_epo.convert import policy_path
  from poly_epo.judges.factory import make_judge
  from poly_epo.run_config import flat_config
  task = tasks.get(cfg.task.name, **dict(cfg.task.options))
  if samples < 1:
    raise ValueError(f"--samples={samples}: must be >= 1")
  sets = task.eval_sets(cfg.seed, prompts) or {
      "heldout": task.heldout_prompts(cfg.seed, prompts)}
  for name, heldout in sets.items():
    if not heldout:
      raise ValueError(
          f"the held-out set {name!r} is empty: set --prompts or "
          "config.eval_prompts >= 1, or give config.task.options.eval_sets "
          "files with problems")
  judge = make_judge(cfg) if cfg.judge.kind != "task" else None
  options = settings.config_options(cfg)
  if progress:  # Which sampling and rollout settings these numbers come from.
    print("evaluation rollouts: the run config's rollout.* and sampling "
          "settings: " + ", ".join(f"{k}={v}" for k, v in options.items()),
          flush=True)
  loaded = {}
  for spec in policies:
    path = (policy_path(cfg.base_policy) or
            storage.join(cfg.workdir, "base")) \
        if spec == "base" else spec
    if not storage.isdir(path):
      raise FileNotFoundError(f"--policy {spec}: no folder {path!r}")
    loaded["base" if spec == "base" else policy_name(path)] = path
  results = {}
  for set_name, heldout in sets.items():
    reports, sources = {}, {}
    for name, path in loaded.items():
      model, tok, meta = checkpointing.load_any(path)
      if not allow_task_mismatch:
        check_task(meta, cfg, f"--policy {path}")
      ev = evaluate(model, tok, task, heldout, num_samples=samples,
                    samples_field="--samples",
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, seed=cfg.seed,
                    progress=progress, judge=judge, rollout_options=options)
      ev.pop("samples")
      reports[name] = ev
      sources[name] = {"path": storage.absolute(path),
                       "steps": meta.get("steps")}
    result = {"config": flat_config(cfg), "task": cfg.task.name,
              "set": set_name, "prompts": len(heldout), "samples": samples,
              "policies": {n: {**sources[n], **reports[n]} for n in reports}}
    results[set_name] = _write_eval(
        result, out if len(sets) == 1 else storage.join(out, set_name))
  return next(iter(results.values()))


def _write_eval(result: dict, out: str) -> dict:
  """eval.json (atomically) and the overlay plots, on any storage (`gs://`
  included: the PNGs are drawn locally and copied up); the JSON as read
  back."""
  from poly_epo import plots
  storage.makedirs(out)
  storage.write_text(storage.join(out, "eval.json"),
                     json.dumps(result, indent=1))
  result = json.loads(json.dumps(result))
  with storage.staged(out) as stage:
    plots.plot_eval(result["policies"], stage)
  return result


def format_report(result: dict) -> str:
  m = result["samples"]
  ks = [k for k in (1, 16, m) if k <= m]
  ks = sorted(set(ks))
  head = f"{'policy':<24}" + "".join(f"{f'pass@{k}':>10}" for k in ks) + \
      f"{f'maj@{m}':>9}{f'share@{m}':>10}{'distinct':>9}{'fork':>7}"
  lines = [head]
  for name, ev in result["policies"].items():
    get = lambda d, k: d[str(k)]
    lines.append(
        f"{name:<24}" + "".join(f"{get(ev['pass@k'], k):>10.3f}" for k in ks)
        + f"{get(ev['majority@k'], m):>9.3f}"
        f"{get(ev['vote_share@k'], m):>10.3f}"
        f"{ev['distinct_correct']:>9.2f}{ev['first_fork']:>7.1f}")
  return "\n".join(lines)


def metrics_row(ev: dict, m: int) -> dict:
  """An evaluation as a metrics row: scalars (TensorBoard too) for pass@k,
  majority@k and vote share at k = 1, 2, 4, ..., m, and the whole pass@k
  curve, branching profile and correct counts as lists (JSONL only)."""
  row = {f"pass@{k}": ev["pass@k"][k] for k in vote_ks(m)}
  row.update({f"majority@{k}": v for k, v in ev["majority@k"].items()})
  row.update({f"vote_share@{k}": v for k, v in ev["vote_share@k"].items()})
  for key in ("distinct_correct", "distinct_all", "any_correct",
              "reward_mean", "first_fork", "top_strategy_share"):
    row[key] = ev[key]
  row["pass@k_curve"] = [ev["pass@k"][k] for k in range(1, m + 1)]
  row["branching"] = ev["branching"]
  row["num_correct"] = ev["num_correct"]
  return row


def format_summary(summary: dict) -> str:
  """A training run's summary.json as its base-vs-trained table."""
  m = summary["eval_samples"]
  lines = [f"{'held-out':<12} {'pass@1':>7} {f'pass@{m}':>8} "
           f"{'distinct correct':>17}"]
  for name, ev in (("base", summary["base"]),
                   (summary["algorithm"], summary["trained"])):
    if ev:
      lines.append(f"{name:<12} {ev['pass@1']:>7.3f} {ev[f'pass@{m}']:>8.3f} "
                   f"{ev['distinct_correct']:>17.2f}")
  return "\n".join(lines)
