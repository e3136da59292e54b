"""RemoteHook against a real sshd on loopback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.hooks.remote import CommandFailed, RemoteHook
from pgha_testing import set_connection, ssh_connection
from services import SshdService, free_port

# Asserts that no killable command's pid file is left in /run/pgha: one pytest-xdist worker runs these files.
pytestmark = pytest.mark.xdist_group("run_dir")

SECRET = "s3cr3t-Pa55-word"
_seen: list[str] = []


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    """Everything the hook logged so far in this test (Airflow logs through structlog to stdout)."""
    captured = capsys.readouterr()
    _seen.append(captured.out + captured.err)
    return "".join(_seen)


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    _seen.clear()


@pytest.fixture
def remote(sshd: SshdService, monkeypatch: pytest.MonkeyPatch) -> RemoteHook:
    set_connection(monkeypatch, "ssh_test", **ssh_connection(sshd))
    hook = RemoteHook("ssh_test", host_name="testhost", command_timeout=30)
    yield hook
    hook.close()


def test_run_logs_host_command_exit_code_and_duration(remote: RemoteHook, capsys: pytest.CaptureFixture[str]) -> None:
    result = remote.run("echo hello; echo oops >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.host) == ("hello\n", "oops\n", 0, "testhost")
    assert result.duration > 0
    text = logged(capsys)
    assert "[testhost] $ echo hello; echo oops >&2" in text
    assert "[testhost] exit=0 duration=" in text


def test_nonzero_exit_raises_with_host_and_code(remote: RemoteHook) -> None:
    with pytest.raises(CommandFailed) as caught:
        remote.run("echo broken >&2; exit 7")
    assert caught.value.result.exit_code == 7
    assert "[testhost] command failed with exit code 7" in str(caught.value)
    assert "broken" in str(caught.value)
    assert remote.run("exit 3", check=False).exit_code == 3


def test_pipefail_is_on(remote: RemoteHook) -> None:
    assert remote.run("false | cat", check=False).exit_code == 1


def test_secret_goes_over_stdin_and_is_masked(remote: RemoteHook, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    remote.add_secret(SECRET)
    target = tmp_path / "from-stdin"
    result = remote.run(f"cat > {target}; cat {target}", stdin=SECRET)
    assert target.read_text() == SECRET
    assert result.stdout == "***"
    assert SECRET not in logged(capsys)
    # even a careless command line is masked in the log
    remote.run(f"true {SECRET}")
    assert SECRET not in logged(capsys) and "true ***" in logged(capsys)


def test_timeout_is_enforced(remote: RemoteHook) -> None:
    with pytest.raises(AirflowException, match=r"\[testhost\] command timed out after 1s"):
        remote.run("sleep 10", timeout=1)


def test_put_file_is_idempotent_atomic_and_reports_changes(remote: RemoteHook, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "demo.conf"
    first = remote.put_file(str(path), "a = 1\n", mode="0640")
    assert first.changed and first.old_sha256 is None
    assert path.read_text() == "a = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not remote.put_file(str(path), "a = 1\n", mode="0640").changed
    changed = remote.put_file(str(path), "a = 2\n", mode="0640")
    assert changed.changed and changed.old_sha256 == first.new_sha256
    assert "-a = 1" in logged(capsys) and "+a = 2" in logged(capsys)  # the diff is the audit of what changed
    assert remote.put_file(str(path), "a = 2\n", mode="0600").changed  # mode alone is a change
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["demo.conf"]  # no temp file left behind


def test_put_file_owner_and_secret_content_not_logged(remote: RemoteHook, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.yml"
    remote.put_file(str(path), f"password: {SECRET}\n", owner="nobody", group="nogroup", mode="0600", secret=True)
    remote.put_file(str(path), f"password: {SECRET}x\n", owner="nobody", group="nogroup", mode="0600", secret=True)
    info = path.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (65534, 0o600)
    assert SECRET not in logged(capsys)


def test_wrong_host_key_is_refused(sshd: SshdService, monkeypatch: pytest.MonkeyPatch) -> None:
    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    set_connection(monkeypatch, "ssh_badkey", **ssh_connection(sshd, host_key=other_key))
    with pytest.raises(AirflowException, match=r"\[testhost\] SSH to 127.0.0.1:\d+ .*failed: BadHostKeyException"):
        RemoteHook("ssh_badkey", host_name="testhost").run("true")


def test_unknown_host_key_is_not_auto_added(sshd: SshdService, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no known_hosts
    conn = ssh_connection(sshd)
    del conn["extra"]["host_key"]
    set_connection(monkeypatch, "ssh_nokey", **conn)
    with pytest.raises(AirflowException, match="not found in known_hosts"):
        RemoteHook("ssh_nokey", host_name="testhost").run("true")


def test_disabled_host_key_check_is_refused_unless_allowed(sshd: SshdService,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ssh_connection(sshd, no_host_key_check=True)
    del conn["extra"]["host_key"]
    set_connection(monkeypatch, "ssh_insecure", **conn)
    with pytest.raises(AirflowException, match="disables host key verification"):
        RemoteHook("ssh_insecure", host_name="testhost").run("true")
    hook = RemoteHook("ssh_insecure", host_name="testhost", allow_unverified_host_keys=True)
    assert hook.run("echo ok").stdout == "ok\n"
    hook.close()


def test_unreachable_host_names_host_and_port(monkeypatch: pytest.MonkeyPatch, sshd: SshdService) -> None:
    conn = ssh_connection(sshd)
    conn["port"] = free_port()
    set_connection(monkeypatch, "ssh_closed", **conn)
    hook = RemoteHook("ssh_closed", host_name="ghost")
    hook.ssh_hook.conn_retry_attempts = 1
    with pytest.raises(AirflowException, match=r"\[ghost\] cannot reach 127.0.0.1:\d+ over SSH"):
        hook.run("true")


def test_wrong_key_is_an_authentication_error(sshd: SshdService, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    conn = ssh_connection(sshd)
    conn["extra"]["key_file"] = str(key)
    conn["extra"]["look_for_keys"] = False
    set_connection(monkeypatch, "ssh_wrongkey", **conn)
    hook = RemoteHook("ssh_wrongkey", host_name="testhost")
    hook.ssh_hook.conn_retry_attempts = 1
    with pytest.raises(AirflowException, match="AuthenticationException"):
        hook.run("true")


def _processes(*argv: str) -> list[int]:
    """Pids whose command line is exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_killable_command_keeps_its_exit_code_output_and_stdin(remote: RemoteHook) -> None:
    result = remote.run("cat; echo done; exit 4", killable=True, stdin="from stdin\n", check=False)
    assert (result.exit_code, result.stdout) == (4, "from stdin\ndone\n")
    assert remote.running == []


def test_on_kill_stops_the_remote_pipeline_a_task_started(sshd: SshdService, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """A killed task's on_kill leaves no process of its remote pipeline running (TERM to the process group)."""
    import threading
    import time
    import uuid

    from pgha.operators.base import PghaOperator
    from pgha_testing import loopback_inventory, write_inventory

    seconds = str(3000 + uuid.uuid4().int % 1000)  # a sleep no other test runs

    class LongRemoteWork(PghaOperator):
        def run(self, context: object) -> object:
            return self.remote("lb").run(f"sleep {seconds} | cat", killable=True).exit_code

    set_connection(monkeypatch, "ssh_lb", **ssh_connection(sshd))
    inventory = write_inventory(tmp_path, loopback_inventory([("n1", "127.0.0.2"), ("n2", "127.0.0.3"),
                                                              ("n3", "127.0.0.4")]))
    task = LongRemoteWork(task_id="copy_data", inventory_path=inventory)
    outcome: dict[str, BaseException] = {}

    def execute() -> None:
        try:
            task.execute({})
        except BaseException as exc:  # noqa: BLE001 - the test reads what the task ended with
            outcome["error"] = exc

    worker = threading.Thread(target=execute)
    worker.start()
    deadline = time.monotonic() + 15
    while not _processes("sleep", seconds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes("sleep", seconds), "the remote sleep never started"
    task.on_kill()
    worker.join(15)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), CommandFailed)  # the task itself fails: its command was killed
    assert _processes("sleep", seconds) == []
    assert task.remote("lb").running == []
    assert not list(Path("/run/pgha/commands").glob("*.pgid"))


def test_a_kill_that_comes_before_the_command_started_cancels_it(tmp_path: Path) -> None:
    """on_kill can run between the SSH request and the command writing its pid file: the
    command must then never run (it did, and a killed copy went on to succeed)."""
    import subprocess

    from pgha.hooks.remote import _KILL_SCRIPT, _KILLABLE_SCRIPT

    pid_file, ran = tmp_path / "commands" / "early.pgid", tmp_path / "ran"
    kill = subprocess.run(["bash", "-c", _KILL_SCRIPT, "pgha-kill", str(pid_file), "early", "1"],
                          capture_output=True, text=True, check=True)
    assert kill.stdout.strip() == "cancelled"
    started = subprocess.run(["bash", "-c", _KILLABLE_SCRIPT, "pgha-killable", str(pid_file), f"touch {ran}"],
                             env={**os.environ, "PGHA_RUN_ID": "early"}, capture_output=True, text=True)
    assert started.returncode == 143 and not ran.exists()
    assert list(pid_file.parent.iterdir()) == []  # neither the pid file nor the marker is left
