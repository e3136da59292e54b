"""Root never follows a link a non-root user planted, and no secret file outlives its use.

Real file system, a real non-root owner (``nobody``) of the directories the links are
planted in, root-owned bait files as the links' targets. RemoteHook's file functions
run over the loopback sshd; the cutover agent's file functions run in-process (the
agent runs as root on the host itself). Every refusal must name the path and leave
the bait's content, owner and mode as they were.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import stat
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgha.compat import AirflowException
from pgha import cutover
from pgha.cutover import Agent, UnsafePath
from pgha.hooks.drill import DrillProbeHook
from pgha.hooks.remote import RemoteHook
from pgha.inventory import parse_inventory
from pgha.secret_formats import haproxy_word
from pgha.render import haproxy_context, render
from pgha_testing import loopback_inventory, set_connection, ssh_connection
from services import SshdService, free_port, wait_until

NOBODY = 65534
BAIT_TEXT = "root:x:0:0:root:/root:/bin/bash\n"
OLD_CFG = b"[database]\nsql_alchemy_conn = postgresql://airflow_user:old@127.0.0.1:5432/airflow_db\n"
NEW_CFG = b"[database]\nsql_alchemy_conn = postgresql://airflow_user:new@127.0.0.1:5433/airflow_db\n"


@pytest.fixture
def bait(tmp_path: Path) -> Path:
    """A root-owned file standing for /etc/passwd: what a planted link points at."""
    path = tmp_path / "passwd"
    path.write_text(BAIT_TEXT)
    os.chmod(path, 0o644)
    return path


def untouched(path: Path) -> tuple[str, int, int, int]:
    info = path.stat()
    return path.read_text(), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


BAIT_STATE = (BAIT_TEXT, 0, 0, 0o644)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A directory the non-root user owns (like /home/airflow/airflow)."""
    path = tmp_path / "home"
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o755)
    return path


def plant(link: Path, target: Path) -> Path:
    """A symbolic link the non-root user made."""
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    return link


# ------------------------------------------------------------------ RemoteHook over ssh


@pytest.fixture
def remote(sshd: SshdService, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteHook]:
    set_connection(monkeypatch, "ssh_test", **ssh_connection(sshd))
    hook = RemoteHook("ssh_test", host_name="testhost", command_timeout=30)
    yield hook
    hook.close()


def test_put_file_refuses_a_target_that_is_a_planted_link(remote: RemoteHook, home: Path, bait: Path) -> None:
    config = plant(home / "airflow.cfg", bait)
    with pytest.raises(AirflowException, match=rf"\[testhost\] pgha: refusing {config}: it is a symbolic link"):
        remote.put_file(str(config), "evil\n", owner="nobody", group="nogroup", mode="0600")
    assert untouched(bait) == BAIT_STATE
    assert sorted(p.name for p in home.iterdir()) == ["airflow.cfg"]  # no temp file left
    assert config.is_symlink()


def test_put_file_refuses_a_directory_reached_through_a_planted_link(remote: RemoteHook, home: Path, bait: Path,
                                                                     tmp_path: Path) -> None:
    linked = plant(home / "airflow", tmp_path)  # the user's directory swapped for a link to a root one
    with pytest.raises(AirflowException, match=rf"refusing {linked}/passwd: {linked} is a symbolic link in a "
                                               "directory a user other than root can write"):
        remote.put_file(str(linked / "passwd"), "evil\n", owner="nobody", group="nogroup")
    assert untouched(bait) == BAIT_STATE


def test_read_file_refuses_planted_links(remote: RemoteHook, home: Path, bait: Path, tmp_path: Path) -> None:
    config = plant(home / "airflow.cfg", bait)
    with pytest.raises(AirflowException, match=rf"refusing {config}: it is a symbolic link; nothing was read"):
        remote.read_file(str(config))
    linked = plant(home / "airflow", tmp_path)
    with pytest.raises(AirflowException, match=rf"refusing {linked}/passwd: {linked} is a symbolic link"):
        remote.read_file(str(linked / "passwd"))
    assert remote.read_file(str(home / "absent.cfg")) is None
    assert remote.read_file(str(home / "absent-dir" / "x")) is None


def test_put_file_in_a_user_directory_and_links_only_root_could_make(remote: RemoteHook, home: Path,
                                                                     tmp_path: Path) -> None:
    """The ordinary cases still work: a file for the user in the user's directory, and a path through a
    link in a directory only root can write (as /var/run -> /run)."""
    config = home / "airflow.cfg"
    assert remote.put_file(str(config), "a = 1\n", owner="nobody", group="nogroup", mode="0640").changed
    info = config.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode), config.read_text()) == (NOBODY, 0o640, "a = 1\n")
    assert not remote.put_file(str(config), "a = 1\n", owner="nobody", group="nogroup", mode="0640").changed
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)  # tmp_path: root's, 0700
    remote.put_file(str(tmp_path / "alias" / "x.conf"), "x\n")
    assert (real / "x.conf").read_text() == "x\n" and remote.read_file(str(tmp_path / "alias" / "x.conf")) == "x\n"


# ------------------------------------------------------------------ the cutover agent's files


def agent(tmp_path: Path, config: Path, **extra: Any) -> Agent:
    """An agent whose settings name these files (no database is reached by the file steps)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    staged = state / "airflow.cfg.pgha-new"
    if not staged.exists() and not staged.is_symlink():
        staged.write_bytes(NEW_CFG)
    settings = {"role": "primary", "run_id": "pgha-cutover-paths", "database": "airflow_db", "owner": "airflow_user",
                "log_dir": str(tmp_path / "log"), "pgpass": str(tmp_path / "cutover.pgpass"),
                "cluster": {"host": "127.0.0.1", "port": 1, "user": "postgres"},
                "config": str(config), "staged": str(staged), "backup_dir": str(state / "backup"), **extra}
    return Agent(settings, units=object())  # type: ignore[arg-type]


def airflow_cfg(home: Path) -> Path:
    config = home / "airflow.cfg"
    config.write_bytes(OLD_CFG)
    os.chown(config, NOBODY, NOBODY)
    os.chmod(config, 0o640)
    return config


def test_repoint_installs_through_descriptors_with_the_configs_owner_and_a_root_only_backup(
        tmp_path: Path, home: Path) -> None:
    config = airflow_cfg(home)
    a = agent(tmp_path, config)
    a.repoint()
    info = config.stat()
    assert (config.read_bytes(), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NEW_CFG, NOBODY, NOBODY,
                                                                                             0o640)
    assert not Path(a.s["staged"]).exists() and sorted(p.name for p in home.iterdir()) == ["airflow.cfg"]
    assert a.backup is not None and a.backup.read_bytes() == OLD_CFG
    backup = a.backup.stat()
    assert (backup.st_uid, stat.S_IMODE(backup.st_mode)) == (0, 0o600)
    assert stat.S_IMODE(a.backup.parent.stat().st_mode) == 0o700
    a.restore_config()  # the rollback
    info = config.stat()
    assert (config.read_bytes(), info.st_uid, stat.S_IMODE(info.st_mode)) == (OLD_CFG, NOBODY, 0o640)


def test_backups_are_pruned_to_the_newest_few(tmp_path: Path, home: Path) -> None:
    a = agent(tmp_path, airflow_cfg(home))
    for n in range(cutover.KEEP_BACKUPS + 3):
        a.keep_backup("airflow.cfg", f"v{n}".encode())
    kept = sorted((tmp_path / "state" / "backup").iterdir())
    assert len(kept) == cutover.KEEP_BACKUPS == 5
    assert [p.read_text() for p in kept] == [f"v{n}" for n in range(3, 8)]  # the newest five


@pytest.mark.parametrize("where", ["config", "config_dir"])
def test_repoint_refuses_a_planted_config_link_and_changes_nothing(tmp_path: Path, home: Path, bait: Path,
                                                                   where: str) -> None:
    if where == "config":
        config = plant(home / "airflow.cfg", bait)
        expected = rf"{config} is a symbolic link"
    else:  # the directory of the config is the planted link
        config = plant(home / "airflow", tmp_path) / "passwd"
        expected = rf"{config.parent}: airflow is a symbolic link in a directory a user other than root can write"
    a = agent(tmp_path, config)
    with pytest.raises(UnsafePath, match=expected):
        a.repoint()
    assert untouched(bait) == BAIT_STATE
    assert Path(a.s["staged"]).read_bytes() == NEW_CFG  # still staged: a retry can install it
    assert not (tmp_path / "state" / "backup").exists() and a.original is None


def test_repoint_refuses_a_staged_config_outside_a_root_only_directory(tmp_path: Path, home: Path,
                                                                       bait: Path) -> None:
    config = airflow_cfg(home)
    staged = plant(home / "airflow.cfg.pgha-new", bait)  # where phase 8 used to write it
    with pytest.raises(UnsafePath, match=rf"{home} is not a root-only directory"):
        agent(tmp_path, config, staged=str(staged)).repoint()
    root_link = tmp_path / "state" / "linked.pgha-new"
    root_link.symlink_to(bait)
    with pytest.raises(UnsafePath, match=rf"{root_link} is a symbolic link"):
        agent(tmp_path, config, staged=str(root_link)).repoint()
    assert untouched(bait) == BAIT_STATE and config.read_bytes() == OLD_CFG


def test_backups_refuse_a_directory_the_user_controls(tmp_path: Path, home: Path, bait: Path) -> None:
    config = airflow_cfg(home)
    backups = home / "backups"
    backups.mkdir()
    os.chown(backups, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=rf"{backups} is not a root-only directory"):
        agent(tmp_path, config, backup_dir=str(backups)).repoint()
    linked = plant(home / "linked-backups", tmp_path)
    with pytest.raises(UnsafePath, match=rf"{linked}: linked-backups is a symbolic link"):
        agent(tmp_path, config, backup_dir=str(linked)).repoint()
    assert config.read_bytes() == OLD_CFG and untouched(bait) == BAIT_STATE
    assert Path(agent(tmp_path, config).s["staged"]).read_bytes() == NEW_CFG


def test_write_at_refuses_a_link_at_the_name_and_leaves_no_temp_file(home: Path, bait: Path) -> None:
    plant(home / "airflow.cfg", bait)
    fd = cutover.open_directory(str(home))
    try:
        with pytest.raises(UnsafePath, match="airflow.cfg is a symbolic link"):
            cutover.write_at(fd, "airflow.cfg", b"evil", uid=NOBODY, gid=NOBODY, mode=0o600,
                             shown=str(home / "airflow.cfg"))
    finally:
        os.close(fd)
    assert untouched(bait) == BAIT_STATE and sorted(p.name for p in home.iterdir()) == ["airflow.cfg"]


# ------------------------------------------------------------------ secret files removed


def test_the_agent_removes_its_passwords_file_even_when_it_cannot_start(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pgpass = tmp_path / "cutover.pgpass"
    monkeypatch.setattr(cutover, "PGPASS", str(pgpass))
    pgpass.write_text("*:*:*:postgres:pw\n")
    broken = tmp_path / "cutover.json"
    broken.write_text("{not json")
    with pytest.raises(json.JSONDecodeError):
        cutover.main([str(broken)])
    assert not pgpass.exists()

    pgpass.write_text("*:*:*:postgres:pw\n")
    broken.write_text(json.dumps({"pgpass": str(pgpass)}))  # Agent() fails on the missing settings
    with pytest.raises(KeyError):
        cutover.main([str(broken)])
    assert not pgpass.exists()


def test_probe_settings_of_this_and_earlier_drills_are_removed(remote: RemoteHook, tmp_path: Path) -> None:
    state = tmp_path / "drill"
    for drill in ("20260101T030000Z-switchover-psg1", "20260102T030000Z-patroni_stop-psg2"):
        (state / drill).mkdir(parents=True)
        (state / drill / "probe.json").write_text('{"password": "pw"}')
        (state / drill / "acks").write_text("1 0.1\n")
    probe = DrillProbeHook(remote, str(state), "20260102T030000Z-patroni_stop-psg2")
    assert probe.remove_settings()
    assert not list(state.glob("*/probe.json")) and len(list(state.glob("*/acks"))) == 2
    assert not probe.remove_settings()


# ------------------------------------------------------------------ HAProxy: stats page and runtime socket


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short /tmp directory (unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pgha-test-paths-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("tls_on", [False, True], ids=["plain", "tls"])
def test_haproxy_stats_page_needs_the_login_and_the_socket_is_roots(haproxy_factory: Any, short_tmp: Path,
                                                                    tls_on: bool) -> None:
    from fixture_secrets import TEST_CA
    from pgha import tls
    from pgha.render import tls_context

    stats_port = free_port()
    raw = loopback_inventory(
        [("node1", "127.0.0.11"), ("node2", "127.0.0.12"), ("node3", "127.0.0.13")],
        haproxy={"write_port": free_port(), "read_port": free_port(), "stats_port": stats_port,
                 "stats_socket": str(short_tmp / "admin.sock"), "state_file": str(short_tmp / "server-state")},
    )
    raw["hosts"][0]["address"] = "127.0.0.1"
    raw["tls"] = {**raw.get("tls", {}), "enabled": tls_on}
    inv = parse_inventory(raw)
    password = "it's a #1 \"pass\" $HOME:x"
    context = haproxy_context(inv)
    if tls_on:  # HAProxy's own certificate of the cluster CA, as phase 3 issues it
        directory = short_tmp / "tls"
        directory.mkdir()
        (directory / "ca.crt").write_text(TEST_CA.cert_pem)
        issued = tls.issue(TEST_CA, "node1", dns_names=tls.haproxy_names(inv)[0], ip_addresses=tls.haproxy_names(inv)[1],
                           client_auth=False)
        files = tls.haproxy_files(str(directory))
        Path(files.cert).write_text(issued.cert_pem + issued.key_pem)  # one PEM, as phase 3 installs it
        Path(files.cert).chmod(0o600)
        context["tls"] = tls_context(inv, str(directory))
    haproxy_factory(render("haproxy.cfg.j2", **context, stats_auth=haproxy_word(f"stats:{password}")))
    scheme = "https" if tls_on else "http"
    url = f"{scheme}://{inv.host(inv.haproxy.host).address}:{stats_port}/"
    cluster_ca = ssl.create_default_context(cadata=TEST_CA.cert_pem)

    def status(login: str | None, trust: ssl.SSLContext | None = cluster_ca, to: str = url) -> int:
        request = urllib.request.Request(to)
        if login:
            request.add_header("Authorization", "Basic " + b64encode(login.encode()).decode())
        try:
            return urllib.request.urlopen(request, timeout=2, context=trust if tls_on else None).status
        except urllib.error.HTTPError as exc:
            return exc.code

    if tls_on:
        other_ca = ssl.create_default_context(cadata=tls.make_ca("another CA").cert_pem)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            status(f"stats:{password}", other_ca)
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            status(f"stats:{password}", None, url.replace("https://", "http://"))  # no page in plain text
    wait_until(lambda: Path(inv.haproxy.stats_socket).exists(), 10, "the runtime socket")
    assert status(f"stats:{password}") == 200
    assert status(None) == 401 and status("stats:wrong") == 401
    socket = Path(inv.haproxy.stats_socket).stat()
    assert (socket.st_uid, stat.S_IMODE(socket.st_mode)) == (0, 0o600)
