"""poly_epo.distributed on one process: the workdir lock (a live holder is
refused, a dead one's lock is taken over), and the single-host behaviour of
the multi-host helpers (their 2-process behaviour: tests/test_multihost.py)."""

import json
import signal
import os
import socket
import subprocess
import time
import sys

import numpy as np
import pytest

from poly_epo import distributed, sharding
from test_multihost import _cmd, _env
from test_trainer import ROOT


def test_single_process_helpers():
  x = np.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(distributed.allgather(x), x)
  assert distributed.is_main()
  distributed.barrier("noop")
  mesh = sharding.make_mesh(2, 2, 2)
  assert distributed.prompt_blocks(mesh, 2, 8) == [(0, 2)]
  np.testing.assert_array_equal(
      distributed.host_value(sharding.global_batch(mesh, np.arange(8))),
      np.arange(8))


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(60)"])
  try:
    (tmp_path / ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": holder.pid}))
    with pytest.raises(RuntimeError, match="in use by another run"):
      distributed.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()
    holder.wait()
  with distributed.WorkdirLock(str(tmp_path)) as lock:
    assert lock.held
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(RuntimeError, match="in use"):
      distributed.WorkdirLock(str(tmp_path)).acquire()  # Our own live run.
  assert not (tmp_path / ".lock").exists()


def test_train_refuses_a_locked_workdir(base, tmp_path):
  work = tmp_path / "locked"
  work.mkdir()
  holder = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(60)"])
  try:
    (work / ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": holder.pid}))
    res = subprocess.run(_cmd(str(work), base), env=_env(1), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "in use by another run" in res.stderr
  finally:
    holder.kill()
    holder.wait()


def test_lock_heartbeat_and_take_over_of_a_silent_holder_on_another_host(
    tmp_path):
  import time
  lock_file = tmp_path / ".lock"
  lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1,
                                   "heartbeat": time.time()}))
  with pytest.raises(RuntimeError, match="in use by another run"):
    distributed.WorkdirLock(str(tmp_path), timeout_s=60).acquire()
  lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1,
                                   "heartbeat": time.time() - 120}))
  lock = distributed.WorkdirLock(str(tmp_path), timeout_s=60).acquire()
  assert lock.held
  lock.release()
  fast = distributed.WorkdirLock(str(tmp_path), timeout_s=0.2).acquire()
  first = json.loads(lock_file.read_text())["heartbeat"]
  time.sleep(0.3)
  assert json.loads(lock_file.read_text())["heartbeat"] > first  # Beating.
  fast.release()
  assert not lock_file.exists()


def test_single_process_agreement_helpers():
  assert distributed.allgather_objects({"a": 1}, "x") == [{"a": 1}]
  with distributed.fail_together("stage") as box:
    box["value"] = 3
  assert box["all"] == [3]
  with pytest.raises(KeyError):  # One process: the error itself.
    with distributed.fail_together("stage"):
      raise KeyError("k")
  with distributed.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested
  assert not distributed.any_process(False)


def test_sigint_asks_to_stop_like_sigterm_and_a_second_stops_at_once():
  """Ctrl-C is a stop request (exit 130), not a KeyboardInterrupt; the
  second signal raises `Stopped` where the program is, so `finally` blocks
  (the workdir lock) still run."""
  said = []
  with distributed.StopRequest(say=said.append) as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and stop.name == "SIGINT"
    assert len(said) == 1 and "SIGINT" in said[0]
    with pytest.raises(distributed.Stopped, match="second SIGTERM") as e:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)  # The handler raises here.
  assert e.value.exit_code == 143
  with pytest.raises(distributed.Stopped) as e:
    stop.check("while testing")
  assert e.value.exit_code == 130 and "stopped by SIGINT while testing" \
      in str(e.value)
  assert distributed.exit_code(ValueError("x")) == 1
