"""Test set-up: 8 forced CPU devices (must happen before jax is imported)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Deviceless TPU compiles (libtpu) may happen in the test process and in
# `python -m poly_epo.plan` subprocesses at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
