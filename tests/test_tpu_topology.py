"""poly_epo.tpu_topology: standard slice names, and the abstract devices of a
slice (4 chips per host on multi-host slices)."""

import pytest

from poly_epo import tpu_topology


def test_standard_slices_and_errors():
  assert tpu_topology.topology_name("v5p", 8) == "v5p:2x2x2"
  assert tpu_topology.topology_name("v5p", 64) == "v5p:4x4x4"
  assert tpu_topology.topology_name("v6e", 8) == "v6e:2x4"
  assert tpu_topology.topology_name("v5e", 16) == "v5e:4x4"
  assert tpu_topology.topology_name("v5p", 0, "2x2x4") == "v5p:2x2x4"
  assert tpu_topology.chips("4x4x8") == 128
  with pytest.raises(ValueError, match="--devices=12"):
    tpu_topology.topology_name("v5p", 12)
  with pytest.raises(ValueError, match="has 8 chips"):
    tpu_topology.topology_name("v5p", 16, "2x2x2")
  with pytest.raises(ValueError, match="not a TPU"):
    tpu_topology.topology_name("h100", 8)


@pytest.mark.parametrize("chip, n, hosts", [("v5p", 8, 2), ("v5p", 64, 16),
                                            ("v6e", 8, 1), ("v5e", 16, 4)])
def test_devices_of_a_slice(chip, n, hosts):
  pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is needed")
  devices = tpu_topology.devices(chip, n)
  assert len(devices) == n
  assert len({d.process_index for d in devices}) == hosts
  assert devices[0].platform == "tpu"


def test_plan_flags_are_checked_with_or_without_libtpu():
  """`validate` needs no libtpu: the same one-line errors everywhere."""
  shapes = tuple(tpu_topology.SHAPES)
  assert tpu_topology.validate("v5p", 0, "2x2x2", shapes) == 8
  assert tpu_topology.validate("h100", 3, "", shapes) == 3
  assert tpu_topology.validate("h100", 0, "", shapes) == 0
  for chip, n, topo, msg in [
      ("h100", -4, "", "--devices=-4: must be >= 1"),
      ("v5p", 0, "2xZ", "--topology='2xZ': give chips per axis"),
      ("v5p", 8, "2x2x1", "--topology=2x2x1 has 4 chips, not --devices=8"),
      ("v5p", 0, "2x4", "a v5p slice has 3 axes"),
      ("h100", 0, "2x2", "only for TPU chips"),
      ("v5p", 12, "", "--devices=12: no standard v5p slice")]:
    with pytest.raises(ValueError, match=msg):
      tpu_topology.validate(chip, n, topo, shapes)
