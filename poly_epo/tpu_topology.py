"""TPU slices as abstract devices, for ahead-of-time compiles on any machine.

`devices(chip, n, topology)` returns the devices of a TPU slice from
`jax.experimental.topologies.get_topology_desc` (deviceless: `libtpu` is
needed, a TPU is not), each with its process index (4 chips per host, as on
TPU VMs), so `sharding.make_mesh` and `jax.jit(...).lower(...).compile()`
run the real TPU compiler for that slice. The planner (`poly_epo.plan`) and
the tests use it.
"""

from __future__ import annotations

import importlib.util

# Standard slice shapes by chip count.
_V5P = {1: "1x1x1", 2: "1x2x1", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
        128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
       128: "8x16", 256: "16x16"}
SHAPES = {"v5p": _V5P, "v5e": _2D, "v6e": _2D}


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def _dims(topology: str) -> list[int]:
  parts = topology.split("x")
  if not all(p.isdigit() and int(p) >= 1 for p in parts) or len(parts) < 2:
    raise ValueError(f"--topology={topology!r}: give chips per axis like "
                     "2x2x2 (v5p) or 2x4 (v5e, v6e), each >= 1")
  return [int(p) for p in parts]


def chips(topology: str) -> int:
  n = 1
  for d in _dims(topology):
    n *= d
  return n


def validate(chip: str, n: int, topology: str, tpu_chips) -> int:
  """`plan`'s --chip / --devices / --topology checked the same way with or
  without libtpu (ValueError naming the flag); returns the device count
  (0: the config's mesh decides)."""
  if n < 0:
    raise ValueError(f"--devices={n}: must be >= 1 (or 0: the config's "
                     "mesh)")
  if topology:
    if chip not in tpu_chips:
      raise ValueError(f"--topology={topology}: only for TPU chips "
                       f"({', '.join(tpu_chips)}), not --chip={chip}")
    dims = _dims(topology)
    want = 3 if chip == "v5p" else 2
    if len(dims) != want:
      raise ValueError(f"--topology={topology}: a {chip} slice has {want} "
                       "axes")
  if chip in tpu_chips and (n or topology):
    topology_name(chip, n, topology)  # Standard slice; chips agree.
  return n or (chips(topology) if topology else 0)


def topology_name(chip: str, n: int, topology: str = "") -> str:
  if chip not in SHAPES:
    raise ValueError(f"--chip={chip!r} is not a TPU ({', '.join(SHAPES)})")
  if not topology:
    if n not in SHAPES[chip]:
      raise ValueError(
          f"--devices={n}: no standard {chip} slice of {n} chips; one of "
          f"{sorted(SHAPES[chip])}, or give --topology")
    topology = SHAPES[chip][n]
  elif n and chips(topology) != n:
    raise ValueError(f"--topology={topology} has {chips(topology)} chips, "
                     f"not --devices={n}")
  return f"{chip}:{topology}"


def devices(chip: str, n: int = 0, topology: str = ""):
  """The abstract devices of a `chip` slice of `n` chips (or `topology`)."""
  from jax.experimental import topologies
  name = topology_name(chip, n, topology)
  shape = name.split(":")[1]
  dims = [int(d) for d in shape.split("x")] + [1]
  # One host: the whole slice when it has at most 4 chips (or a v5e / v6e
  # 2x4 single-host slice), else 2x2 chips per host, as on TPU VMs.
  single = chips(shape) <= 4 or (chip != "v5p" and shape == "2x4")
  bounds = tuple(dims[:3]) if single else (2, 2, 1)
  return list(topologies.get_topology_desc(
      platform="tpu", topology_name=name, chip_config_name="default",
      chips_per_host_bounds=bounds, num_slices=1).devices)


def describe(devs) -> str:
  procs = len({d.process_index for d in devs})
  return f"{devs[0].device_kind} x {len(devs)} chips on {procs} hosts"
