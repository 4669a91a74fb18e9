"""Multi-host training through `jax.distributed`: 2 local CPU processes with 2
devices each run 3 steps (HTTP judge labels from a local server) and agree
with one process on 4 devices, also when both are stopped by SIGTERM and the
same command resumes them (the agreement run with the continuous engine and
packed updates); one host's start-up error stops both with one
line; per-host workdirs are refused."""

import json
import os
import socket
import subprocess
import sys

import pytest

from test_trainer import ROOT

STEPS = 3


@pytest.fixture(scope="module")
def judge_args():
  """A local OpenAI-compatible judge (tests/test_judges.py's handler)."""
  import http.server
  import threading
  from test_judges import _Handler
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  yield ["--config.judge.kind=http", "--config.judge.model=j",
         f"--config.judge.url=http://127.0.0.1:{srv.server_address[1]}/v1"]
  srv.shutdown()


@pytest.fixture(scope="module")
def reference(base, judge_args, tmp_path_factory):
  """One process on 4 devices: the run every 2-process run must equal."""
  work = str(tmp_path_factory.mktemp("mh_ref") / "single")
  subprocess.run(_cmd(work, base, *judge_args), check=True, env=_env(4),
                 cwd=ROOT, capture_output=True, timeout=600)
  return work


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
    out[key] = {k: v for k, v in rec.items()  # Wall-clock ones differ.
                if not k.endswith("_tok_s") and "/time/" not in k}
  return out


def _same_rows(want_dir, got_dir):
  want, got = _rows(want_dir), _rows(got_dir)
  assert sorted(want) == sorted(got)
  for key, row in want.items():
    for k, v in row.items():
      assert got[key][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (key, k)


def test_two_processes_agree_with_one_process_on_four_devices(
    base, judge_args, reference, tmp_path):
  multi = str(tmp_path / "multi")
  # The 2 processes decode with the continuous engine (8 slots per device)
  # over a paged cache and update on packed rows: the same metrics as the
  # static reference.
  procs = _launch([multi] * 2, base, *judge_args,
                  "--config.rollout.engine=continuous",
                  "--config.rollout.slots=32", "--config.rollout.cache=paged",
                  "--config.packing=True")
  logs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  logs = [out for out, _ in logs]
  _same_rows(reference, multi)
  assert [s for kind, s in sorted(_rows(multi)) if kind == "train"] == [
      0, 1, 2]
  assert "train/judge/failed_fraction" in _rows(multi)[("train", 2)]
  # Only process 0 printed the summary table; both wrote one policy/export.
  assert "held-out" in logs[0] and "held-out" not in logs[1]
  for name in ("policy", "policy_hf", "summary.json", "checkpoints"):
    assert os.path.exists(os.path.join(multi, name)), name
  assert not os.path.exists(os.path.join(multi, ".lock"))


def _launch(workdirs, base, *extra, devices=2, per_process=None):
  """2 `jax.distributed` processes; workdirs[i] for process i."""
  port = _free_port()
  return [subprocess.Popen(
      _cmd(workdirs[i], base, "--config.distributed=True",
           f"--config.coordinator_address=127.0.0.1:{port}",
           "--config.num_processes=2", f"--config.process_id={i}", *extra,
           *((per_process or {}).get(i, ()))),
      env=_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _error_lines(procs, timeout):
  out = []
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode != 0, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    out.append(lines[0])
  return out


def test_one_host_missing_its_base_policy_stops_every_host(base, tmp_path):
  import time
  t0 = time.time()
  procs = _launch([str(tmp_path / "w")] * 2, base, per_process={
      1: ["--config.base_policy=" + str(tmp_path / "nowhere")]})
  errors = _error_lines(procs, timeout=120)
  assert time.time() - t0 < 60
  assert errors[0] == errors[1], errors
  assert "config.base_policy" in errors[0] and "process 1" in errors[0]


def test_per_host_workdirs_are_refused_as_not_shared(base, tmp_path):
  procs = _launch([str(tmp_path / "a"), str(tmp_path / "b")], base)
  errors = _error_lines(procs, timeout=120)
  assert errors[0] == errors[1], errors
  assert "is not shared" in errors[0]
  assert not (tmp_path / "a" / ".lock").exists()  # Released on the way out.


def test_sigterm_stops_cleanly_and_the_rerun_matches_an_uninterrupted_run(
    base, judge_args, reference, tmp_path):
  import signal
  import time
  work = str(tmp_path / "multi")
  args = [*judge_args, "--config.ckpt_every=10"]  # Only SIGTERM checkpoints.
  procs = _launch([work] * 2, base, *args)
  metrics = os.path.join(work, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and not (
      os.path.exists(metrics) and "train/loss" in open(metrics).read()):
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
  ckpts = [c for c in os.listdir(os.path.join(work, "checkpoints"))
           if c.isdigit()]
  assert ckpts and all(int(c) < STEPS for c in ckpts), ckpts
  assert not os.path.exists(os.path.join(work, ".lock"))
  assert os.listdir(os.path.join(work, "judge_cache"))
  procs = _launch([work] * 2, base, *args)
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  _same_rows(reference, work)
