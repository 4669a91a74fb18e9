"""PNG figures of evaluations and training runs (matplotlib, Agg backend).

`plot_eval` overlays several policies' evaluations (the `eval.json` entries of
`python -m poly_epo.evaluate`); `plot_runs` overlays several runs' training
curves from their `metrics.jsonl`. Files are written under a temporary name
and renamed.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str) -> str:
  tmp = path + ".tmp.png"
  fig.tight_layout()
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _series(d: dict) -> tuple[list[int], list[float]]:
  """({k: v} with int or JSON string keys) -> (sorted ks, values)."""
  items = sorted((int(k), v) for k, v in d.items())
  return [k for k, _ in items], [v for _, v in items]


def plot_eval(reports: dict, out_dir: str) -> list[str]:
  """passk.png, majority.png, distinct.png, branching.png for
  {policy name: evaluation dict}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, ev in reports.items():
    ax.plot(*_series(ev["pass@k"]), label=name)
  ax.set(xscale="log", xlabel="k", ylabel="pass@k", title="held-out pass@k")
  ax.legend()
  paths.append(_save(fig, os.path.join(out_dir, "passk.png")))

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
  for name, ev in reports.items():
    a1.plot(*_series(ev["majority@k"]), marker="o", label=name)
    a2.plot(*_series(ev["vote_share@k"]), marker="o", label=name)
  a1.set(xscale="log", xlabel="k", ylabel="majority@k accuracy")
  a2.set(xscale="log", xlabel="k", ylabel="winning vote share")
  a1.legend()
  paths.append(_save(fig, os.path.join(out_dir, "majority.png")))

  fig, ax = plt.subplots(figsize=(5, 3.5))
  names = list(reports)
  ax.bar(range(len(names)), [reports[n]["distinct_correct"] for n in names],
         label="among correct")
  ax.scatter(range(len(names)), [reports[n]["distinct_all"] for n in names],
             color="k", zorder=3, label="among all")
  ax.set_xticks(range(len(names)), names, rotation=20)
  ax.set(ylabel="distinct strategies / prompt")
  ax.legend()
  paths.append(_save(fig, os.path.join(out_dir, "distinct.png")))

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, ev in reports.items():
    ax.plot(range(len(ev["branching"])), ev["branching"],
            label=f"{name} (first fork {ev['first_fork']:.1f})")
  ax.set(xlabel="position", ylabel="distinct prefixes",
         title="where the samples fork")
  ax.legend()
  paths.append(_save(fig, os.path.join(out_dir, "branching.png")))
  return paths


TRAIN_CURVES = ("train/reward_mean", "train/pass@1", "train/distinct_correct",
                "train/entropy", "eval/pass@1")


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no metrics.jsonl")
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # A torn last line of a killed run.
  return rows


def plot_runs(workdirs: list[str], out: str) -> str:
  """One PNG: reward, pass@1, distinct correct, entropy and held-out pass@k
  (every k the evaluations logged) over steps, one line per run."""
  runs = {os.path.basename(os.path.normpath(w)) or w: read_metrics(w)
          for w in workdirs}
  keys = list(TRAIN_CURVES)
  for rows in runs.values():
    for r in rows:
      keys += [k for k in r if k.startswith("eval/pass@") and k not in keys
               and k[len("eval/pass@"):].isdigit()]
  keys = [k for k in keys if any(k in r for rows in runs.values()
                                 for r in rows)]
  cols = 3
  rows_n = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n),
                           squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for name, rows in runs.items():
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax.plot(*zip(*pts), marker="." if key.startswith("eval") else None,
                label=name)
    ax.set(title=key, xlabel="step")
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  axes.flat[0].legend()
  return _save(fig, out)
