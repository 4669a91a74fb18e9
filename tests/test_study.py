"""poly_epo.study on a tiny budget: 2 algorithms, 1 seed, a few steps; killed
mid-way and started again, it finishes without redoing what was done."""

import json
import os
import subprocess
import sys

from test_trainer import ROOT, kill_when_exists


def _cmd(out):
  return [sys.executable, "-m", "poly_epo.study",
          f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}",
          "--seeds=1", "--algorithms=polyepo,drgrpo", "--samples=8",
          f"--out={out}", "--config.pretrain.steps=30",
          "--config.pretrain.batch_size=64", "--config.pretrain.eval_prompts=2",
          "--config.pretrain.eval_samples=2", "--config.steps=6",
          "--config.prompts_per_step=8", "--config.ckpt_every=2",
          "--config.eval_every=0", "--config.eval_prompts=4",
          "--config.eval_samples=4", "--config.progress=False"]


def test_study_writes_outputs_and_resumes_after_a_kill(tmp_path):
  out = str(tmp_path / "study")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  kill_when_exists(_cmd(out), env,
                   os.path.join(out, "seed0", "polyepo", "checkpoints", "2"),
                   "its first checkpoint")
  assert not os.path.exists(os.path.join(out, "study.json"))
  base_mtime = os.path.getmtime(os.path.join(out, "seed0", "base",
                                             "meta.json"))
  res = subprocess.run(_cmd(out), env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  assert os.path.getmtime(os.path.join(out, "seed0", "base",
                                       "meta.json")) == base_mtime
  data = json.load(open(os.path.join(out, "study.json")))
  assert set(data["aggregate"]) == {"base", "polyepo", "drgrpo"}
  row = data["aggregate"]["polyepo"]["pass@1"]
  assert len(row["per_seed"]) == 1 and row["std"] == 0.0
  assert "| polyepo |" in open(os.path.join(out, "study.md")).read()
  for name in ("passk.png", "majority.png", "distinct.png", "branching.png",
               "curves.png"):
    assert os.path.getsize(os.path.join(out, "plots", name)) > 1000
  # The resumed run's metrics cover every step once.
  steps = [json.loads(l)["step"] for l in open(os.path.join(
      out, "seed0", "polyepo", "metrics.jsonl")) if "train/loss" in l]
  assert steps == list(range(6))


def _report(curve, distinct):
  """A minimal eval.json policy entry: pass@k for k = 1..len(curve)."""
  m = len(curve)
  return {"pass@k": {str(k): curve[k - 1] for k in range(1, m + 1)},
          "majority@k": {"1": 0.0}, "vote_share@k": {"1": 1.0},
          "distinct_correct": distinct, "distinct_all": distinct,
          "branching": [1.0], "first_fork": 1.0, "any_correct": 1.0}


def test_ambitions_read_the_seed_means():
  """Two seeds, m = 32: Poly-EPO's mean curve is above the base's from k=16
  on only in seed means (seed 1 alone dips below at k=32), its distinct
  count is 2x Dr.GRPO's; GRPO ends below the base, Dr.GRPO does not."""
  from poly_epo import study
  ramp = lambda lo, hi: [lo + (hi - lo) * (k - 1) / 31 for k in range(1, 33)]
  seeds = []
  for poly_end in (0.98, 0.94):
    seeds.append({"samples": 32, "policies": {
        "base": _report(ramp(0.2, 0.95), 2.0),
        "polyepo/policy": _report(ramp(0.3, poly_end), 2.2),
        "drgrpo/policy": _report(ramp(0.3, 0.96), 1.1),
        "grpo/policy": _report(ramp(0.3, 0.90), 1.0)}})
  amb = study.ambitions(seeds)
  assert amb["pass1_rises"]["met"]
  assert amb["coverage_kept"]["met"]  # Mean end 0.96 >= 0.95.
  assert abs(amb["coverage_kept"]["gap_at_m"] - 0.01) < 1e-9
  assert amb["distinct_vs_base"]["met"]
  assert abs(amb["distinct_vs_drgrpo"]["ratio"] - 2.2 / 1.1) < 1e-9
  assert amb["distinct_vs_drgrpo"]["met"]
  assert not amb["baselines_below_base"]["met"]  # Dr.GRPO 0.96 > 0.95.
  # One seed alone: seed 1's Poly-EPO ends at 0.94 < 0.95.
  assert not study.ambitions(seeds[1:])["coverage_kept"]["met"]
  assert "coverage_kept: met" in study.ambitions_markdown(amb)


def test_no_successful_strategy_is_not_an_ambition_met():
  """A base and policies that never succeed (the SmolLM2 runs): 0 distinct
  against 0 is not "met" with an infinite ratio."""
  from poly_epo import study
  zero = [0.0] * 16
  amb = study.ambitions([{"samples": 16, "policies": {
      "base": _report(zero, 0.0), "polyepo/policy": _report(zero, 0.0),
      "drgrpo/policy": _report(zero, 0.0)}}])
  assert not amb["distinct_vs_base"]["met"]
  assert not amb["distinct_vs_drgrpo"]["met"]


def test_compare_prints_each_study_and_its_ambitions(tmp_path):
  from poly_epo import study
  ramp = lambda lo, hi: [lo + (hi - lo) * (k - 1) / 31 for k in range(1, 33)]
  per_seed = [{"samples": 32, "policies": {
      "base": _report(ramp(0.2, 0.95), 2.0),
      "polyepo/policy": _report(ramp(0.3, 0.90), 2.2)}}]
  folder = tmp_path / "study_x"
  folder.mkdir()
  (folder / "study.json").write_text(json.dumps(
      {"seeds": 1, "aggregate": study.aggregate(per_seed),
       "per_seed": per_seed}))
  text = study.compare_markdown([str(folder)])
  assert "| study_x | 1 | polyepo | 0.300 | " in text
  assert "study_x: 2 of 3 ambitions met (pass1_rises, distinct_vs_base)" \
      in text
  import pytest
  with pytest.raises(FileNotFoundError, match="no .*study.json"):
    study.compare_markdown([str(tmp_path)])
