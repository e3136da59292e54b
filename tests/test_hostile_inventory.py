"""Hostile inventories: every string field is typed, and a value that could break out of a
command or a config file is refused with the field's name before any host is reached.

The fields are found by walking the inventory (and the schema), not listed here: a new field
is covered as soon as it appears in the schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgha.inventory
import pytest
import yaml
from pgha.inventory import INCLUDE_DIR, SCHEMA_PATH, InventoryError, load_inventory, parse_inventory
from pgha.operators.host import PrepareHostOperator
from pgha.osfamily import DEBIAN
from pgha.render import node_context, render
from pgha_testing import shipped_inventory, write_inventory
from recording_host import DEBIAN_12, Fleet, fleet_inventory

HOSTILE = ["\n", "'", '"', "$(id)", "`id`", ";"]

Path_ = tuple[Any, ...]  # a field's path: keys and list indexes
KEY = object()  # marks "the key of this mapping entry" at the end of a path


def full_inventory() -> dict[str, Any]:
    """The shipped inventory with every optional string field set (valid)."""
    raw = shipped_inventory()
    raw["hosts"][0]["os_family"] = "debian"
    raw["postgres"]["data_dir"] = "/var/lib/postgresql/15/main"
    raw["etcd"]["data_dir"] = "/var/lib/etcd/pgha"
    raw["etcd"]["auth"] = {"enabled": True, "root_conn_id": "pgha_etcd_root", "patroni_conn_id": "pgha_etcd_patroni",
                           "pgha_conn_id": "pgha_etcd_pgha"}
    raw["etcd"]["install"] = {
        "method": "tarball", "version": "3.5.9", "sha256": "a" * 64,
        "url": "https://github.com/etcd-io/etcd/releases/download/v3.5.9/etcd-v3.5.9-linux-amd64.tar.gz",
    }
    raw["haproxy"].update(stats_socket="/run/haproxy/admin.sock", config="/etc/haproxy/haproxy.cfg",
                          state_file="/var/lib/haproxy/server-state", connect_timeout="4s")
    raw["packages"] = {"apt_proxy": "http://proxy.example:3142", "pip_index_url": "https://pypi.example/simple",
                       "pip_find_links": "http://192.0.2.10:3141/"}
    raw["tls"] = {"enabled": True, "ca_conn_id": "pgha_ca", "days": 365, "renew_before_days": 30,
                  "haproxy_names": ["db.example.org"]}
    raw["drill"] = {
        "schedule": "0 3 * * *", "probe_host": "vm1", "probe_python": "/usr/bin/python3",
        "probe_conn_id": "pgha_airflow_db", "state_dir": "/var/lib/pgha/drill",
        "fault_injector": {"ssh_conn_id": "pgha_fault_injector", "name": "hypervisor"},
        "inject_commands": {"host_crash": {"inject": "virsh destroy {node}", "heal": "virsh start {node}"},
                            "host_isolate": {"inject": "isolate --address={address}", "heal": "heal {node}"}},
    }
    raw["notify"] = {"notifier": "smtp", "conn_id": "smtp_default", "to": ["ops@example.com"],
                     "from": "airflow@example.com", "kwargs": {"cc": 1}}
    return raw


def string_fields(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Every string in the document, and every key of a free-form mapping (postgres.parameters)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from string_fields(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            if path and path[-1] in ("parameters", "kwargs"):
                yield (*path, key, KEY)
            yield from string_fields(item, (*path, key))


def shown(path: Path_) -> str:
    """The field as the loader names it: hosts[2].address (a key: the mapping that holds it)."""
    if path[-1] is KEY:
        path = path[:-2]
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def with_value(raw: dict[str, Any], path: Path_, change: Any) -> dict[str, Any]:
    """A deep copy of ``raw`` whose field at ``path`` is ``change(old)`` (a key: renamed)."""
    out = copy.deepcopy(raw)
    parent = out
    steps = path[:-2] if path[-1] is KEY else path[:-1]
    for step in steps:
        parent = parent[step]
    if path[-1] is KEY:
        parent[change(path[-2])] = parent.pop(path[-2])
    else:
        parent[path[-1]] = change(parent[path[-1]])
    return out


FULL = full_inventory()
FIELDS = list(string_fields(FULL))


def test_the_full_inventory_is_valid() -> None:
    parse_inventory(FULL, "full.yml")


@pytest.mark.parametrize("path", FIELDS, ids=[shown(p) + (".<key>" if p[-1] is KEY else "") for p in FIELDS])
def test_every_hostile_value_is_refused_naming_the_field(path: Path_) -> None:
    for hostile in HOSTILE:
        for change in (lambda v: v + hostile, lambda v: hostile + v):
            raw = with_value(FULL, path, change)
            with pytest.raises(InventoryError) as caught:
                parse_inventory(raw, "hostile.yml")
            assert f"inventory field {shown(path)}: " in str(caught.value), (hostile, str(caught.value))


def test_the_error_names_field_and_value_as_written() -> None:
    raw = with_value(FULL, ("hosts", 2, "address"), lambda v: "10.0.0.1\n")
    with pytest.raises(InventoryError) as caught:
        parse_inventory(raw, "hostile.yml")
    assert "inventory field hosts[2].address: '10.0.0.1\\n' is not an IP address" in str(caught.value)


def _schema_strings(node: dict[str, Any], defs: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, schema) of every string-valued field the schema allows."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "string" in types or "enum" in node:
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _schema_strings(child, defs, f"{path}.{key}" if path else key)
    if "items" in node:
        yield from _schema_strings(node["items"], defs, f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_strings(node["additionalProperties"], defs, f"{path}.*")
    if "propertyNames" in node:
        yield f"{path}.<key>", {"type": "string", **node["propertyNames"]}


SCHEMA = json.loads(SCHEMA_PATH.read_text())
SCHEMA_STRINGS = dict(_schema_strings(SCHEMA, SCHEMA["$defs"], ""))


def _template(path: Path_) -> str:
    """hosts[2].address -> hosts[].address; a postgres.parameters value -> .*, its key -> .<key>"""
    out = ""
    for i, part in enumerate(path):
        if part is KEY:
            out = out.rsplit(".", 1)[0] + ".<key>"
        elif isinstance(part, int):
            out += "[]"
        elif i and path[i - 1] in ("parameters", "kwargs"):
            out += ".*"
        else:
            out += f".{part}" if out else part
    return _one_install(out)


def _one_install(template: str) -> str:
    """The install fields are one type ($defs/install) whichever component holds them."""
    return re.sub(r"^(etcd|patroni|haproxy)\.install\.", "<component>.install.", template)


def test_every_string_field_of_the_schema_is_typed() -> None:
    untyped = [path for path, node in SCHEMA_STRINGS.items() if not ({"format", "enum", "const"} & node.keys())]
    assert not untyped, f"string fields without a format (a check in pgha.inventory): {untyped}"


def test_the_full_inventory_sets_every_string_field_of_the_schema() -> None:
    """So the hostile test above walks them all: a new field must be added to full_inventory()."""
    walked = {_template(p) for p in FIELDS}
    assert {_one_install(path) for path in SCHEMA_STRINGS} - walked == set()


def test_no_pattern_lets_a_trailing_newline_through() -> None:
    patterns = re.findall(r'"pattern":\s*"([^"]*)"', SCHEMA_PATH.read_text())
    assert all(p.endswith(r"\\Z") for p in patterns), patterns
    source = Path(pgha.inventory.__file__).read_text()
    assert not re.search(r"\.(match|search)\(", source), "pgha.inventory matches types with fullmatch only"


# ---------------------------------------------------------------- the operator refuses before any host


SAMPLE = [
    (("hosts", 1, "address"), "\n"),
    (("hosts", 0, "name"), ";"),
    (("cluster", "name"), "$(id)"),
    (("packages", "apt_proxy"), "'"),
    (("patroni", "install", "venv"), "`id`"),
    (("airflow", "hosts", 0, "config"), '"'),
    (("airflow", "hosts", 0, "units", 0), "\n"),
    (("postgres", "parameters", "wal_level"), "'"),
]


@pytest.mark.parametrize(("path", "hostile"), SAMPLE, ids=[f"{shown(p)}+{h!r}" for p, h in SAMPLE])
def test_host_preparation_stops_before_any_command(fleet: Fleet, tmp_path: Path, path: Path_,
                                                   hostile: str) -> None:
    def hostile_edit(raw: dict[str, Any]) -> None:
        raw["packages"] = {"apt_proxy": "http://proxy.example:3142"}
        raw["patroni"] = {"install": {"method": "pip", "version": "4.1.5", "venv": "/opt/patroni"}}
        raw["postgres"] = {"parameters": {"wal_level": "replica"}}
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] += hostile

    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, edit=hostile_edit)
    with pytest.raises(InventoryError, match=re.escape(f"inventory field {shown(path)}: ")):
        PrepareHostOperator(task_id="prepare_host", host="psg1", inventory_path=inventory).execute({})
    assert {name: host.commands for name, host in fleet.hosts.items() if host.commands} == {}


# ---------------------------------------------------------------- where an inventory may be read from


@pytest.fixture
def allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PGHA_INVENTORY_DIR set to one directory holding a valid inventory; PGHA_INVENTORY unset."""
    directory = tmp_path / "allowed"
    directory.mkdir()
    write_inventory(directory, shipped_inventory())
    monkeypatch.setenv("PGHA_INVENTORY_DIR", str(directory))
    monkeypatch.delenv("PGHA_INVENTORY", raising=False)
    return directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    return Path(write_inventory(directory, shipped_inventory()))


def test_an_inventory_in_the_allowed_directory_loads(allowed: Path) -> None:
    assert load_inventory(allowed / "inventory.yml").database_nodes == ("psg1", "psg2", "psg3")


def test_the_packaged_example_loads_without_configuration(allowed: Path) -> None:
    assert load_inventory("include/inventory.yml").path == str(INCLUDE_DIR / "inventory.yml")
    assert load_inventory().path == str(INCLUDE_DIR / "inventory.yml")


def test_a_path_outside_is_refused(allowed: Path, outside: Path) -> None:
    with pytest.raises(InventoryError, match=r"\(inventory_path\): .* is outside the inventory directories"):
        load_inventory(outside)


def test_dot_dot_out_of_the_allowed_directory_is_refused(allowed: Path, outside: Path) -> None:
    sneaky = f"{allowed}/../outside/inventory.yml"
    with pytest.raises(InventoryError, match=re.escape(f"(resolved: '{outside}')")):
        load_inventory(sneaky)


def test_a_relative_path_cannot_climb_out_of_the_package(allowed: Path) -> None:
    with pytest.raises(InventoryError, match="is outside the inventory directories"):
        load_inventory("../../../../../../../../etc/passwd")


def test_a_symlink_pointing_outside_is_refused(allowed: Path, outside: Path) -> None:
    (allowed / "linked.yml").symlink_to(outside)
    with pytest.raises(InventoryError, match=re.escape(f"(resolved: '{outside}')")):
        load_inventory(allowed / "linked.yml")
    (allowed / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(InventoryError, match="is outside the inventory directories"):
        load_inventory(allowed / "linked-dir" / "inventory.yml")


def test_a_symlink_within_the_allowed_directory_loads(allowed: Path) -> None:
    (allowed / "current.yml").symlink_to(allowed / "inventory.yml")
    assert load_inventory(allowed / "current.yml").path == str(allowed / "inventory.yml")


def test_the_directory_of_pgha_inventory_is_allowed(allowed: Path, outside: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHA_INVENTORY", str(outside))
    assert load_inventory().path == str(outside)
    sibling = outside.parent / "probe.yml"
    sibling.write_text(yaml.safe_dump(shipped_inventory()))
    assert load_inventory(sibling).path == str(sibling)


def test_relative_inventory_dirs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHA_INVENTORY_DIR", "inventories")
    with pytest.raises(InventoryError, match="PGHA_INVENTORY_DIR entries must be absolute"):
        load_inventory()


def test_the_operator_refuses_an_outside_inventory_before_any_command(fleet: Fleet, tmp_path: Path,
                                                                       allowed: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)  # valid, but in tmp_path, not in allowed/
    with pytest.raises(InventoryError, match="is outside the inventory directories"):
        PrepareHostOperator(task_id="prepare_host", host="psg1", inventory_path=inventory).execute({})
    assert all(not host.commands for host in fleet.hosts.values())


# ---------------------------------------------------------------- valid names that YAML would misread


def test_names_yaml_would_read_as_booleans_or_numbers_stay_names() -> None:
    raw = shipped_inventory()
    raw["cluster"]["name"] = "on"
    raw["hosts"][1]["name"] = raw["database_nodes"][0] = "0123"
    inv = parse_inventory(raw, "yaml-lookalikes.yml")
    secrets = {key: "x" for key in ("rest_user", "rest_password", "superuser", "superuser_password",
                                    "replication_user", "replication_password")}
    rendered = render("patroni.yml.j2", secrets=secrets, **node_context(inv, inv.db_hosts[0], DEBIAN))
    config = yaml.safe_load(rendered)
    assert (config["scope"], config["name"], config["namespace"]) == ("on", "0123", "/airflow/")
