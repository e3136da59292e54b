"""The RHEL family on paper: the Rocky 9 command plan of a migration against what the distribution needs.

No Rocky host is reachable here, so tests/command_plan.py runs the operators of
phases 1-5 and 7 against recording fakes and these tests read the commands they
would send (and the files they would write). docs/rhel-plan.md says what is
tested live (Debian 12, the lab) and what only here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from command_plan import PLAN_PASSWORD, Plan, migration_plan
from pgha.inventory import INCLUDE_DIR
from pgha.osfamily import RHEL8, RHEL9, RHEL10, detect_family, parse_selinux_ports
from recording_host import DEBIAN_12, ETCD_TARBALL_SHA256, ETCD_TARBALL_URL, ROCKY_9, Fleet

RHEL_SOCKET = "/var/lib/haproxy/stats"  # where RHEL's HAProxy may create its stats socket
NODES = ["psg1", "psg2", "psg3"]


def inventory(tmp_path: Path, **changes: dict[str, Any]) -> str:
    """The shipped inventory (vm1 + psg1-3) with sections updated."""
    raw = yaml.safe_load((INCLUDE_DIR / "inventory.yml").read_text())
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def rocky_inventory(tmp_path: Path, **changes: dict[str, Any]) -> str:
    return inventory(tmp_path, haproxy={"stats_socket": RHEL_SOCKET, **changes.pop("haproxy", {})}, **changes)


def rocky_fleet(tmp_path: Path, **changes: dict[str, Any]) -> tuple[str, Fleet]:
    """A Rocky 9 inventory and its fake hosts, for a test to change before the plan runs."""
    path = rocky_inventory(tmp_path, **changes)
    return path, Fleet().for_inventory(yaml.safe_load(Path(path).read_text()), ROCKY_9)


def plan_of(tmp_path: Path, os: str = ROCKY_9, *, method: str = "dump_restore", fleet: Fleet | None = None,
            **changes: dict[str, Any]) -> Plan:
    path = rocky_inventory(tmp_path, **changes) if os == ROCKY_9 else inventory(tmp_path, **changes)
    plan = migration_plan(path, os, method=method, fleet=fleet)
    assert plan.failure is None, plan.failure
    return plan


@pytest.fixture(scope="module")
def rocky(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_of(tmp_path_factory.mktemp("rocky"))


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_of(tmp_path_factory.mktemp("debian"), DEBIAN_12)


def ran(plan: Plan, host: str, pattern: str) -> list[str]:
    """The host's commands in the whole plan that match ``pattern`` (searched)."""
    return [c for c in plan.commands(host) if re.search(pattern, c)]


def index(commands: list[str], pattern: str) -> int:
    return next(i for i, c in enumerate(commands) if re.search(pattern, c))


# ---------------------------------------------------------------- the plan as a whole


def test_the_plan_covers_every_host_changing_task_in_order(rocky: Plan) -> None:
    tasks = list(dict.fromkeys(f"{s.phase}.{s.task}" for s in rocky.steps))
    assert tasks == ["phase1_prepare_hosts.prepare_host", "phase2_install_postgres.install_postgres",
                     "phase3_etcd_cluster.install_etcd", "phase3_etcd_cluster.configure_etcd",
                     "phase4_patroni.install_patroni", "phase4_patroni.configure_patroni",
                     "phase5_bootstrap.start_first_node", "phase5_bootstrap.start_all_nodes",
                     "phase7_haproxy.install_haproxy", "phase7_haproxy.switch_haproxy"]
    text = rocky.text()
    assert "### install_etcd [psg3]" in text and "* dnf install -y -q haproxy socat" in text
    assert PLAN_PASSWORD.split("{")[0] not in text  # the connections' passwords never reach a command


def test_a_second_plan_on_the_same_hosts_changes_nothing(tmp_path: Path) -> None:
    first = plan_of(tmp_path)
    again = plan_of(tmp_path, fleet=first.fleet)
    assert [c.command for s in again.steps for c in s.commands if c.mutating] == []


def test_the_shipped_inventory_stops_at_haproxy_with_the_socket_to_set(tmp_path: Path) -> None:
    plan = migration_plan(inventory(tmp_path), ROCKY_9)
    assert plan.failure and plan.failure.startswith("phase7_haproxy.install_haproxy: [vm1] haproxy.stats_socket "
                                                    "/run/haproxy/admin.sock cannot work on rhel")
    assert f"set haproxy.stats_socket: {RHEL_SOCKET}" in plan.failure
    assert not ran(plan, "vm1", "dnf install")  # refused before anything was installed


# ---------------------------------------------------------------- PostgreSQL from PGDG


def test_pgdg_repository_and_module_before_the_packages(rocky: Plan) -> None:
    for node in NODES:
        commands = rocky.commands(node)
        repo = index(commands, r"^dnf install -y -q https://download\.postgresql\.org/pub/repos/yum/reporpms/"
                               r"EL-9-x86_64/pgdg-redhat-repo-latest\.noarch\.rpm$")
        disable = index(commands, r"^dnf -qy module disable postgresql$")
        server = index(commands, r"^dnf install -y -q postgresql15-server postgresql15-contrib$")
        assert repo < disable < server
        assert not ran(rocky, node, r"module enable|postgresql-server")  # no AppStream stream, no AppStream
    assert not rocky.commands("vm1", "phase1").count("dnf -qy module disable postgresql")  # only database nodes


@pytest.mark.parametrize("major", [13, 15, 16, 17])
def test_pgdg_names_and_paths_for_each_major(tmp_path: Path, major: int) -> None:
    plan = plan_of(tmp_path, postgres={"major": major})
    psg1 = plan.fleet["psg1"]
    assert ran(plan, "psg1", rf"^dnf install -y -q postgresql{major}-server postgresql{major}-contrib$")
    assert ran(plan, "psg1", rf"^/usr/pgsql-{major}/bin/postgres --version$")
    assert ran(plan, "psg1", rf"^systemctl is-enabled --quiet postgresql-{major}$")  # PGDG's unit, left disabled
    assert not psg1.units[f"postgresql-{major}.service"].enabled
    patroni = yaml.safe_load(psg1.files["/etc/patroni/patroni.yml"].content)
    assert patroni["postgresql"]["bin_dir"] == f"/usr/pgsql-{major}/bin"
    assert patroni["postgresql"]["data_dir"] == f"/var/lib/pgsql/{major}/data"
    assert psg1.dirs[f"/var/lib/pgsql/{major}/data"] == ("postgres", "postgres", "700")


def test_the_postgresql_module_is_disabled_on_el8_and_el9_only() -> None:
    assert RHEL8.modules_to_disable == RHEL9.modules_to_disable == ("postgresql",)
    assert RHEL10.modules_to_disable == ()
    for release, family in (("8.10", RHEL8), ("9.4", RHEL9), ("10.0", RHEL10)):
        assert detect_family(f'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="{release}"\n') is family
    assert RHEL10.postgres_repo == ("pgdg-redhat-repo", "https://download.postgresql.org/pub/repos/yum/reporpms/"
                                                        "EL-10-x86_64/pgdg-redhat-repo-latest.noarch.rpm")
    with pytest.raises(ValueError, match="unsupported operating system 'CentOS Linux 7'"):
        detect_family('ID="centos"\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7"\n')


def test_an_el10_node_gets_el10s_repository_and_disables_no_module(tmp_path: Path) -> None:
    path, fleet = rocky_fleet(tmp_path)
    for node in NODES:
        fleet[node].files["/etc/os-release"].content = 'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="10.0"\n'
    plan = migration_plan(path, ROCKY_9, fleet=fleet)
    assert ran(plan, "psg1", r"^dnf install -y -q https://\S+/EL-10-x86_64/pgdg-redhat-repo-latest\.noarch\.rpm$")
    assert not ran(plan, "psg1", "module")
    assert ran(plan, "psg1", r"^dnf install -y -q postgresql15-server postgresql15-contrib$")


# ---------------------------------------------------------------- etcd and Patroni


def test_etcd_from_pgdg_extras_runs_the_packaged_binary(rocky: Plan) -> None:
    psg1 = rocky.fleet["psg1"]
    assert ran(rocky, "psg1", r"^dnf install -y -q --enablerepo=pgdg-rhel9-extras etcd$")
    assert ran(rocky, "psg1", r"^/usr/bin/etcd --version$") and not ran(rocky, "psg1", "/usr/local/bin")
    assert "ExecStart=/usr/bin/etcd \\\n" in psg1.files["/etc/systemd/system/etcd.service"].content


def test_etcd_from_the_release_tarball_runs_our_binary(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, etcd={"install": {"method": "tarball", "version": "3.5.9", "url": ETCD_TARBALL_URL,
                                               "sha256": ETCD_TARBALL_SHA256}})
    psg1 = plan.fleet["psg1"]
    assert ran(plan, "psg1", r"install -m 0755 \"\$tmp\"/etcd \"\$tmp\"/etcdctl /usr/local/bin/$")
    assert not ran(plan, "psg1", r"--enablerepo=pgdg-rhel9-extras etcd")
    assert "ExecStart=/usr/local/bin/etcd \\\n" in psg1.files["/etc/systemd/system/etcd.service"].content
    assert ran(plan, "psg1", r"^useradd --system --home-dir /var/lib/etcd --shell /usr/sbin/nologin etcd$")


def test_patroni_package_comes_with_its_etcd_support(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, patroni={"install": {"method": "package"}})
    psg1 = plan.fleet["psg1"]
    assert ran(plan, "psg1", r"^dnf install -y -q --enablerepo=pgdg-rhel9-extras patroni patroni-etcd$")
    assert "ExecStart=/usr/bin/patroni /etc/patroni/patroni.yml" in \
        psg1.files["/etc/systemd/system/patroni.service"].content


def test_patroni_from_pip_in_its_own_virtualenv(rocky: Plan) -> None:
    assert ran(rocky, "psg1", r"^dnf install -y -q python3 python3-pip$")
    assert ran(rocky, "psg1", r"^/usr/bin/python3 -m venv /opt/patroni$") and not ran(rocky, "psg1", r"^pip3? install")


# ---------------------------------------------------------------- firewalld


def test_firewalld_opens_every_listening_role(rocky: Plan) -> None:
    for node in NODES:
        assert rocky.fleet[node].firewalld_ports == {5432, 8008, 2379, 2380}
    assert rocky.fleet["vm1"].firewalld_ports == {5433, 5434, 7000}  # HAProxy's ports, in phase 7
    assert rocky.commands("vm1", "phase7")[-1:] != ["firewall-cmd --reload"]
    assert index(rocky.commands("vm1"), r"add-port=5433") < index(rocky.commands("vm1"), r"^firewall-cmd --reload$")


def test_the_logical_method_opens_the_sources_port(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, method="logical_replication")
    assert ran(plan, "vm1", r"^firewall-cmd --permanent --add-port=5432/tcp$")
    assert 5432 in plan.fleet["vm1"].firewalld_ports
    (tmp_path / "dump").mkdir()
    dump = plan_of(tmp_path / "dump")
    assert 5432 not in dump.fleet["vm1"].firewalld_ports


def test_no_firewall_command_where_firewalld_does_not_run(tmp_path: Path) -> None:
    path, fleet = rocky_fleet(tmp_path)
    for host in fleet.hosts.values():
        host.units["firewalld.service"].active = False
    plan = migration_plan(path, ROCKY_9, fleet=fleet, method="logical_replication")
    assert plan.failure is None, plan.failure
    assert not [c for c in plan.commands() if c.startswith("firewall-cmd")]


# ---------------------------------------------------------------- SELinux


def test_selinux_lets_haproxy_reach_the_cluster_and_labels_its_ports(rocky: Plan) -> None:
    vm1 = rocky.fleet["vm1"]
    commands = rocky.commands("vm1", "phase7")
    assert index(commands, r"^getenforce$") < index(commands, r"^setsebool -P haproxy_connect_any 1$")
    assert ran(rocky, "vm1", r"^semanage port -a -t postgresql_port_t -p tcp 5433$")
    assert ran(rocky, "vm1", r"^semanage port -a -t postgresql_port_t -p tcp 5434$")
    assert ran(rocky, "vm1", r"^semanage port -m -t http_port_t -p tcp 7000$")  # the policy: gatekeeper_port_t
    assert vm1.selinux_booleans["haproxy_connect_any"]
    assert {p: vm1.selinux_ports[p] for p in (5433, 5434, 7000)} == {
        5433: "postgresql_port_t", 5434: "postgresql_port_t", 7000: "http_port_t"}
    assert index(commands, r"^dnf install -y -q policycoreutils-python-utils$") < index(commands, r"^semanage port -l$")


def test_selinux_on_the_database_nodes_changes_only_what_differs(rocky: Plan) -> None:
    for node in NODES:
        psg = rocky.fleet[node]
        assert ran(rocky, node, r"^semanage port -l$")  # looked: 8008 and 5432 have their types in the policy
        assert not ran(rocky, node, r"^semanage port -[am]")
        assert (psg.selinux_ports[8008], psg.selinux_ports[5432]) == ("http_port_t", "postgresql_port_t")
        assert 2379 not in psg.selinux_ports and 2380 not in psg.selinux_ports  # etcd runs unconfined: no label


def test_selinux_labels_a_non_default_rest_port(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, patroni={"rest_port": 8010})
    assert ran(plan, "psg1", r"^semanage port -a -t http_port_t -p tcp 8010$")


@pytest.mark.parametrize("mode", ["Permissive", "Disabled"])
def test_selinux_work_only_where_it_enforces(tmp_path: Path, mode: str) -> None:
    path, fleet = rocky_fleet(tmp_path)
    for host in fleet.hosts.values():
        host.selinux = mode
    plan = migration_plan(path, ROCKY_9, fleet=fleet)
    assert plan.failure is None, plan.failure
    assert plan.commands().count("getenforce") == 4
    assert not [c for c in plan.commands() if re.match(r"(semanage|setsebool|getsebool) ", c)]


# ---------------------------------------------------------------- Debian stays as it is


def test_debian_plan_keeps_its_own_commands(debian: Plan) -> None:
    psg1 = debian.fleet["psg1"]
    assert ran(debian, "psg1", r"^DEBIAN_FRONTEND=noninteractive apt-get install .* postgresql-15 "
                               r"postgresql-client-15$")
    assert ran(debian, "psg1", r"^DEBIAN_FRONTEND=noninteractive apt-get install .* etcd-server etcd-client$")
    assert ran(debian, "psg1", r"^systemctl disable --now --quiet postgresql$")
    assert ran(debian, "psg1", r"^/usr/lib/postgresql/15/bin/postgres --version$")
    assert "ExecStart=/usr/bin/etcd \\\n" in psg1.files["/etc/systemd/system/etcd.service"].content
    patroni = yaml.safe_load(psg1.files["/etc/patroni/patroni.yml"].content)
    assert patroni["postgresql"]["bin_dir"] == "/usr/lib/postgresql/15/bin"
    assert "create_main_cluster = false" in psg1.files["/etc/postgresql-common/createcluster.d/50-pgha.conf"].content
    assert ran(debian, "vm1", r"^systemctl reload haproxy.service$")  # Debian's package started HAProxy
    rhel_only = r"^(dnf|rpm|firewall-cmd|semanage|getenforce|getsebool|setsebool) |^getenforce$|pgsql|pgdg"
    assert [c for c in debian.commands() if re.search(rhel_only, c)] == []


def test_semanage_listing_counts_single_ports_only() -> None:
    listing = ("SELinux Port Type              Proto    Port Number\n\n"
               "unreserved_port_t              tcp      61001-65535, 1024-32767\n"
               "http_port_t                    tcp      80, 81, 443, 488, 8008, 8009, 8443, 9000\n"
               "gatekeeper_port_t              tcp      1721, 7000\n"
               "gatekeeper_port_t              udp      1718, 1719\n")
    ports = parse_selinux_ports(listing)
    assert ports[8008] == "http_port_t" and ports[7000] == "gatekeeper_port_t"
    assert 1718 not in ports and 5433 not in ports  # udp, and a port only inside a range: `-a` works there
