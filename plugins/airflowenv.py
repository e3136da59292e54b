"""Where an Airflow unit really takes its database settings from.

Airflow looks a setting up in this order and stops at the first hit: the environment
(``AIRFLOW__SECTION__KEY``, then ``..._CMD``, then ``..._SECRET``), the config file (the
option, then ``key_cmd``, then ``key_secret``), the defaults. The config file is the one
``AIRFLOW_CONFIG`` names, else ``$AIRFLOW_HOME/airflow.cfg``.

pgha repoints the option in the config file. A value found earlier in that order would
silently win over it (``db check`` passes against the cluster, the units come back on the
source), so any other place is refused before anything changes, naming the place and what
the operator can do about it.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Mapping

from pgha import airflowcfg

# The settings the cutover moves: (section, key, the deprecated place Airflow still reads).
DATABASE_SETTINGS = (
    ("database", "sql_alchemy_conn", ("core", "sql_alchemy_conn")),
    ("celery", "result_backend", None),
)
CONFIG_FILE = "airflow.cfg"


@dataclass(frozen=True)
class SettingPlace:
    """Where one setting comes from for one unit."""

    section: str
    key: str
    place: str  # CONFIG_FILE, "environment", "environment command", "environment secret",
    # "config command", "config secret", "default"
    name: str  # the variable or option holding it

    @property
    def repointable(self) -> bool:
        return self.place in (CONFIG_FILE, "default")

    def __str__(self) -> str:
        return f"[{self.section}] {self.key} from {self.place} ({self.name})"


def env_var(section: str, key: str) -> str:
    return f"AIRFLOW__{section.upper()}__{key.upper()}"


def place_of(section: str, key: str, deprecated: tuple[str, str] | None,
             environment: Mapping[str, str], config_text: str) -> SettingPlace:
    """Where Airflow takes ``[section] key`` from, given the unit's environment and its config file."""
    names = [(section, key)] + ([deprecated] if deprecated else [])
    for s, k in names:
        for suffix, place in (("", "environment"), ("_CMD", "environment command"),
                              ("_SECRET", "environment secret")):
            if env_var(s, k) + suffix in environment:
                return SettingPlace(section, key, place, env_var(s, k) + suffix)
    for suffix, place in (("", CONFIG_FILE), ("_cmd", "config command"), ("_secret", "config secret")):
        for s, k in names:
            if airflowcfg.get_option(config_text, s, k + suffix) is not None:
                return SettingPlace(section, key, place, f"[{s}] {k}{suffix}")
    return SettingPlace(section, key, "default", "")


def config_file(environment: Mapping[str, str], user_home: str) -> str:
    """The config file a process with this environment reads."""
    if environment.get("AIRFLOW_CONFIG"):
        return posixpath.normpath(environment["AIRFLOW_CONFIG"])
    home = environment.get("AIRFLOW_HOME") or posixpath.join(user_home, "airflow")
    return posixpath.normpath(posixpath.join(home, CONFIG_FILE))


def problems(unit: str, environment: Mapping[str, str], config_text: str, *, expected_config: str,
             user_home: str) -> list[str]:
    """Why the cutover cannot repoint ``unit`` by editing ``expected_config`` (empty: it can)."""
    found = []
    reads = config_file(environment, user_home)
    if reads != posixpath.normpath(expected_config):
        found.append(f"{unit} reads {reads} (from its AIRFLOW_CONFIG/AIRFLOW_HOME), not {expected_config} "
                     f"(airflow.hosts[].config): set the inventory's config to {reads}")
    for section, key, deprecated in DATABASE_SETTINGS:
        place = place_of(section, key, deprecated, environment, config_text)
        if not place.repointable:
            found.append(f"{unit} takes {place}, which wins over {expected_config}: {advice(place)}")
    return found


def advice(place: SettingPlace) -> str:
    where = f"[{place.section}] {place.key}"
    if place.place == "environment":
        return (f"remove {place.name} from the unit's environment (Environment= or EnvironmentFile=) and "
                f"put the URL in {where} of the config file, which pgha repoints")
    if place.place in ("environment command", "config command"):
        return (f"pgha cannot change what the command {place.name} prints: put the URL in {where} of the "
                f"config file instead, or change the command's output yourself after the cutover")
    return (f"the URL lives in the secrets backend ([secrets] backend) under the key {place.name} names; pgha "
            f"does not write to secrets backends: put the URL in {where} of the config file instead")


def parse_environ(raw: bytes | str) -> dict[str, str]:
    """A process environment as /proc/PID/environ holds it (NUL-separated NAME=value)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    pairs = (item.split("=", 1) for item in text.split("\0") if "=" in item)
    return {name: value for name, value in pairs}


def parse_unit_environment(assignments: str, files: Mapping[str, str]) -> dict[str, str]:
    """A stopped unit's environment: ``systemctl show -P Environment`` then its EnvironmentFiles
    (which override Environment=, as systemd applies them)."""
    environment = dict(item.split("=", 1) for item in shlex.split(assignments) if "=" in item)
    for text in files.values():
        for line in text.splitlines():
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            name, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            environment[name.strip()] = value
    return environment
