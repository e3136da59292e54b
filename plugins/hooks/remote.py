"""Run commands and place files on a remote host, leaving an audit trail.

Built on the SSH provider's ``SSHHook``, which owns the connection. Every call
logs the host, the command (secrets masked), the exit code and the duration.
Secrets travel over stdin or into 0600 files, never on a command line.
"""

from __future__ import annotations

import difflib
import hashlib
import shlex
import socket
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.providers.ssh.hooks.ssh import SSHHook
from pgha.compat import AirflowException, BaseHook

if TYPE_CHECKING:
    import paramiko

MASK = "***"

# Root must never be led by a link a non-root user planted: the directory of a
# path is entered one component at a time (cd, so every later name is relative
# to the directory reached, which a rename cannot swap), a symbolic link is
# followed only where no one but root could have made it (a directory owned by
# root that no one else may write), and each step checks it landed below where
# it came from. Exit 4 with "pgha: refusing <path>: <why>" on stderr.
_SAFE_PATH = r"""
set -u
CDPATH=
refuse() { echo "pgha: refusing $1" >&2; exit 4; }
trusted() {  # owned by root and writable by no one else
  set -- $(stat -c '%u %a' -- "$1")
  [ "$1" = 0 ] && [ $(( 0$2 & 022 )) = 0 ]
}
enter() {  # enter directory $1 of path $3; $2 = create: make what is missing (0755), else return 1 when missing
  want=$3 rest=${1#/} hops=0
  cd / || exit 1
  while [ -n "$rest" ]; do
    part=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    case $part in ''|.) continue ;; ..) cd -P .. || exit 1; continue ;; esac
    if [ -L "$part" ]; then
      trusted . || refuse "$want: $(pwd -P)/$part is a symbolic link in a directory a user other than root can write"
      hops=$((hops + 1))
      [ "$hops" -le 40 ] || refuse "$want: too many symbolic links"
      target=$(readlink -- "$part") || exit 1
      case $target in /*) cd / || exit 1 ;; esac
      rest=${target#/}${rest:+/$rest}
      continue
    fi
    if [ ! -e "$part" ]; then
      [ "$2" = create ] || return 1
      mkdir -m 0755 -- "$part" || exit 1
    fi
    [ -d "$part" ] || refuse "$want: $(pwd -P)/$part is not a directory"
    here=$(stat -c %d:%i .)
    cd -P -- "$part" || exit 1
    [ "$(stat -c %d:%i ..)" = "$here" ] || refuse "$want: $part was replaced by a link while pgha entered it"
  done
}
split() {  # dir and name of $1
  name=${1##*/} dir=${1%/*}
  [ -n "$dir" ] || dir=/
}
"""

# Reads a file without following a link: exit 2 when it (or its directory) does not exist.
_READ_SCRIPT = _SAFE_PATH + r"""
path=$1
split "$path"
enter "$dir" no "$path" || exit 2
[ -L "$name" ] && refuse "$path: it is a symbolic link"
[ -e "$name" ] || exit 2
[ -f "$name" ] || refuse "$path: it is not a regular file"
exec dd if="$name" iflag=nofollow status=none
"""

# Writes stdin into a new temp file next to the target (created exclusively: no
# link can be planted at its name first), sets owner and mode through the open
# file (/proc/$$/fd/3, never through the name), and renames it over the target
# only when the checksum, owner or mode differ. A target that is a symbolic
# link is refused, not replaced. Prints one status word.
_PUT_SCRIPT = _SAFE_PATH + r"""
dst=$1 want_sum=$2 owner=$3 group=$4 mode=$5
split "$dst"
enter "$dir" create "$dst"
[ -L "$name" ] && refuse "$dst: it is a symbolic link"
[ ! -e "$name" ] || [ -f "$name" ] || refuse "$dst: it is not a regular file"
umask 077
set -C
tmp=$(mktemp -u .pgha-put.XXXXXXXXXX)
trap 'rm -f -- "$tmp"' EXIT
exec 3> "$tmp"
set +C
mine=/proc/$$/fd/3
cat >&3
got_sum=$(sha256sum < "$mine" | cut -d' ' -f1)
[ "$got_sum" = "$want_sum" ] || { echo "checksum mismatch after upload: $got_sum" >&2; exit 3; }
chown "$owner:$group" "$mine"
chmod "$mode" "$mine"
sum_of() { dd if="$1" iflag=nofollow status=none | sha256sum | cut -d' ' -f1; }
old_sum=absent
if [ -f "$name" ]; then
  old_sum=$(sum_of "$name")
  if [ "$old_sum" = "$want_sum" ] \
     && [ "$(stat -c '%U:%G:%a' -- "$name")" = "$owner:$group:$(printf '%o' "0$mode")" ]; then
    echo unchanged
    exit 0
  fi
fi
inode=$(stat -L -c %d:%i "$mine")
[ "$(stat -c %d:%i -- "$tmp")" = "$inode" ] || refuse "$dst: its temp file $dir/$tmp was replaced"
[ -L "$name" ] && refuse "$dst: it is a symbolic link"
mv -f -T -- "$tmp" "$name"
trap - EXIT
[ "$(stat -c %d:%i -- "$name")" = "$inode" ] || refuse "$dst: it was replaced while pgha installed it"
echo "changed $old_sum"
"""


# Where a killable command leaves its process group id while it runs (root-owned, tmpfs).
RUN_DIR = "/run/pgha/commands"

# Runs "$2" as the leader of a new session (so of a new process group): every process it
# starts, pipelines included, is in that group. $PGHA_RUN_ID in the leader's environment
# lets kill_running tell this group from one that reused the id.
_KILLABLE_SCRIPT = r"""
pid_file=$1 command=$2
mkdir -p "$(dirname "$pid_file")"
setsid --wait bash -c 'echo $$ > "$0.new" && mv -f "$0.new" "$0" || exit 1
[ -e "$0.cancelled" ] && exit 143
exec bash -o pipefail -c "$1"' "$pid_file" "$command"
rc=$?
rm -f "$pid_file" "$pid_file.cancelled"
exit $rc
"""

# Stops the process group a killable command left in its pid file: TERM, then KILL after
# the grace period. Prints "stopped", "killed", "gone" or "cancelled". A command whose pid
# file is not there yet may be about to start (a kill right after the SSH request): the
# marker it checks once its pid file is written stops it before it runs anything.
_KILL_SCRIPT = r"""
pid_file=$1 run_id=$2 grace=$3
if ! group=$(cat "$pid_file" 2>/dev/null); then
  mkdir -p "$(dirname "$pid_file")"
  : > "$pid_file.cancelled"
  find "$(dirname "$pid_file")" -name '*.cancelled' -mmin +1440 -delete 2>/dev/null
  group=$(cat "$pid_file" 2>/dev/null) || { echo cancelled; exit 0; }
fi
if ! tr '\0' '\n' < "/proc/$group/environ" 2>/dev/null | grep -qx "PGHA_RUN_ID=$run_id"; then
  rm -f "$pid_file"; echo gone; exit 0
fi
kill -TERM -- "-$group" 2>/dev/null
for _ in $(seq $((grace * 10))); do
  kill -0 -- "-$group" 2>/dev/null || { rm -f "$pid_file"; echo stopped; exit 0; }
  sleep 0.1
done
kill -KILL -- "-$group" 2>/dev/null
rm -f "$pid_file"
echo killed
"""


@dataclass(frozen=True)
class RunningCommand:
    """A killable command started on the host and not yet seen to end."""

    run_id: str
    pid_file: str
    command: str  # as logged


class CommandFailed(AirflowException):
    """A remote command exited non-zero; carries the result for the caller."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        detail = (result.stderr or result.stdout).strip()[-2000:]
        super().__init__(
            f"[{result.host}] command failed with exit code {result.exit_code} "
            f"after {result.duration:.2f}s: {result.command}\n{detail}"
        )


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str  # as logged: secrets masked
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class FileChange:
    host: str
    path: str
    changed: bool
    old_sha256: str | None
    new_sha256: str


class RemoteHook(BaseHook):
    """
    Remote execution on one host over SSH.

    :param ssh_conn_id: Airflow SSH connection of the host.
    :param host_name: the inventory name, used in every log line.
    :param allow_unverified_host_keys: accept a connection that skips host key
        verification (off by default: a connection must carry ``host_key`` or
        the host must be in known_hosts).
    :param command_timeout: default seconds a command may run.
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    conn_type = "ssh"
    hook_name = "pgha remote host"

    def __init__(
        self,
        ssh_conn_id: str,
        host_name: str | None = None,
        allow_unverified_host_keys: bool = False,
        command_timeout: int = 600,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.host_name = host_name or ssh_conn_id
        self.allow_unverified_host_keys = allow_unverified_host_keys
        self.command_timeout = command_timeout
        self._secrets: set[str] = set()
        self._running: dict[str, RunningCommand] = {}

    @cached_property
    def ssh_hook(self) -> SSHHook:
        hook = SSHHook(ssh_conn_id=self.ssh_conn_id, conn_retry_attempts=2)
        if hook.no_host_key_check and not self.allow_unverified_host_keys:
            raise AirflowException(
                f"[{self.host_name}] connection {self.ssh_conn_id!r} disables host key verification "
                "(no_host_key_check). Put the host's public key in the connection extra 'host_key' "
                "or in known_hosts, or set ssh.allow_unverified_host_keys in the inventory."
            )
        return hook

    @property
    def login(self) -> str:
        return self.ssh_hook.username or "root"

    def get_conn(self) -> paramiko.SSHClient:
        try:
            return self.ssh_hook.get_conn()
        except (OSError, socket.timeout) as exc:
            raise AirflowException(
                f"[{self.host_name}] cannot reach {self.ssh_hook.remote_host}:{self.ssh_hook.port} "
                f"over SSH (connection {self.ssh_conn_id!r}): {exc}"
            ) from exc
        except Exception as exc:  # paramiko's auth and host key errors
            raise AirflowException(
                f"[{self.host_name}] SSH to {self.ssh_hook.remote_host}:{self.ssh_hook.port} "
                f"(connection {self.ssh_conn_id!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        if "ssh_hook" in self.__dict__ and self.ssh_hook.client:
            self.ssh_hook.client.close()
            self.ssh_hook.client = None

    def add_secret(self, *secrets: str | None) -> None:
        """Values that must never appear in a log line (masked as ***)."""
        for secret in secrets:
            if secret:
                self._secrets.add(secret)
                try:
                    from airflow.sdk.log import mask_secret

                    mask_secret(secret)
                except Exception:  # outside a task there is no masker to tell
                    pass

    def mask(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    def wrap(self, command: str, sudo: bool = True) -> str:
        """The command as sent: bash with pipefail, under ``sudo -n`` unless logged in as root."""
        body = f"bash -o pipefail -c {shlex.quote(command)}"
        if sudo and self.login != "root":
            return f"sudo -n -- {body}"
        return body

    def run(
        self,
        command: str,
        *,
        sudo: bool = True,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        log_as: str | None = None,
        quiet: bool = False,
        killable: bool = False,
    ) -> CommandResult:
        """
        Run ``command`` on the host and return its result.

        :param stdin: data fed to the command's stdin (the way to pass secrets).
        :param check: raise CommandFailed on a non-zero exit code.
        :param log_as: what to log instead of the command (long scripts).
        :param quiet: log the command at debug level (polling loops).
        :param killable: run it in a process group of its own that ``kill_running``
            stops (long work a killed task must not leave behind: a pipeline, a download).
        """
        shown = self.mask(log_as or command)
        timeout = timeout or self.command_timeout
        running = None
        sent = command
        if killable:
            run_id = uuid.uuid4().hex
            running = RunningCommand(run_id, f"{RUN_DIR}/{run_id}.pgid", shown)
            sent = (f"PGHA_RUN_ID={run_id} bash -c {shlex.quote(_KILLABLE_SCRIPT)} pgha-killable "
                    f"{shlex.quote(running.pid_file)} {shlex.quote(command)}")
            self._running[run_id] = running
        client = self.get_conn()
        started = time.monotonic()
        try:
            exit_code, out, err = self._exec(client, self.wrap(sent, sudo), stdin, timeout)
        except Exception:
            if running:  # timed out or the session broke: the command must not go on beside a retry
                for outcome in self.kill_running():
                    self.log.warning("[%s] %s", self.host_name, outcome)
            raise
        if running:
            self._running.pop(running.run_id, None)
        result = CommandResult(
            host=self.host_name,
            command=shown,
            exit_code=exit_code,
            stdout=out,
            stderr=err,
            duration=time.monotonic() - started,
        )
        self._log_result(result, quiet)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def _exec(
        self, client: paramiko.SSHClient, command: str, stdin: str | bytes | None, timeout: float
    ) -> tuple[int, str, str]:
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.settimeout(timeout)
        try:
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            channel.shutdown_write()
            out, err = self._collect(channel, timeout)
            return channel.recv_exit_status(), self.mask(out), self.mask(err)
        except socket.timeout as exc:
            raise AirflowException(f"[{self.host_name}] command timed out after {timeout:.0f}s") from exc
        finally:
            channel.close()

    @staticmethod
    def _collect(channel: paramiko.Channel, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise socket.timeout()
            time.sleep(0.01)
        return out.decode(errors="replace"), err.decode(errors="replace")

    def _log_result(self, result: CommandResult, quiet: bool) -> None:
        log = self.log.debug if quiet and result.ok else self.log.info
        log("[%s] $ %s", result.host, result.command)
        log("[%s] exit=%d duration=%.2fs", result.host, result.exit_code, result.duration)
        if not result.ok:
            for stream in (result.stdout, result.stderr):
                if stream.strip():
                    self.log.warning("[%s] %s", result.host, stream.strip()[-4000:])

    @property
    def running(self) -> list[RunningCommand]:
        """Killable commands started here whose end this hook has not seen."""
        return list(self._running.values())

    def kill_running(self, grace: int = 10, remove: tuple[str, ...] = ()) -> list[str]:
        """
        Stop every killable command this hook started and did not see end (a task
        being killed, or one whose SSH session broke): TERM to its process group,
        KILL after ``grace`` seconds; then delete the files in ``remove`` (a secret
        file the command read). Returns one line per command: what happened.
        """
        outcomes: list[str] = []
        if not self._running and not remove:
            return outcomes
        # Its own SSH connection: the task's may be closing, or busy in the command being killed.
        killer = RemoteHook(self.ssh_conn_id, self.host_name, self.allow_unverified_host_keys, self.command_timeout)
        killer._secrets = self._secrets
        try:
            for running in list(self._running.values()):
                outcomes.append(self._kill(killer, running, grace))
            if remove:
                killer.run("rm -f -- " + " ".join(shlex.quote(path) for path in remove))
        finally:
            killer.close()
        return outcomes

    def _kill(self, killer: RemoteHook, running: RunningCommand, grace: int) -> str:
        result = killer.run(
            f"bash -c {shlex.quote(_KILL_SCRIPT)} pgha-kill {shlex.quote(running.pid_file)} "
            f"{shlex.quote(running.run_id)} {int(grace)}",
            log_as=f"kill_running {running.pid_file} ({running.command[:200]})",
            timeout=grace + 30,
        )
        self._running.pop(running.run_id, None)
        outcome = f"{result.stdout.strip() or 'gone'}: {running.command}"
        self.log.warning("[%s] %s", self.host_name, outcome)
        return outcome

    def read_file(self, path: str) -> str | None:
        """
        The file's text, or None when it does not exist. Refuses (AirflowException naming the
        path) a file that is a symbolic link or lies behind one a user other than root could
        have planted: root reads only what the path really names.
        """
        result = self.run(
            f"bash -c {shlex.quote(_READ_SCRIPT)} pgha-read {shlex.quote(path)}",
            check=False, quiet=True, log_as=f"read_file {path}",
        )
        if result.exit_code == 4:
            raise AirflowException(f"[{self.host_name}] {result.stderr.strip()}; nothing was read or changed")
        return result.stdout if result.ok else None

    def put_file(
        self,
        path: str,
        content: str,
        *,
        owner: str = "root",
        group: str | None = None,
        mode: str = "0644",
        secret: bool = False,
    ) -> FileChange:
        """
        Install ``content`` at ``path`` atomically; do nothing if it is already there.

        The content goes over stdin into a temp file in the same directory, is
        checksummed, given owner and mode, and renamed over the target only if
        something differs. A non-secret file's diff is logged. A target that is a
        symbolic link, or a directory reached through a link a user other than root
        could have planted, is refused (AirflowException naming the path), not followed.
        """
        group = group or owner
        new_sum = hashlib.sha256(content.encode()).hexdigest()
        old_text = None if secret else self.read_file(path)
        args = " ".join(shlex.quote(a) for a in ("pgha-put", path, new_sum, owner, group, mode.lstrip("0") or "0"))
        result = self.run(
            f"bash -c {shlex.quote(_PUT_SCRIPT)} {args}",
            stdin=content,
            log_as=f"put_file {path} (sha256 {new_sum[:12]}, {owner}:{group} {mode})",
            check=False,
        )
        if result.exit_code == 4:
            raise AirflowException(f"[{self.host_name}] {result.stderr.strip()}; nothing was changed")
        if not result.ok:
            raise CommandFailed(result)
        words = result.stdout.split()
        changed = bool(words) and words[0] == "changed"
        old_sum = words[1] if changed and len(words) > 1 and words[1] != "absent" else None
        self.log.info("[%s] %s: %s", self.host_name, path, "changed" if changed else "unchanged")
        if changed and old_text is not None and not secret:
            diff = difflib.unified_diff(
                old_text.splitlines(), content.splitlines(), f"{path} (before)", f"{path} (after)", lineterm=""
            )
            self.log.info("[%s] diff:\n%s", self.host_name, self.mask("\n".join(diff)))
        return FileChange(self.host_name, path, changed, old_sum, new_sum)
