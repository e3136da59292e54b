"""The lab's hosts table (lab/pghalab/topology.py) and the files that cannot import it agree.

Python files import the table; lab/inventory.yml, the shell scripts under
lab/provision/, lab/wheelhouse.txt and the READMEs repeat its addresses.
Reads files only: no lab, no root.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from pgha.inventory import load_inventory

REPO_ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = REPO_ROOT / "lab"
sys.path.insert(0, str(LAB_DIR))

from pghalab import topology  # noqa: E402

# Built from the table, so this file holds no lab address either.
LAB_PREFIX = topology.BRIDGE_IP.rsplit(".", 1)[0] + "."
LAB_ADDRESS = re.compile(re.escape(LAB_PREFIX) + r"\d+(?::\d+)?")
KNOWN = {topology.BRIDGE_IP, LAB_PREFIX + "0", *(h["ip"] for h in topology.HOSTS.values())}
BRIDGE_PORTS = {topology.APT_PROXY_PORT, topology.WHEEL_PORT, topology.FAULT_GATE_PORT}
NOT_PYTHON = [LAB_DIR / "inventory.yml", LAB_DIR / "wheelhouse.txt", LAB_DIR / "README.md", REPO_ROOT / "README.md",
              *sorted((LAB_DIR / "provision").glob("*.sh"))]
TABLE = LAB_DIR / "pghalab" / "topology.py"


def lab_addresses(path: Path) -> list[tuple[str, int | None]]:
    """Every lab address in a file, with its port when one follows."""
    found = []
    for match in LAB_ADDRESS.findall(path.read_text()):
        address, _, port = match.partition(":")
        found.append((address, int(port) if port else None))
    return found


def test_the_table_is_consistent() -> None:
    addresses = [h["ip"] for h in topology.HOSTS.values()]
    assert len(set(addresses)) == len(addresses) and topology.BRIDGE_IP not in addresses
    assert all(a.startswith(LAB_PREFIX) for a in addresses)
    assert {topology.AIRFLOW_HOST, topology.WORKER_HOST, *topology.DATABASE_HOSTS} == set(topology.HOSTS)
    assert topology.api_url() == f"http://{topology.address('vm1')}:{topology.API_PORT}"
    assert list(topology.database_addresses()) == ["psg1", "psg2", "psg3"]


def test_lab_inventory_matches_the_table() -> None:
    inv = load_inventory(LAB_DIR / "inventory.yml")
    assert {h.name: h.address for h in inv.hosts} == {n: h["ip"] for n, h in topology.HOSTS.items()}
    assert inv.database_nodes == topology.DATABASE_HOSTS
    assert inv.cluster.network == topology.NETWORK
    assert inv.packages.apt_proxy == topology.APT_PROXY_URL
    assert inv.packages.pip_find_links == topology.WHEELS_URL
    assert inv.haproxy.host == topology.AIRFLOW_HOST == inv.source.host == inv.drill.probe_host
    assert tuple(h.host for h in inv.airflow_hosts) == topology.AIRFLOW_HOSTS
    ports = (inv.postgres.port, inv.haproxy.write_port, inv.haproxy.read_port, inv.patroni.rest_port,
             inv.etcd.client_port)
    assert ports == (topology.POSTGRES_PORT, topology.HAPROXY_WRITE_PORT, topology.HAPROXY_READ_PORT,
                     topology.PATRONI_REST_PORT, topology.ETCD_CLIENT_PORT)


@pytest.mark.parametrize("path", NOT_PYTHON, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_lab_address_outside_python_is_in_the_table(path: Path) -> None:
    found = lab_addresses(path)
    assert {a for a, _ in found} <= KNOWN, f"{path}: {sorted({a for a, _ in found} - KNOWN)} not in {TABLE}"
    bridge_ports = {p for a, p in found if a == topology.BRIDGE_IP and p is not None}
    assert bridge_ports <= BRIDGE_PORTS, f"{path}: bridge ports {sorted(bridge_ports - BRIDGE_PORTS)} not in {TABLE}"


def test_provision_scripts_use_the_table_values() -> None:
    vm1 = (LAB_DIR / "provision" / "vm1.sh").read_text()
    assert re.search(r"^proxy=(\S+)", vm1, re.M)[1] == topology.APT_PROXY_URL
    assert re.search(r"^address=(\S+)", vm1, re.M)[1] == topology.address(topology.AIRFLOW_HOST)
    common = (LAB_DIR / "provision" / "airflow-host.sh").read_text()
    assert re.search(r"^wheels=(\S+)", common, re.M)[1] == topology.WHEELS_URL
    assert re.findall(r"--trusted-host (\S+)\)", common) == [topology.BRIDGE_IP]


def test_lab_readme_lists_the_table() -> None:
    rows = re.findall(r"^\|\s*(\w+)\s*\|\s*([\d.]+)\s*\|", (LAB_DIR / "README.md").read_text(), re.M)
    assert dict(rows) == {n: h["ip"] for n, h in topology.HOSTS.items()}


def test_provision_module_uses_the_table_ports() -> None:
    sys.path.insert(0, str(LAB_DIR / "provision"))
    try:
        import airflow_host
    finally:
        sys.path.remove(str(LAB_DIR / "provision"))
    assert (airflow_host.API_PORT, airflow_host.DB_PORT) == (topology.API_PORT, topology.POSTGRES_PORT)


def python_files() -> list[Path]:
    skip = {".venv", ".git", "build", "__pycache__", ".state"}  # .state: a running lab's host disks
    files = [p for p in REPO_ROOT.rglob("*.py") if not skip & set(p.relative_to(REPO_ROOT).parts)]
    return files + [LAB_DIR / "lab", LAB_DIR / "demo"]  # Python without a suffix


def test_only_the_table_holds_lab_addresses_among_python_files() -> None:
    holders = sorted(str(p.relative_to(REPO_ROOT)) for p in python_files() if p != TABLE and lab_addresses(p))
    assert holders == [], f"import the addresses from {TABLE.relative_to(REPO_ROOT)} instead"


def test_a_stale_labs_command_runs_as_root_only_when_root_alone_could_have_changed_it(tmp_path: Path) -> None:
    from pghalab.network import untrusted_part

    checkout = tmp_path / "checkout" / "lab"
    checkout.mkdir(parents=True)
    command = checkout / "lab"
    command.write_text("#!/bin/sh\n")
    for part in (tmp_path, tmp_path / "checkout", checkout):
        part.chmod(0o755)
    command.chmod(0o755)
    assert untrusted_part(command) is None  # the test runs as root, as `lab/lab` does
    (tmp_path / "checkout").chmod(0o777)
    assert untrusted_part(command) == tmp_path / "checkout"
    (tmp_path / "checkout").chmod(0o755)
    os.chown(command, 1000, 1000)
    assert untrusted_part(command) == command
