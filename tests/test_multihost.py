"""Multi-host training through `jax.distributed`: 2 local CPU processes with 2
devices each run 3 steps and agree with one process on 4 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

from test_trainer import ROOT, tiny_base

STEPS = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return tiny_base(tmp_path_factory.mktemp("mh_base"), steps=30)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, base, *extra):
  return [sys.executable, "-m", "poly_epo.train",
          f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}",
          f"--config.workdir={workdir}", f"--config.base_policy={base}",
          f"--config.steps={STEPS}", "--config.prompts_per_step=8",
          "--config.rollout.chunk_prompts=4", "--config.eval_prompts=4",
          "--config.eval_samples=4", "--config.eval_every=0",
          "--config.ckpt_every=2", "--config.progress=False", *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _rows(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    rec = json.loads(line)
    key = ("train" if "train/loss" in rec else "eval", rec["step"])
    out[key] = {k: v for k, v in rec.items() if not k.endswith("_tok_s")}
  return out


def test_two_processes_agree_with_one_process_on_four_devices(base, tmp_path):
  single = str(tmp_path / "single")
  subprocess.run(_cmd(single, base), check=True, env=_env(4), cwd=ROOT,
                 capture_output=True, timeout=600)
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(multi, base, "--config.distributed=True",
           f"--config.coordinator_address=127.0.0.1:{port}",
           "--config.num_processes=2", f"--config.process_id={i}"),
      env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  ref, got = _rows(single), _rows(multi)
  assert sorted(ref) == sorted(got)
  assert [s for kind, s in sorted(got) if kind == "train"] == [0, 1, 2]
  for key, row in ref.items():
    for k, v in row.items():
      assert got[key][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (key, k)
  # Only process 0 printed the summary table; both wrote one policy/export.
  assert "held-out" in logs[0] and "held-out" not in logs[1]
  for name in ("policy", "policy_hf", "summary.json", "checkpoints"):
    assert os.path.exists(os.path.join(multi, name)), name
  assert not os.path.exists(os.path.join(multi, ".lock"))
