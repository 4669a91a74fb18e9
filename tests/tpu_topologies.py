"""Abstract TPU devices of real slice topologies (deviceless, `libtpu`): the
test of any code that must work on a pod. Skips when libtpu is absent (the
`tpu` extra installs it; CI has it)."""

import functools

import pytest

from poly_epo import tpu_topology

# Slice name (v5p counts TensorCores, two per chip) -> (chip, chips); every
# multi-host slice has 4 chips per host, as TPU VMs do.
SLICES = {
    "v5p-16": ("v5p", 8), "v5p-32": ("v5p", 16), "v5p-64": ("v5p", 32),
    "v5p-128": ("v5p", 64), "v5e-32": ("v5e", 32), "v6e-16": ("v6e", 16),
    "v6e-64": ("v6e", 64),
}


@functools.lru_cache(maxsize=None)
def tpu_devices(name: str):
  pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is needed")
  return tuple(tpu_topology.devices(*SLICES[name]))
