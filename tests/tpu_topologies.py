"""Abstract TPU devices of real slice topologies (deviceless, `libtpu`): the
test of any code that must work on a pod. Skips when libtpu is absent (the
`tpu` extra installs it; CI has it)."""

import functools

import pytest

# name -> (topology, chips per host bounds): 4 chips per host, as TPU VMs.
SLICES = {
    "v5p-16": ("v5p:2x2x2", (2, 2, 1)),
    "v5p-32": ("v5p:2x2x4", (2, 2, 1)),
    "v5p-64": ("v5p:2x4x4", (2, 2, 1)),
    "v5p-128": ("v5p:4x4x4", (2, 2, 1)),
    "v5e-32": ("v5e:4x8", (2, 2, 1)),
    "v6e-16": ("v6e:4x4", (2, 2, 1)),
    "v6e-64": ("v6e:8x8", (2, 2, 1)),
}


@functools.lru_cache(maxsize=None)
def tpu_devices(name: str):
  pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is needed")
  from jax.experimental import topologies
  topo, bounds = SLICES[name]
  return tuple(topologies.get_topology_desc(
      platform="tpu", topology_name=topo, chip_config_name="default",
      chips_per_host_bounds=bounds, num_slices=1).devices)
