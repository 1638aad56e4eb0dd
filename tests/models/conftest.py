"""The `slow` marker of the model matrix: its slowest cases (still run by `make test`;
`pytest -m "not slow" tests/models` leaves them out while iterating)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: one of the model matrix's slowest cases")
