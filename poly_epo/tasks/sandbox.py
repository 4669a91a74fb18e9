"""Answer checking in a pool of worker processes with a hard deadline each.

Model output reaches math-verify / sympy, where one hostile answer
(`\\boxed{5^{5^{5^{5^{5}}}}}`, a 10,000-deep nesting) can take seconds or
forever; math-verify's own timeout is a signal that only works in a main
thread. `AnswerPool.map(fn, jobs)` runs `fn(*job)` in `workers` processes
(forked from a forkserver that has already imported the checker, so a
replacement starts in milliseconds); a job still running after `deadline`
seconds has its worker killed and replaced, scores `default`, and is counted
in `timeouts`. Results come back in job order.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import wait

_CTX = None


def _context():
  global _CTX
  if _CTX is None:
    _CTX = mp.get_context("forkserver")
    _CTX.set_forkserver_preload(["poly_epo.tasks.math_check"])
  return _CTX


def _worker(conn):
  while True:
    try:
      msg = conn.recv()
    except EOFError:
      return
    if msg is None:
      return
    job_id, fn, args = msg
    try:
      result = ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - reported to the parent.
      result = ("error", repr(e)[:200])
    conn.send((job_id, result))


class _Slot:

  def __init__(self):
    self.conn, child = _context().Pipe()
    self.proc = _context().Process(target=_worker, args=(child,), daemon=True)
    self.proc.start()
    child.close()
    self.job = None  # (job_id, started_at)

  def kill(self):
    self.proc.kill()
    self.proc.join(1.0)
    self.conn.close()


class AnswerPool:

  def __init__(self, workers: int, deadline: float):
    if workers < 1 or deadline <= 0:
      raise ValueError(f"answer pool: workers={workers} must be >= 1 and "
                       f"deadline={deadline} > 0")
    self.workers, self.deadline = workers, deadline
    self.slots: list[_Slot] = []
    self.timeouts = 0
    self.errors = 0

  def map(self, fn, jobs, default=0.0) -> list:
    """[fn(*job) for job in jobs], each under the deadline (`default` when
    it runs out or raises)."""
    jobs = list(jobs)
    results = [default] * len(jobs)
    if not jobs:
      return results
    while len(self.slots) < min(self.workers, len(jobs)):
      self.slots.append(_Slot())
    todo = list(range(len(jobs)))[::-1]
    busy: dict = {}  # conn -> slot
    while todo or busy:
      for slot in self.slots:
        if slot.job is None and todo:
          i = todo.pop()
          slot.conn.send((i, fn, jobs[i]))
          slot.job = (i, time.monotonic())
          busy[slot.conn] = slot
      now = time.monotonic()
      first_due = min(s.job[1] for s in busy.values()) + self.deadline
      for conn in wait(list(busy), timeout=max(first_due - now, 0.0)):
        slot = busy.pop(conn)
        try:
          job_id, (status, value) = conn.recv()
        except (EOFError, OSError):  # The worker died: replace it.
          self.errors += 1
          self._replace(slot)
          continue
        if status == "ok":
          results[job_id] = value
        else:
          self.errors += 1
        slot.job = None
      now = time.monotonic()
      for conn, slot in list(busy.items()):
        if now - slot.job[1] > self.deadline:
          self.timeouts += 1
          busy.pop(conn)
          self._replace(slot)
    return results

  def _replace(self, slot: _Slot) -> None:
    slot.kill()
    self.slots[self.slots.index(slot)] = _Slot()

  def close(self) -> None:
    for slot in self.slots:
      try:
        slot.conn.send(None)
      except OSError:
        pass
      slot.kill()
    self.slots = []

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 - interpreter shutdown.
      pass
