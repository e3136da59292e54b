"""Where an Airflow unit takes its database settings from (pgha.airflowenv), and the preflight
that refuses a place the cutover would not repoint."""

from __future__ import annotations

from typing import Any

import pytest
from pgha.compat import AirflowException
from pgha import airflowenv
from pgha.hooks.remote import CommandResult
from pgha.operators.airflow import AirflowHostPreflightOperator

CFG = "[core]\nexecutor = CeleryExecutor\n[database]\nsql_alchemy_conn = postgresql://u:p@db/airflow\n"
HOME = "/home/airflow"
CONFIG = "/home/airflow/airflow/airflow.cfg"


def problems(environment: dict[str, str], cfg: str = CFG, expected: str = CONFIG) -> list[str]:
    return airflowenv.problems("airflow-scheduler", environment, cfg, expected_config=expected, user_home=HOME)


def test_the_config_file_the_inventory_names_is_repointable() -> None:
    assert problems({"AIRFLOW_HOME": "/home/airflow/airflow", "PATH": "/usr/bin"}) == []
    assert problems({}) == []  # no AIRFLOW_HOME: ~/airflow/airflow.cfg of the unit's user
    assert problems({"AIRFLOW_CONFIG": "/home/airflow/airflow/../airflow/airflow.cfg"}) == []


@pytest.mark.parametrize("variable, place", [
    ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "environment"),
    ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "environment command"),
    ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET", "environment secret"),
    ("AIRFLOW__CORE__SQL_ALCHEMY_CONN", "environment"),  # the deprecated place Airflow still reads
    ("AIRFLOW__CELERY__RESULT_BACKEND", "environment"),
])
def test_a_setting_from_the_environment_is_refused_with_its_place(variable: str, place: str) -> None:
    found = problems({variable: "postgresql://u:p@db/airflow"})
    assert len(found) == 1
    assert variable in found[0] and f"from {place}" in found[0] and "wins over " + CONFIG in found[0]


@pytest.mark.parametrize("option, place, hint", [
    ("sql_alchemy_conn_cmd = /usr/local/bin/db-url", "config command", "command"),
    ("sql_alchemy_conn_secret = airflow/db", "config secret", "secrets backend"),
])
def test_a_command_or_secret_in_the_config_file_is_refused(option: str, place: str, hint: str) -> None:
    found = problems({}, cfg=f"[database]\n{option}\n")
    assert len(found) == 1 and f"from {place}" in found[0] and hint in found[0]


def test_the_plain_option_wins_over_its_command_as_in_airflow() -> None:
    cfg = CFG + "sql_alchemy_conn_cmd = /usr/local/bin/db-url\n"
    assert problems({}, cfg=cfg) == []


def test_a_unit_reading_another_config_file_is_refused() -> None:
    found = problems({"AIRFLOW_HOME": "/srv/airflow"})
    assert found == [f"airflow-scheduler reads /srv/airflow/airflow.cfg (from its AIRFLOW_CONFIG/AIRFLOW_HOME), "
                     f"not {CONFIG} (airflow.hosts[].config): set the inventory's config to /srv/airflow/airflow.cfg"]


def test_environments_are_parsed_as_proc_and_systemd_give_them() -> None:
    assert airflowenv.parse_environ(b"A=1\0B=x=y\0\0") == {"A": "1", "B": "x=y"}
    unit = airflowenv.parse_unit_environment(
        'AIRFLOW_HOME=/home/airflow/airflow "GREETING=a b"',
        {"/etc/default/airflow": "# comment\nAIRFLOW__DATABASE__SQL_ALCHEMY_CONN='postgresql://x'\nGREETING=c\n"})
    assert unit == {"AIRFLOW_HOME": "/home/airflow/airflow", "GREETING": "c",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://x"}


class UnitHost:
    """Stands where RemoteHook stands, for the few queries the preflight makes (an error-path test)."""

    host_name = "vm1"

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ

    def add_secret(self, *secrets: Any) -> None:
        pass

    def read_file(self, path: str) -> str | None:
        return CFG if path == CONFIG else None

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        answers = {
            "systemctl cat airflow-scheduler >/dev/null": "",
            "systemctl show -P MainPID airflow-scheduler": "4242\n",
            "cat /proc/4242/environ": "\0".join(f"{k}={v}" for k, v in self.environ.items()),
            "systemctl show -P User airflow-scheduler": "airflow\n",
            "getent passwd airflow": f"airflow:x:999:999::{HOME}:/bin/bash\n",
        }
        code = 0 if command in answers else 1
        return CommandResult("vm1", command, code, answers.get(command, ""), "", 0.01)


@pytest.mark.parametrize("environ, refused", [
    ({"AIRFLOW_HOME": "/home/airflow/airflow"}, False),
    ({"AIRFLOW_HOME": "/home/airflow/airflow", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://x"}, True),
])
def test_preflight_refuses_before_any_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                             environ: dict[str, str], refused: bool) -> None:
    from pgha_testing import loopback_inventory, write_inventory

    raw = loopback_inventory([("n1", "127.0.0.2"), ("n2", "127.0.0.3"), ("n3", "127.0.0.4")], lb_host="vm1")
    raw["airflow"]["hosts"][0]["config"] = CONFIG
    op = AirflowHostPreflightOperator(task_id="check_airflow_host", host="vm1",
                                      inventory_path=write_inventory(tmp_path, raw))
    host = UnitHost(environ)
    monkeypatch.setattr(op, "remote", lambda name: host)
    if refused:
        with pytest.raises(AirflowException, match="AIRFLOW__DATABASE__SQL_ALCHEMY_CONN.*wins over"):
            op.run({})
    else:
        result = op.run({})
        assert result["settings"]["airflow-scheduler"][0] == "[database] sql_alchemy_conn from airflow.cfg " \
                                                             "([database] sql_alchemy_conn)"
