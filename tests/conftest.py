"""Shared test fixtures: paths to the real data fixtures in ../shared/data."""

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.fail(f"real data fixtures not found at {SHARED_DATA} (expected ../shared/data beside the checkout)")
  return SHARED_DATA


def pytest_configure(config):
  # The same settings as .ci/run, so that the README's test command behaves the same without it.
  # (Set here, before any test module imports jax.)
  import os

  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/cxrjax/jax"))
  os.environ.setdefault("KERAS_BACKEND", "jax")
  # The CPU only: with libtpu installed (the test extra's tpu-compile, tests/jobs/test_compile.py) JAX would also
  # try to start a TPU backend, and log errors on stderr that tests reading stderr see. libtpu still
  # describes TPU slices to compile for.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
