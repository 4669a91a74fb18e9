"""Multi-host plumbing: which process does what, and the workdir lock.

Every process runs the same program (JAX multi-controller SPMD). Each owns a
contiguous block of every batch (`process_block`): it builds that share of
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
import json
import os
import socket

import jax
import numpy as np


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


def process_block(mesh, n: int) -> tuple[int, int]:
  """[start, stop) of the rows of an n-row batch, sharded over the mesh's
  batch axes, that live on this process's devices."""
  from poly_epo import sharding
  if jax.process_count() == 1:
    return 0, n
  return sharding.process_row_blocks(mesh, n)[jax.process_index()]


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


class WorkdirLock:
  """`<workdir>/.lock` held by the main process for the life of a run.

  A second run on the same workdir is refused, naming the holder; a lock
  left by a dead process on this host is taken over.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self.held = False

  def acquire(self) -> "WorkdirLock":
    if not is_main():
      return self
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        holder = self._holder()
        if holder is not None and not self._stale(holder):
          raise RuntimeError(
              f"workdir {os.path.dirname(self.path)!r} is in use by another "
              f"run (pid {holder.get('pid')} on {holder.get('host')}; lock "
              f"file {self.path}). Wait for it, or delete the lock file if "
              "that run is gone.") from None
        try:
          os.remove(self.path)  # Stale: its process is gone.
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      atexit.register(self.release)
      return self
    raise RuntimeError(f"could not take the workdir lock {self.path}")

  def _holder(self):
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  @staticmethod
  def _stale(holder) -> bool:
    if holder.get("host") != socket.gethostname():
      return False  # Another host's process: cannot tell; assume alive.
    try:
      os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
      return True
    except (PermissionError, ValueError, TypeError):
      return False
    return False

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
