"""poly_epo.evaluate end to end: two tiny policies -> eval.json (every pass@k,
correct counts that reproduce the curve) and the overlay PNGs; the plot
command over two runs."""

import json
import os

import pytest

from poly_epo import evaluation, metrics, plot, rollout
from test_trainer import _config, tiny_base


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory):
  return [tiny_base(tmp_path_factory.mktemp(f"pol{seed}"), steps=30,
                    seed=seed) for seed in (0, 1)]


def test_evaluate_writes_eval_json_and_plots(two_policies, tmp_path,
                                            monkeypatch, capsys):
  cfg = _config(workdir=str(tmp_path / "w"), base_policy=two_policies[0])
  cfg.top_k, cfg.rollout.engine = 5, "continuous"
  seen = []  # The run's sampling and rollout settings reach the engine.
  real = rollout.rollout
  monkeypatch.setattr(rollout, "rollout", lambda *a, **k: (
      seen.append(k["settings"]), real(*a, **k))[1])
  res = evaluation.evaluate_policies(
      cfg, ["base", two_policies[1]], samples=8, prompts=5,
      out=str(tmp_path / "ev"), progress=True)
  assert seen and all(s.sampling.top_k == 5 and s.engine == "continuous"
                      for s in seen)
  assert "evaluation rollouts: the run config's" in capsys.readouterr().out
  data = json.load(open(tmp_path / "ev" / "eval.json"))
  assert data["samples"] == 8 and data["prompts"] == 5
  assert list(data["policies"]) == list(res["policies"]) == [
      "base", evaluation.policy_name(two_policies[1])]
  for ev in data["policies"].values():
    assert sorted(int(k) for k in ev["pass@k"]) == list(range(1, 9))
    assert len(ev["num_correct"]) == 5
    # The curve is recomputable from the counts.
    for k in (1, 3, 8):
      want = sum(metrics.pass_at_k(8, c, k) for c in ev["num_correct"]) / 5
      assert ev["pass@k"][str(k)] == pytest.approx(want)
    assert sorted(int(k) for k in ev["majority@k"]) == [1, 2, 4, 8]
    assert all(0 <= v <= 1 for v in ev["vote_share@k"].values())
    assert len(ev["branching"]) == cfg.max_new_tokens
    assert 0 <= ev["first_fork"] <= cfg.max_new_tokens
    assert ev["distinct_all"] >= ev["distinct_correct"]
  for name in ("passk.png", "majority.png", "distinct.png", "branching.png"):
    assert os.path.getsize(tmp_path / "ev" / name) > 1000
  assert "pass@8" in evaluation.format_report(data)
  with pytest.raises(FileNotFoundError, match="--policy"):
    evaluation.evaluate_policies(cfg, [str(tmp_path / "nope")], samples=2,
                               prompts=1, out=str(tmp_path / "ev2"))


def test_evaluation_checks_what_it_evaluates(two_policies, tmp_path):
  import subprocess
  import sys
  from test_trainer import ROOT
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "multcfg", os.path.join(ROOT, "configs", "multiplication.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mult = mod.get_config()
  with pytest.raises(ValueError, match=r"trained on task 'polynomial', not "
                     r"'multiplication'.*--allow_task_mismatch"):
    evaluation.evaluate_policies(mult, [two_policies[1]], samples=2, prompts=2,
                               out=str(tmp_path / "ev"), progress=False)
  cfg = _config(workdir=str(tmp_path / "w"))
  with pytest.raises(ValueError, match=r"held-out set 'heldout' is empty.*"
                     r"config\.eval_prompts"):
    evaluation.evaluate_policies(cfg, [two_policies[1]], samples=2, prompts=0,
                               out=str(tmp_path / "ev"), progress=False)
  with pytest.raises(ValueError, match=r"--samples=0: must be >= 1"):
    evaluation.evaluate_policies(cfg, [two_policies[1]], samples=0, prompts=2,
                               out=str(tmp_path / "ev"), progress=False)
  res = subprocess.run(
      [sys.executable, "-m", "poly_epo.evaluate",
       f"--config={os.path.join(ROOT, 'configs', 'multiplication.py')}",
       f"--policy={two_policies[1]}", "--samples=2", "--prompts=2",
       f"--out={tmp_path / 'ev3'}"], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, XLA_FLAGS=""))
  assert res.returncode == 2
  assert res.stderr.strip().splitlines()[-1].startswith(
      f"error: --policy {two_policies[1]} was trained on task 'polynomial'")


def test_plot_overlays_runs(tmp_path):
  for name, base in (("a", 0.2), ("b", 0.4)):
    d = tmp_path / name
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
      for step in range(4):
        f.write(json.dumps({"step": step, "train/reward_mean": base + step,
                            "train/pass@1": 0.1, "train/entropy": 1.0}) + "\n")
      f.write(json.dumps({"step": 4, "eval/pass@1": 0.3,
                          "eval/pass@32": 0.8}) + "\n")
  out = tmp_path / "c.png"
  assert plot.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                    str(out)]) == 0
  assert os.path.getsize(out) > 1000
  assert plot.main([str(tmp_path / "missing")]) == 2


def test_evaluations_split_into_rollouts_that_fit_and_refuse_what_cannot(
    two_policies, tmp_path, monkeypatch):
  """With room for few rows, evaluate samples the prompts in several
  rollouts with the same results (prompt i's samples are seeded by i); a
  request that can never fit is one line naming --samples and the most
  that fit, before any sampling."""
  from poly_epo import autoscale, checkpointing, rollout
  model, tok, _ = checkpointing.load_policy(two_policies[0])
  from poly_epo import tasks
  task = _config().task
  task = tasks.get(task.name, **dict(task.options))
  prompts = task.heldout_prompts(0, 6)
  kw = dict(num_samples=4, max_new_tokens=16, seed=3, batch_prompts=64)
  whole = evaluation.sample_and_score(model, tok, task, prompts, **kw)
  from poly_epo.tokenizer import encode_prompts
  width = encode_prompts(tok, prompts, pad_to_multiple=8)[0].shape[1]
  row = autoscale.rollout_row_bytes(model.cfg, width, 16)
  room = 2 * (6 * 4 * row["kept"] + 2 * 4 * row["decode"]) + 1
  monkeypatch.setattr(evaluation, "_memory", lambda: room)
  chunks = []
  real = rollout.rollout
  monkeypatch.setattr(rollout, "rollout", lambda *a, **k: (
      chunks.append(k["settings"].chunk_prompts), real(*a, **k))[1])
  split = evaluation.sample_and_score(model, tok, task, prompts, **kw)
  assert chunks == [2]
  for k in ("rewards", "labels"):
    assert (split[k] == whole[k]).all()
  assert split["texts"] == whole["texts"]
  monkeypatch.setattr(evaluation, "_memory", lambda: 2 * 6 * row["kept"])
  with pytest.raises(ValueError, match=r"--samples=100000: 6 prompts x "
                     r"100000 samples need .* at most 0 samples per prompt"):
    evaluation.sample_and_score(model, tok, task, prompts,
                                **dict(kw, num_samples=100000),
                                samples_field="--samples")
