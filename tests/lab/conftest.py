"""Lab tests: the lab boots once per session and is torn down at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from lab_fixtures import Lab
from lab_fixtures import lab as run_lab


@pytest.fixture(scope="session")
def lab_session() -> Iterator[None]:
    run_lab("up")
    run_lab("provision")
    try:
        yield
    finally:
        if os.environ.get("PGHA_LAB_KEEP") != "1":
            run_lab("down")


@pytest.fixture(scope="session")
def lab_hosts(lab_session: None) -> Lab:
    return Lab()


@pytest.fixture(scope="module")
def lab(lab_hosts: Lab) -> Lab:
    return lab_hosts


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The failover drills last: they drill the cluster the migration tests leave behind; then the secret
    scan, which searches the hosts all of them leave."""
    last = ("lab/test_failover_drill.py", "lab/test_secrets_left_on_hosts.py")
    items.sort(key=lambda item: next((i + 1 for i, name in enumerate(last) if name in item.nodeid), 0))
