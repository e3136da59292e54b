"""One combination of the lab matrix (bench/lab_matrix.py runs them, one lab session each): the
lab's source major and Airflow release come from PGHA_LAB_SOURCE_MAJOR and PGHA_LAB_AIRFLOW,
the method and the cluster major from PGHA_LAB_COMBINATION ("<method>:<cluster major>"):

    PGHA_LAB_SOURCE_MAJOR=13 PGHA_LAB_COMBINATION=logical_replication:15 \
        .venv/bin/python -m pytest -q -m lab tests/lab/test_lab_combination.py

Skipped without PGHA_LAB_COMBINATION (`make test` runs its combinations as their own tests).
"""

from __future__ import annotations

import os

import pytest
from lab_fixtures import Lab
from one_migration import assert_moved_to_the_cluster, migrate

COMBINATION = os.environ.get("PGHA_LAB_COMBINATION", "")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not COMBINATION, reason="PGHA_LAB_COMBINATION is not set (bench/lab_matrix.py sets it)"),
]


def test_the_combination_migrates_every_acknowledged_write(lab: Lab) -> None:
    method, _, cluster = COMBINATION.partition(":")
    run = migrate(lab, method, int(cluster))
    assert_moved_to_the_cluster(lab, run)
