"""`python -m poly_epo.study --task polynomial|multiplication --seeds 3
[--algorithms polyepo,drgrpo,grpo] [--samples 256] [--out <dir>]`
(or `--config configs/<exp>.py [--config.field=value ...]` instead of --task;
`--compare DIR [--compare DIR ...]` prints finished studies side by side)

The multi-seed comparison of DESIGN 3.6, in one command. Per seed: pretrain
the base policy once (seed s), train every algorithm from it (seed s), then
evaluate base and trained policies with m samples per held-out prompt
(`poly_epo.evaluation`). Writes `<out>/study.json` (every per-seed number and
mean / std over seeds), `<out>/study.md` (the table) and overlay plots
(`<out>/plots/`: mean pass@k, majority, distinct, branching; training
curves of seed 0). Resumable: a killed study started again skips what is
done and resumes a half-trained run from its checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np

from poly_epo import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_KS = (1, 16, 256)


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("study_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _done(path: str) -> bool:
  return os.path.exists(path)


def run_seed(cfg, seed: int, algorithms, out: str, samples: int,
             log=print) -> dict:
  """Pretrain (embedded tasks; a config with `base_policy`, e.g. a real
  model, starts every seed from it), train each algorithm, evaluate;
  returns the seed's eval.json."""
  from poly_epo import evaluation, pretrain, trainer
  d = os.path.join(out, f"seed{seed}")
  base_cfg = cfg.copy_and_resolve_references()
  base_cfg.seed, base_cfg.workdir = seed, d
  base = cfg.base_policy or os.path.join(d, "base")
  if not cfg.base_policy and not _done(base):
    t0 = time.perf_counter()
    pretrain.pretrain(base_cfg, progress=base_cfg.progress)
    log(f"seed {seed}: pretrained base in {time.perf_counter() - t0:.0f} s")
  policies = ["base"]
  for alg in algorithms:
    run = cfg.copy_and_resolve_references()
    run.seed, run.algorithm = seed, alg
    run.workdir, run.base_policy = os.path.join(d, alg), base
    if not _done(os.path.join(run.workdir, "summary.json")):
      t0 = time.perf_counter()
      trainer.train(run)
      log(f"seed {seed}: trained {alg} in {time.perf_counter() - t0:.0f} s")
    policies.append(os.path.join(run.workdir, "policy"))
  ev_path = os.path.join(d, "eval", "eval.json")
  if _done(ev_path):
    ev = storage.read_json(ev_path, "delete it: the evaluation is redone")
    if ev.get("samples") == samples and len(ev["policies"]) == len(policies):
      return ev
  t0 = time.perf_counter()
  ev = evaluation.evaluate_policies(base_cfg, policies, samples=samples,
                                    prompts=cfg.eval_prompts,
                                    out=os.path.join(d, "eval"),
                                    progress=base_cfg.progress)
  log(f"seed {seed}: evaluated {len(policies)} policies in "
      f"{time.perf_counter() - t0:.0f} s")
  return ev


def _short(name: str) -> str:
  """"seed0/polyepo/policy"-style names -> the algorithm."""
  return name.split("/")[0] if "/" in name else name


def aggregate(per_seed: list[dict]) -> dict:
  """{policy: {metric: {"mean", "std", "per_seed"}}} over seeds."""
  out: dict = {}
  for ev in per_seed:
    m = ev["samples"]
    for name, rep in ev["policies"].items():
      row = out.setdefault(_short(name), {})
      vals = {f"pass@{k}": rep["pass@k"][str(k)] for k in TABLE_KS if k <= m}
      vals.update({f"majority@{k}": v for k, v in rep["majority@k"].items()})
      vals.update({f"vote_share@{k}": v
                   for k, v in rep["vote_share@k"].items()})
      for key in ("distinct_correct", "distinct_all", "any_correct",
                  "first_fork", "top_strategy_share"):
        if key in rep:  # (top_strategy_share: evaluations since issue 16.)
          vals[key] = rep[key]
      for key, v in vals.items():
        row.setdefault(key, []).append(float(v))
  return {name: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                     "per_seed": v} for k, v in row.items()}
          for name, row in out.items()}


def mean_reports(per_seed: list[dict]) -> dict:
  """Seed-averaged evaluation dicts (for the overlay plots)."""
  out: dict = {}
  for ev in per_seed:
    for name, rep in ev["policies"].items():
      out.setdefault(_short(name), []).append(rep)
  avg = lambda ds: {k: float(np.mean([d[k] for d in ds])) for k in ds[0]}
  return {name: {"pass@k": avg([r["pass@k"] for r in reps]),
                 "majority@k": avg([r["majority@k"] for r in reps]),
                 "vote_share@k": avg([r["vote_share@k"] for r in reps]),
                 "distinct_correct": float(np.mean(
                     [r["distinct_correct"] for r in reps])),
                 "distinct_all": float(np.mean([r["distinct_all"]
                                                for r in reps])),
                 "branching": list(np.mean([r["branching"] for r in reps], 0)),
                 "first_fork": float(np.mean([r["first_fork"]
                                              for r in reps]))}
          for name, reps in out.items()}


def ambitions(per_seed: list[dict], large_k: int = 16) -> dict:
  """The demo's claims against the base policy, on seed means (issue 16):

  - pass1_rises: Poly-EPO's pass@1 above the base's;
  - coverage_kept: its pass@k at or above the base's for every k >= large_k
    (the worst gap and where);
  - distinct_vs_base: its distinct correct strategies at or above the
    base's; distinct_vs_drgrpo: at least 1.5x Dr.GRPO's;
  - baselines_below_base: GRPO's and Dr.GRPO's pass@m below the base's
    (claim (b)).
  Each entry: {"met": bool, ...numbers}; absent when a policy is missing."""
  reps = mean_reports(per_seed)
  out = {}
  base, poly = reps.get("base"), reps.get("polyepo")
  if not (base and poly):
    return out
  curve = lambda r: {int(k): v for k, v in r["pass@k"].items()}
  b, p = curve(base), curve(poly)
  m = max(b)
  out["pass1_rises"] = {"met": p[1] > b[1], "polyepo": p[1], "base": b[1]}
  gaps = {k: p[k] - b[k] for k in b if k >= large_k}
  if gaps:
    worst = min(gaps, key=gaps.get)
    out["coverage_kept"] = {"met": gaps[worst] >= 0, "worst_k": worst,
                            "worst_gap": gaps[worst],
                            "gap_at_m": gaps[m]}
  dp, db = poly["distinct_correct"], base["distinct_correct"]
  # No successful strategy at all is never "met" (0 / 0 is not a ratio).
  ratio = lambda a, b: a / b if b else (float("inf") if a else float("nan"))
  out["distinct_vs_base"] = {"met": dp > 0 and dp >= db, "polyepo": dp,
                             "base": db, "ratio": ratio(dp, db)}
  if "drgrpo" in reps:
    dd = reps["drgrpo"]["distinct_correct"]
    r = ratio(dp, dd)
    out["distinct_vs_drgrpo"] = {"met": dp > 0 and r >= 1.5, "ratio": r,
                                 "drgrpo": dd}
  below = {n: curve(reps[n])[m] for n in ("grpo", "drgrpo") if n in reps}
  if below:
    out["baselines_below_base"] = {
        "met": all(v < b[m] for v in below.values()), "k": m,
        "base": b[m], **below}
  return out


def ambitions_markdown(amb: dict) -> str:
  lines = []
  for name, a in amb.items():
    nums = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in a.items() if k != "met")
    lines.append(f"- {name}: {'met' if a['met'] else 'not met'} ({nums})")
  return "\n".join(lines) + ("\n" if lines else "")


def markdown(agg: dict, samples: int, task: str, seeds: int) -> str:
  ks = [k for k in TABLE_KS if k <= samples]
  cols = [f"pass@{k}" for k in ks] + [
      "distinct_correct", f"majority@{samples}", f"vote_share@{samples}",
      "first_fork"]
  head = ["policy"] + [c.replace("_", " ") for c in cols]
  lines = [f"{task}: held-out, {samples} samples per prompt, mean +- std "
           f"over {seeds} seed(s)", "",
           "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for name, row in agg.items():
    cells = [f"{row[c]['mean']:.3f} +- {row[c]['std']:.3f}" if c in row
             else "-" for c in cols]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def compare_markdown(folders) -> str:
  """The sensitivity table over finished studies (one row per study and
  policy: seed means of pass@1/16/256, distinct correct, the dominant
  strategy's share) and each study's ambitions met, recomputed from its
  per-seed evaluations (`python -m poly_epo.study --compare DIR ...`)."""
  cols = ("pass@1", "pass@16", "pass@256", "distinct_correct",
          "top_strategy_share")
  lines = ["| study | seeds | policy | " + " | ".join(
      c.replace("_", " ") for c in cols) + " |", "|" + "---|" * (3 +
                                                               len(cols))]
  notes = []
  for folder in folders:
    path = os.path.join(folder, "study.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"--compare {folder}: no {path}")
    res = storage.read_json(path, "run the study again to rewrite it")
    name = os.path.basename(os.path.normpath(folder))
    for policy, row in res["aggregate"].items():
      cells = [f"{row[c]['mean']:.3f}" if c in row else "-" for c in cols]
      lines.append(f"| {name} | {res['seeds']} | {policy} | " +
                   " | ".join(cells) + " |")
    amb = ambitions(res["per_seed"])
    met = [k for k, a in amb.items() if a["met"]]
    notes.append(f"- {name}: {len(met)} of {len(amb)} ambitions met"
                 + (f" ({', '.join(met)})" if met else ""))
  return "\n".join(lines + [""] + notes) + "\n"


def run_study(cfg, *, seeds: int, algorithms, out: str, samples: int,
              log=print) -> dict:
  from poly_epo import plots
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  per_seed = [run_seed(cfg, s, algorithms, out, samples, log)
              for s in range(seeds)]
  agg = aggregate(per_seed)
  amb = ambitions(per_seed)
  result = {"task": cfg.task.name, "seeds": seeds, "samples": samples,
            "algorithms": list(algorithms), "aggregate": agg,
            "ambitions": amb,
            "per_seed": per_seed,
            "wall_seconds_this_call": time.perf_counter() - t0}
  tmp = os.path.join(out, "study.json.tmp")
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, os.path.join(out, "study.json"))
  with open(os.path.join(out, "study.md"), "w") as f:
    f.write(markdown(agg, samples, cfg.task.name, seeds) + "\n" +
            ambitions_markdown(amb))
  plot_dir = os.path.join(out, "plots")
  plots.plot_eval(mean_reports(per_seed), plot_dir)
  plots.plot_runs([os.path.join(out, "seed0", a) for a in algorithms],
                  os.path.join(plot_dir, "curves.png"))
  return result


def main(argv):
  del argv
  from absl import flags, logging
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if f.compare:
    try:
      print(compare_markdown(f.compare))
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    return 0
  cfg = f.config
  if cfg is None:
    if not f.task:
      print("error: give --task polynomial|multiplication or --config",
            file=sys.stderr)
      return 2
    path = os.path.join(ROOT, "configs", f"{f.task}.py")
    if not os.path.exists(path):
      print(f"error: --task {f.task!r}: no {path}", file=sys.stderr)
      return 2
    cfg = load_config(path)
  algorithms = [a for a in f.algorithms.split(",") if a]
  from poly_epo import set_rl
  unknown = [a for a in algorithms if a not in set_rl.algorithm_names()]
  if unknown or f.seeds < 1:
    print(f"error: --algorithms: unknown {unknown}" if unknown else
          "error: --seeds must be >= 1", file=sys.stderr)
    return 2
  out = f.out or os.path.join("runs", f"study_{cfg.task.name}")
  samples = f.samples or (cfg.eval_samples if cfg.base_policy else 256)
  res = run_study(cfg, seeds=f.seeds, algorithms=algorithms, out=out,
                  samples=samples)
  print(markdown(res["aggregate"], samples, cfg.task.name, f.seeds))
  print(ambitions_markdown(res["ambitions"]))
  print(f"wrote {out}/study.json, {out}/study.md, {out}/plots/")
  return 0


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string("task", "", "polynomial | multiplication (uses "
                      "configs/<task>.py)")
  flags.DEFINE_integer("seeds", 3, "seeds 0..seeds-1")
  flags.DEFINE_string("algorithms", "polyepo,drgrpo,grpo,grpo_div,passk",
                      "comma-separated algorithms")
  flags.DEFINE_integer("samples", 0, "samples per held-out prompt (0: 256, "
                       "or config.eval_samples for a config with "
                       "base_policy, e.g. a real model)")
  flags.DEFINE_string("out", "", "output folder (default runs/study_<task>)")
  flags.DEFINE_multi_string("compare", [], "finished study folders: print "
                            "their sensitivity table and ambitions instead")
  from poly_epo.cli import parse_flags
  sys.exit(app.run(main, flags_parser=parse_flags))
