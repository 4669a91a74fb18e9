"""Multi-host plumbing: which process does what, and the workdir lock.

Every process runs the same program (JAX multi-controller SPMD). Each owns a
contiguous block of every batch (`prompt_blocks`): it builds that share of
prompts and rollouts, scores it, and the global batch is assembled with
`jax.make_array_from_process_local_data` (`sharding.global_batch`). Host-side
numbers that span the batch (rewards, labels, judge counts) are gathered with
`allgather`. Only the main process (index 0) writes metrics, summaries, the
Hugging Face export and the judge cache; Orbax checkpoints are written by all
processes together, as Orbax intends.

On one process every helper degrades to the obvious single-host behaviour.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import threading
import time

import jax
import numpy as np

from poly_epo import storage

# Seconds a process waits for the others at a start-up agreement (their
# config checks, data loading, judge health check) before giving up.
AGREE_TIMEOUT_S = float(os.environ.get("POLY_EPO_AGREE_TIMEOUT", "600"))


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """`jax.distributed.initialize`, with explicit arguments when given (a
  local multi-process run) or auto-detected ones (TPU VM pods, SLURM)."""
  kw = {}
  if coordinator_address:
    kw = dict(coordinator_address=coordinator_address,
              num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**kw)


def is_main() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """All processes reach this point before any goes on (no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def allgather(x) -> np.ndarray:
  """Concatenate every process's NumPy block along axis 0, in process order
  (identity on one process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def prompt_blocks(mesh, prompts: int, num_samples: int) -> list[tuple]:
  """Each process's [start, stop) of a step's prompts (equal blocks in
  process order), checked against the mesh: process p's devices must hold
  exactly the rows of its prompts' samples. Computed from the mesh's
  devices, so it holds for abstract topologies as for live ones."""
  from poly_epo import sharding
  procs = sorted({d.process_index for d in mesh.devices.flat})
  if prompts % len(procs):
    raise ValueError(f"config.prompts_per_step={prompts} does not split "
                     f"over {len(procs)} processes")
  per = prompts // len(procs)
  blocks = [(i * per, (i + 1) * per) for i in range(len(procs))]
  if len(procs) == 1:
    return blocks
  rows = sharding.process_row_blocks(mesh, prompts * num_samples)
  for i, p in enumerate(procs):
    want = (blocks[i][0] * num_samples, blocks[i][1] * num_samples)
    if rows[p] != want:
      raise ValueError(
          f"config.mesh: process {p}'s devices hold rows {rows[p]} of the "
          f"batch, not its prompts' rows {want} (the mesh must be "
          "process-major)")
  return blocks


def host_value(x) -> np.ndarray:
  """The whole value of a (possibly multi-host sharded) array on this host.
  Every process must call it (it gathers)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _kv():
  """jax.distributed's key-value store (None on one process)."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed as jd
  return jd.global_state.client


_calls = itertools.count()


def allgather_objects(obj, name: str, timeout_s: float = AGREE_TIMEOUT_S
                      ) -> list:
  """Every process's JSON-able `obj`, in process order, through
  jax.distributed's key-value store: no device, no compiled program, so it
  works before the mesh exists and whatever failed on a host. Every process
  must call it in the same order."""
  client = _kv()
  if client is None:
    return [obj]
  key = f"poly_epo/{next(_calls)}/{name}"
  client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(obj))
  out = []
  for p in range(jax.process_count()):
    try:
      raw = client.blocking_key_value_get(f"{key}/{p}", int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - a dead or stuck process.
      raise RuntimeError(f"{name}: process {p} did not answer within "
                         f"{timeout_s:.0f} s ({e})") from None
    out.append(json.loads(raw))
  return out


class StartupError(RuntimeError):
  """One process's start-up error, raised on every process."""


@contextlib.contextmanager
def fail_together(stage: str):
  """Run a start-up stage on every process, then agree: if it raised on any
  process, every process raises the same one-line error (the first failing
  process's) instead of the others waiting forever in the next collective.

  Yields a dict: put a JSON-able "value" in it to have every process's
  value in `box["all"]` afterwards (a broadcast for free). On one process
  the stage's own exception propagates unchanged.
  """
  box = {"value": None}
  err = None
  try:
    yield box
  except Exception as e:  # noqa: BLE001 - shared, then re-raised.
    err = e
  if jax.process_count() == 1:
    if err is not None:
      raise err
    box["all"] = [box["value"]]
    return
  mine = None if err is None else str(err).splitlines()[0] if str(err) \
      else type(err).__name__
  got = allgather_objects({"error": mine, "value": box["value"]}, stage)
  for p, rec in enumerate(got):
    if rec["error"] is not None:
      msg = rec["error"]
      raise StartupError(f"{msg} (on process {p})") from None
  box["all"] = [rec["value"] for rec in got]


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any (collective)."""
  return bool(allgather(np.array([bool(flag)])).any())


class Stopped(RuntimeError):
  """The run stopped on a signal (SIGTERM or SIGINT) after saving what it
  had; the same command resumes it. Exit status 128 + the signal number
  (143 for SIGTERM, 130 for SIGINT)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def exit_code(e: BaseException) -> int:
  """A command's exit status for an error it reports in one line."""
  return e.exit_code if isinstance(e, Stopped) else 1


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """SIGTERM (pre-emption, SLURM's time limit, `kill`) or SIGINT (Ctrl-C)
  asks the run to stop at the next safe point (a step boundary, a
  pretraining step, an evaluation chunk) after saving what it has; a
  second signal stops at once (`Stopped` raised where the program is, so
  the workdir lock is still released and one line is printed). Processes
  agree on the step through `any_process`."""

  def __init__(self, say=None):
    self.requested = False
    self.signum = signal.SIGTERM
    self._old = {}
    self._say = say

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  def _handle(self, signum, frame):
    if self.requested:  # Second signal: stop where we are.
      self._restore()
      raise Stopped(f"stopped at once by a second {signal.Signals(signum).name}"
                    " (the last checkpoint is kept; run the same command to "
                    "resume from it)", signum)
    self.requested, self.signum = True, signum
    say = self._say or (lambda m: os.write(2, (m + "\n").encode()))
    say(f"{self.name}: stopping at the next safe point with a checkpoint "
        f"(send it again to stop at once)")

  def check(self, where: str) -> None:
    """Raise `Stopped` if a stop was asked for (this process only: for
    work that a single process does, like pretraining)."""
    if self.requested:
      raise Stopped(f"stopped by {self.name} {where}; run the same command "
                    "to resume", self.signum)

  def _restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old if old is not None else signal.SIG_DFL)
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = {sig: signal.signal(sig, self._handle)
                   for sig in STOP_SIGNALS}
    return self

  def __exit__(self, *exc):
    self._restore()


def _nonce_path(workdir: str) -> str:
  return storage.join(workdir, ".poly_epo_nonce")


def write_nonce(workdir: str) -> str:
  """Process 0's side of `shared_workdir_check`."""
  nonce = secrets.token_hex(16)
  storage.write_text(_nonce_path(workdir), nonce)
  return nonce


def shared_workdir_check(workdir: str, nonce: str) -> None:
  """Every host must read back the nonce process 0 wrote into the workdir:
  per-host local disks would scatter checkpoints and hang resumes."""
  path = _nonce_path(workdir)
  try:
    seen = storage.read_text(path).strip()
  except OSError:
    seen = None
  if seen != nonce:
    raise RuntimeError(
        f"config.workdir={workdir!r} is not shared: process "
        f"{jax.process_index()} does not see the file process 0 wrote there "
        f"({path}); use storage every host sees (gs://..., NFS, Lustre)")


class WorkdirLock:
  """`<workdir>/.lock` held by the main process for the life of a run.

  A second run on the same workdir is refused, naming the holder. The holder
  rewrites the lock's heartbeat every `timeout_s / 4` seconds; a lock whose
  holder is a dead process on this host, or whose heartbeat is older than
  `timeout_s` (a dead process on any host), is taken over. Works on any
  storage (`gs://` included; there the take-over is best effort).
  """

  def __init__(self, workdir: str, timeout_s: float = 600.0):
    self.workdir = str(workdir)
    self.path = storage.join(workdir, ".lock")
    self.timeout_s = timeout_s
    self.held = False
    self._stop = threading.Event()

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "heartbeat": time.time()})

  def acquire(self) -> "WorkdirLock":
    if not is_main():
      return self
    for _ in range(2):
      if not self._create():
        holder = self._holder()
        if holder is not None and not self._stale(holder):
          raise RuntimeError(
              f"workdir {self.workdir!r} is in use by "
              f"another run (pid {holder.get('pid')} on "
              f"{holder.get('host')}; lock file {self.path}). Wait for it, "
              "or delete the lock file if that run is gone.")
        storage.remove(self.path)  # Stale: its process is gone.
        continue
      self.held = True
      atexit.register(self.release)
      threading.Thread(target=self._beat, daemon=True).start()
      return self
    raise RuntimeError(f"could not take the workdir lock {self.path}")

  def _create(self) -> bool:
    if storage.is_url(self.path):
      if storage.exists(self.path):
        return False
      storage.write_text(self.path, self._record())
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._record())
    return True

  def _beat(self) -> None:
    while not self._stop.wait(max(self.timeout_s / 4, 0.05)):
      if self.held:
        try:
          storage.write_text(self.path, self._record())
        except OSError:
          pass

  def _holder(self):
    try:  # A damaged lock file names no live holder: it is stale.
      return storage.read_json(self.path)
    except (OSError, ValueError):
      return None

  def _stale(self, holder) -> bool:
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)) and time.time() - beat > self.timeout_s:
      return True  # No heartbeat for too long: dead, wherever it ran.
    if holder.get("host") != socket.gethostname():
      return False
    try:
      os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
      return True
    except (PermissionError, ValueError, TypeError):
      return False
    return False

  def release(self) -> None:
    self._stop.set()
    if self.held:
      self.held = False
      try:
        storage.remove(self.path)
      except OSError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
