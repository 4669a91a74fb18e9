"""The device mesh and every partitioning rule, in one place.

Mesh axes: `data` (batch), `fsdp` (batch, and parameter dims sharded ZeRO-3
style), `tensor` (heads / MLP width / vocab). Their sizes multiply to the
device count; on a multi-host TPU pod call `jax.distributed.initialize()`
first (`poly_epo.train` does when `config.distributed` is set).

A dimension is sharded only when the mesh axis divides it; otherwise it is
replicated, so the same rules serve a 0.4M-parameter model on 8 CPU devices
and a 4B model on a pod.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # The batch dimension is split over both.

# Parameter name -> spec of its dims (see models/transformer.py for shapes).
_PARAM_RULES = {
    "embed": ("tensor", "fsdp"),  # [V, D]
    "lm_head": ("tensor", "fsdp"),  # [V, D]
    "qkv_proj": ("fsdp", "tensor", None, None),  # [D, K, G+2, H]
    "qkv_bias": ("tensor", None, None),  # [K, G+2, H]
    "o_proj": ("tensor", None, "fsdp"),  # [N, H, D]
    "gate_up_proj": ("fsdp", None, "tensor"),  # [D, 2, F]
    "gate_up_bias": (None, "tensor"),  # [2, F]
    "down_proj": ("tensor", "fsdp"),  # [F, D]
}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; errors name the config fields.

  On one process the devices are laid out by `jax.make_mesh` (physical
  topology order). When the devices belong to several processes (a
  multi-host TPU slice, several GPU nodes) they are ordered process-major:
  each process's devices form one contiguous run of the flattened
  (data, fsdp) batch axes, in process order, so every host loads one
  contiguous block of prompts; within a host the order is the physical
  (ICI) one, with each `tensor` group made of neighbouring chips.
  `data=0` means every device not used by fsdp x tensor.
  """
  devices = list(devices if devices is not None else jax.devices())
  data = resolve_data_axis(data, fsdp, tensor, len(devices))
  sizes = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor}
  for name, size in sizes.items():
    if size < 1:
      raise ValueError(f"config.{name}={size} must be >= 1")
  if data * fsdp * tensor != len(devices):
    raise ValueError(
        f"config.mesh.data x fsdp x tensor = {data} x {fsdp} x {tensor} = "
        f"{data * fsdp * tensor}, but there are {len(devices)} devices")
  types = (AxisType.Auto,) * 3
  if len({d.process_index for d in devices}) == 1:
    return jax.make_mesh((data, fsdp, tensor), AXES, devices=devices,
                         axis_types=types)
  grid = process_major_devices(devices, tensor)
  return jax.sharding.Mesh(grid.reshape(data, fsdp, tensor), AXES,
                           axis_types=types)


def _physical_key(d):
  coords = tuple(getattr(d, "coords", None) or ())
  return (tuple(reversed(coords)), getattr(d, "core_on_chip", 0), d.id)


def process_major_devices(devices, tensor: int) -> np.ndarray:
  """Devices as a [rows, tensor] array: processes in index order, each
  process's devices in physical order (x fastest, so a tensor group is a run
  of neighbouring chips). Raises when a tensor group would span hosts: a
  batch row would then belong to several processes."""
  by_proc: dict[int, list] = {}
  for d in devices:
    by_proc.setdefault(d.process_index, []).append(d)
  counts = {len(v) for v in by_proc.values()}
  if len(counts) != 1:
    raise ValueError("config.mesh: processes hold different numbers of "
                     f"devices ({sorted(counts)}); cannot split the batch")
  per = counts.pop()
  if per % tensor:
    raise ValueError(
        f"config.mesh.tensor={tensor} must divide the {per} devices of each "
        "process (a tensor group spanning hosts would give one batch row to "
        "several processes); use tensor parallelism within a host")
  order = [d for p in sorted(by_proc)
           for d in sorted(by_proc[p], key=_physical_key)]
  return np.array(order, dtype=object).reshape(-1, tensor)


def process_row_blocks(mesh, n: int) -> dict[int, tuple[int, int]]:
  """{process index: [start, stop)} of the rows of an n-row batch laid out
  over the mesh's batch axes; raises ValueError naming the process whose
  rows are not one contiguous block, or blocks out of process order. Works
  on any devices (abstract TPU topologies included), not only this
  process's."""
  idx = batch_sharding(mesh, 1).devices_indices_map((n,))
  spans: dict[int, set] = {}
  for dev, index in idx.items():
    s = index[0]
    spans.setdefault(dev.process_index, set()).add(
        (s.start or 0, n if s.stop is None else s.stop))
  blocks = {}
  for proc, runs in spans.items():
    runs = sorted(runs)
    start, stop = runs[0][0], runs[-1][1]
    if sum(b - a for a, b in runs) != stop - start:
      raise ValueError(
          f"config.mesh: process {proc}'s devices do not hold one contiguous "
          "block of the batch (the mesh must be process-major; "
          "sharding.make_mesh builds one)")
    blocks[proc] = (start, stop)
  ordered = [blocks[p] for p in sorted(blocks)]
  if any(a[1] != b[0] for a, b in zip(ordered, ordered[1:])) or \
      ordered[0][0] != 0 or ordered[-1][1] != n:
    raise ValueError("config.mesh: the processes' blocks of the batch are "
                     f"not in process order ({ordered})")
  return blocks


def resolve_data_axis(data: int, fsdp: int, tensor: int, n_devices: int
                      ) -> int:
  """`data=0` means every device not used by fsdp x tensor."""
  if data == 0 and fsdp >= 1 and tensor >= 1:
    return max(n_devices // (fsdp * tensor), 1)
  return data


def _fit(spec, shape, mesh) -> P:
  """Drop mesh axes that do not divide their dimension."""
  out = []
  for axis, dim in zip(spec, shape):
    names = axis if isinstance(axis, tuple) else (axis,)
    size = int(np.prod([mesh.shape[a] for a in names if a]))
    out.append(axis if axis and dim % size == 0 else None)
  return P(*out)


def param_spec(path, shape, mesh) -> P:
  """The spec of one parameter from its name (the last path element)."""
  name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
  rule = _PARAM_RULES.get(name)
  if rule is None or len(rule) != len(shape):
    return P()  # Norm scales, small biases: replicated.
  return _fit(rule, shape, mesh)


def tree_shardings(tree, mesh):
  """NamedShardings for a params-like tree (optimizer states included: their
  leaves mirror the params' paths; scalars such as Adam's count replicate)."""
  def one(path, leaf):
    shape = getattr(leaf, "shape", ())
    if not shape:
      return NamedSharding(mesh, P())
    names = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    names = [n for n in names if isinstance(n, str) and n != "value"]
    return NamedSharding(mesh, param_spec(names[-1:] or [""], shape, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def decode_shardings(tree, mesh):
  """The sampler's weight layout: as `tree_shardings` without the fsdp
  axis, so every device of a tensor group holds the whole weights of its
  slice and a decode step needs no collective over (data, fsdp)."""
  def drop_fsdp(s: NamedSharding) -> NamedSharding:
    spec = [None if a == "fsdp" else a for a in s.spec]
    return NamedSharding(mesh, P(*spec))
  return jax.tree.map(drop_fsdp, tree_shardings(tree, mesh))


def batch_sharding(mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain_rows(x):
  """Activations [rows, ...] split over (data, fsdp) when traced under a
  mesh (`jax.sharding.use_abstract_mesh`, as the update and the sampler do);
  unchanged otherwise. Without it XLA may follow the FSDP weights and keep
  whole micro-batches, not one slice of rows, on every device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH) <= set(mesh.axis_names):
    return x
  if set(BATCH) & set(mesh.manual_axes):  # Inside the engine's shard_map.
    return x
  if x.shape[0] % int(np.prod([mesh.shape[a] for a in BATCH])):
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH, *([None] *
                                                        (x.ndim - 1))))


def replicate_auto(x):
  """`x` whole on every device of the axes still automatic (inside the
  engine's shard_map over the batch axes: "tensor"). The engine draws each
  token from whole logits: the inverse-CDF draw over vocabulary-sharded
  logits makes XLA insert collective-permutes over all devices inside the
  per-device decode loop, which deadlock on XLA:CPU once batch shards run
  different numbers of steps; gathering within the tensor group does not."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or all(a in mesh.manual_axes for a in mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, P(*([None] * x.ndim)))


def batch_shards(mesh) -> int:
  """How many pieces the batch dimension is split into."""
  return int(np.prod([mesh.shape[a] for a in BATCH]))


def global_batch(mesh, local):
  """A global array, leading dim sharded over (data, fsdp), from this
  process's contiguous block of rows (every process passes its own block;
  on one process this is a `device_put`)."""
  local = np.asarray(local)
  return jax.make_array_from_process_local_data(
      batch_sharding(mesh, local.ndim), local)


def local_rows(mesh, x) -> np.ndarray:
  """This process's block of rows of a global array (all rows on a single
  process), as NumPy: the array is first laid out over (data, fsdp) on its
  leading dim, the inverse of `global_batch`."""
  if x.is_fully_addressable:
    return np.asarray(x)
  x = _to_batch_layout(mesh, x)
  blocks = {}
  for shard in x.addressable_shards:
    blocks.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([blocks[k] for k in sorted(blocks)])


def _to_batch_layout(mesh, x):
  return _relayout(batch_sharding(mesh, x.ndim))(x)


@functools.lru_cache(maxsize=None)
def _relayout(target: NamedSharding):
  """One jitted identity per target layout (built once, not per call)."""
  return jax.jit(lambda y: y, out_shardings=target)


def host_local_to_global(mesh, tree):
  """`global_batch` over every leaf of a tree."""
  return jax.tree.map(lambda x: global_batch(mesh, x), tree)
