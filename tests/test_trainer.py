"""poly_epo.trainer / train (and run_config): a short run's outputs, SIGKILL-and-resume
equality, config guards, and stopping on repeated non-finite updates."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from poly_epo import config_checks, evaluation, pretrain, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  spec = importlib.util.spec_from_file_location(
      "polycfg", os.path.join(ROOT, "configs", "polynomial.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.progress = False
  for k, v in overrides.items():
    target = cfg
    *parents, leaf = k.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = v
  return cfg


def tiny_base(workdir, *, steps: int, batch_size: int = 64,
              eval_prompts: int = 2, seed: int = 0) -> str:
  """A tiny polynomial base policy (a few pretraining steps); its path."""
  cfg = _config(workdir=str(workdir), seed=seed,
                **{"pretrain.steps": steps, "pretrain.batch_size": batch_size,
                   "pretrain.eval_prompts": eval_prompts,
                   "pretrain.eval_samples": 2})
  return pretrain.pretrain(cfg, progress=False)["path"]


def kill_when_exists(cmd, env, path: str, what: str):
  """Start `cmd`, SIGKILL it as soon as `path` exists (fail after 300 s)."""
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.exists(path) and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(path), f"the run never reached {what}"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


SHORT = dict(steps=4, prompts_per_step=8, ckpt_every=2, eval_every=2,
             eval_prompts=4, eval_samples=4)


def test_short_run_writes_metrics_tensorboard_checkpoints(base, tmp_path):
  cfg = _config(workdir=str(tmp_path / "run"), base_policy=base, **SHORT)
  summary = trainer.train(cfg)
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  train_steps = [l["step"] for l in lines if "train/loss" in l]
  assert train_steps == [0, 1, 2, 3]
  for key in ("train/reward_mean", "train/pass@1", "train/pass@8",
              "train/distinct_correct", "train/frac_zero_adv",
              "train/entropy", "train/clip_frac_high", "train/grad_norm",
              "train/response_length", "train/sample_tok_s",
              "train/judge_failed", "train/task_timeouts", "train/skipped",
              "train/unparsed", "train/time/step_s", "train/time/update_s"):
    assert key in lines[0], key
  assert any("eval/pass@4" in l for l in lines)
  assert os.listdir(tmp_path / "run" / "tb")
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]
  assert summary["policy_hf"] and os.path.exists(
      os.path.join(summary["policy_hf"], "model.safetensors"))
  assert summary["trained"]["pass@1"] >= 0
  assert "pass@4" in evaluation.format_summary(summary)
  # The same workdir with a different config is refused...
  with pytest.raises(ValueError, match="different config.*algorithm"):
    trainer.train(_config(workdir=str(tmp_path / "run"), base_policy=base,
                          algorithm="grpo", **SHORT))
  # ...while more steps of the same config resume.
  more = dict(SHORT, steps=5)
  trainer.train(_config(workdir=str(tmp_path / "run"), base_policy=base,
                        **more))
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [l["step"] for l in lines if "train/loss" in l] == [0, 1, 2, 3, 4]
  # Evaluations the checkpoint covers survive the resume (2: periodic, 4:
  # the first run's final one, of the params checkpointed at 4), then 5.
  assert [l["step"] for l in lines if "eval/pass@1" in l] == [2, 4, 5]


def _cmd(workdir, base, *extra):
  args = [f"--config.workdir={workdir}", f"--config.base_policy={base}",
          "--config.steps=8", "--config.prompts_per_step=8",
          "--config.ckpt_every=2", "--config.eval_prompts=0",
          "--config.progress=False", *extra]
  return [sys.executable, "-m", "poly_epo.train",
          f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}", *args]


def _train_metrics(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    rec = json.loads(line)
    if "train/loss" in rec:
      out[rec["step"]] = {k: v for k, v in rec.items()
                          if not k.endswith("_tok_s") and "/time/" not in k}
  return out


# The killed run decodes with the continuous engine and updates on packed
# sequences; the reference with the static engine and padded rows.
ENGINE = ("--config.rollout.engine=continuous", "--config.rollout.slots=24",
          "--config.rollout.refill=2", "--config.packing=True")


def test_sigkill_and_resume_gives_the_same_metrics(base, tmp_path):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
  subprocess.run(_cmd(ref_dir, base), check=True, env=env, cwd=ROOT,
                 capture_output=True, timeout=600)
  kill_when_exists(_cmd(run_dir, base, *ENGINE), env,
                   os.path.join(run_dir, "checkpoints", "4"),
                   "its step-4 checkpoint")
  killed_at = len(_train_metrics(run_dir))
  assert killed_at < 8  # It really died before the end.
  subprocess.run(_cmd(run_dir, base, *ENGINE), check=True, env=env, cwd=ROOT,
                 capture_output=True, timeout=600)
  ref, resumed = _train_metrics(ref_dir), _train_metrics(run_dir)
  assert sorted(resumed) == list(range(8))
  for step in range(8):
    for k, v in ref[step].items():
      assert resumed[step][k] == pytest.approx(v, rel=1e-5, abs=1e-6), \
          (step, k)


@pytest.mark.parametrize("overrides,field", [
    ({"mesh.data": 3}, "mesh"),
    ({"set_size": 9}, "set_size"),
    ({"num_minibatches": 3}, "num_minibatches"),
    ({"algorithm": "ppo"}, "algorithm"),
    ({"task.name": "chess"}, "task.name"),
    ({"base_policy": "/no/such/policy"}, "base_policy"),
    ({"loss.aggregation": "sum"}, "loss.aggregation"),
    ({"judge.kind": "oracle"}, "judge.kind"),
    ({"ckpt_every": 0}, "ckpt_every"),
    ({"temperature": 0.0}, "temperature"),
    ({"model.dtype": "int8"}, "model.dtype"),
    ({"model.remat": "some"}, "model.remat"),
    ({"model.attention": "flash"}, "model.attention"),
    ({"rollout.chunk_prompts": -1}, "rollout.chunk_prompts"),
    ({"rollout.cache": "virtual"}, "rollout.cache"),
    ({"rollout.pages": -1}, "rollout.pages"),
    ({"rollout.narrow": "yes"}, "rollout.narrow"),
    ({"rollout.page_size": -8}, "rollout.page_size"),
    ({"rollout.cache": "contiguous", "rollout.attention": "tpu_paged"},
     "rollout.attention"),
    ({"recompute_old_logprobs": "yes"}, "recompute_old_logprobs"),
    ({"export_dtype": "int4"}, "export_dtype"),
    ({"lr": -0.01}, "lr"),
    ({"lr": 0.0}, "lr"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
    ({"grad_clip": 0.0}, "grad_clip"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"eval_samples": 0}, "eval_samples"),
    ({"loss.eps_low": 1.5}, "loss.eps_low"),
    ({"loss.dual_clip": 0.5}, "loss.dual_clip"),
    ({"pretrain.lr": 0.0}, "pretrain.lr"),
    ({"judge.max_concurrency": 0}, "judge.max_concurrency"),
    ({"prompts_per_step": 3}, "prompts_per_step"),  # 8 batch shards here.
    ({"num_samples": 4, "set_size": 4}, "set_size"),  # One set: all 0.
    ({"shared_prefix": "sometimes"}, "shared_prefix"),
    ({"shared_prefix": "on", "packing": True}, "shared_prefix"),
])
def test_impossible_configs_fail_fast(overrides, field):
  cfg = _config(**overrides)
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=f"config.{field}".replace(".", r"\.")):
    config_checks.check_config(cfg)
  assert time.perf_counter() - t0 < 1.0  # Before any compile.


def test_repeated_nan_updates_stop_the_run(base, tmp_path, monkeypatch):
  from poly_epo import set_rl
  real = set_rl.advantages

  def nan_advantages(*args, **kwargs):
    return np.full(np.shape(real(*args, **kwargs)), np.nan, np.float32)
  monkeypatch.setattr(trainer.set_rl, "advantages", nan_advantages)
  cfg = _config(workdir=str(tmp_path / "nan"), base_policy=base,
                max_nan_steps=2, **dict(SHORT, eval_prompts=0))
  with pytest.raises(FloatingPointError, match="max_nan_steps"):
    trainer.train(cfg)
  lines = [json.loads(l) for l in open(tmp_path / "nan" / "metrics.jsonl")]
  assert [l["train/skipped"] for l in lines] == [1, 1]


def test_loss_overrides_apply_per_algorithm():
  import ml_collections
  cfg = _config(algorithm="drgrpo")
  cfg.loss_overrides.drgrpo = ml_collections.ConfigDict({"eps_high": 0.2})
  config_checks.check_config(cfg)
  assert trainer.loss_options(cfg)["eps_high"] == 0.2
  cfg.algorithm = "polyepo"
  assert trainer.loss_options(cfg)["eps_high"] == 0.28
  cfg.loss_overrides.drgrpo = ml_collections.ConfigDict({"eps_hi": 0.2})
  with pytest.raises(ValueError, match=r"config\.loss_overrides\.drgrpo"):
    config_checks.check_config(cfg)


def test_bad_values_write_nothing_and_the_fixed_rerun_is_accepted(
    base, tmp_path):
  work = tmp_path / "fix"
  with pytest.raises(ValueError, match=r"config\.max_new_tokens"):
    trainer.train(_config(workdir=str(work), base_policy=base,
                          max_new_tokens=0, **SHORT))
  assert not (work / "config.json").exists()
  cfg = _config(workdir=str(work), base_policy=base,
                **dict(SHORT, steps=1, eval_prompts=0))
  trainer.train(cfg)
  assert (work / "config.json").exists()
  # The same run under another spelling of its workdir resumes.
  moved = tmp_path / "moved"
  work.rename(moved)
  cfg = _config(workdir=str(moved) + "/", base_policy=base,
                **dict(SHORT, steps=2, eval_prompts=0))
  trainer.train(cfg)
  rows = [json.loads(l) for l in open(moved / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: no such "
     "config file"),
    (["--config", "configs/nope.py"], "error: --config=configs/nope.py: no "
     "such config file"),
    (["--config=configs/polynomial.py", "--config.learning_rate=3"],
     "error: --config.learning_rate: no such config field"),
    (["--config=configs/polynomial.py", "--config.mesh.fdsp=2"],
     "error: --config.mesh.fdsp: no such config field (did you mean "
     "--config.mesh.fsdp?)"),
])
def test_command_line_mistakes_are_one_line(args, message):
  res = subprocess.run([sys.executable, "-m", "poly_epo.train", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XLA_FLAGS="",
                                JAX_PLATFORMS="cpu"))
  assert res.returncode == 1
  assert res.stderr.strip().splitlines() == [message]


def test_bad_config_is_one_line_and_non_zero():
  res = subprocess.run(
      [sys.executable, "-m", "poly_epo.train",
       f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}",
       "--config.temperature=0", "--config.workdir=/tmp/poly_epo_bad_cfg"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1].startswith(
      "error: config.temperature")
  assert "Traceback" not in res.stderr


def test_rerunning_a_finished_run_logs_the_final_evaluation_once(
    base, tmp_path):
  cfg = dict(SHORT, steps=2, eval_every=0)
  work = str(tmp_path / "done")
  trainer.train(_config(workdir=work, base_policy=base, **cfg))
  summary = trainer.train(_config(workdir=work, base_policy=base, **cfg))
  rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
  finals = [r for r in rows if r["step"] == 2 and "eval/pass@1" in r]
  assert len(finals) == 1
  assert summary["metrics_gaps"] == []


def test_nothing_below_the_loop_imports_the_trainer():
  """Only the entry points (train, study) import poly_epo.trainer."""
  import ast
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, "poly_epo")):
    for name in files:
      path = os.path.join(folder, name)
      if not name.endswith(".py") or name in ("trainer.py", "train.py",
                                              "study.py"):
        continue
      for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.ImportFrom):
          names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        if any(n.startswith("poly_epo.trainer") for n in names):
          found.append(path)
  assert not found, found


def test_label_needing_algorithms_are_refused_without_labels():
  import os as _os
  from poly_epo import tasks
  sample = _os.path.join(_os.path.dirname(__file__), "data",
                         "math_sample.jsonl")
  judged = tasks.get("math", path=sample, workers=1)
  by_answer = tasks.get("math", path=sample, workers=1, labels="answer")
  for algorithm in ("polyepo", "grpo_div"):
    with pytest.raises(ValueError, match=r"config\.task\.options\.labels="
                       "answer"):
      config_checks.check_labels(_config(algorithm=algorithm), judged)
    config_checks.check_labels(_config(algorithm=algorithm), by_answer)
  config_checks.check_labels(_config(algorithm="grpo"), judged)
  cfg = _config(algorithm="polyepo")
  cfg.judge.kind = "http"
  config_checks.check_labels(cfg, judged)


def _interrupt_at_call(monkeypatch, module, name, at):
  """Send this process SIGINT on call number `at` of `module.name`."""
  real, calls = getattr(module, name), []

  def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == at:
      os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
  monkeypatch.setattr(module, name, wrapped)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(base, tmp_path,
                                                       monkeypatch):
  """SIGINT is a stop request: the step finishes, is checkpointed, the lock
  goes, and the error says so (exit status 130)."""
  _interrupt_at_call(monkeypatch, trainer, "advantages_step", 1)
  work = tmp_path / "run"
  cfg = _config(workdir=str(work), base_policy=base,
                **dict(SHORT, eval_prompts=0))
  with pytest.raises(trainer.Preempted, match=r"stopped by SIGINT after "
                     r"step 1 \(checkpoint saved in") as e:
    trainer.train(cfg)
  assert e.value.exit_code == 130
  assert (work / "checkpoints" / "1").is_dir()
  assert not (work / ".lock").exists()


def test_stops_during_evaluations_are_honoured_and_resumed(base, tmp_path,
                                                           monkeypatch):
  """A stop during the base evaluation stops before any step (nothing to
  save); one during the evaluation at step 2 checkpoints step 2, and the
  rerun redoes that evaluation."""
  from poly_epo import rollout
  work = tmp_path / "run"
  cfg = _config(workdir=str(work), base_policy=base, steps=2,
                prompts_per_step=8, ckpt_every=4, eval_every=2,
                eval_prompts=4, eval_samples=4)
  _interrupt_at_call(monkeypatch, rollout, "rollout", 1)
  with pytest.raises(trainer.Preempted, match="during the base policy's "
                     "evaluation"):
    trainer.train(cfg)
  assert not (work / "base_eval.json").exists()
  assert not (work / "checkpoints").exists() or \
      not os.listdir(work / "checkpoints")
  cfg.steps = 4
  # Calls: base evaluation, steps 0 and 1, then the evaluation at step 2.
  _interrupt_at_call(monkeypatch, rollout, "rollout", 4)
  with pytest.raises(trainer.Preempted, match=r"during the evaluation at "
                     r"step 2.*checkpoint of step 2 saved.*redone on "
                     r"resume"):
    trainer.train(cfg)
  assert (work / "checkpoints" / "2").is_dir()
  monkeypatch.undo()
  trainer.train(cfg)
  rows = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [r["step"] for r in rows if "eval/pass@1" in r] == [2, 4]
  assert sorted(r["step"] for r in rows if "train/loss" in r) == [0, 1, 2, 3]
