"""Shared test fixtures: paths to the real data fixtures in ../shared/data."""

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.fail(f"real data fixtures not found at {SHARED_DATA} (expected ../shared/data beside the checkout)")
  return SHARED_DATA
