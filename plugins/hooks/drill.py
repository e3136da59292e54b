"""The drill's footprint on the probe host: probe unit, its settings, acks and the fault record.

Everything of one drill lives in ``<state_dir>/<drill_id>/`` on the probe host
(a host that is not the leader), so a retried task finds what an earlier try
did even while Airflow's own metadata DB is failing over.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import Any

from pgha.compat import AirflowException, BaseHook

from pgha.hooks.postgres import NodePostgresHook
from pgha.hooks.remote import RemoteHook
from pgha.inventory import Inventory
from pgha import tls
from pgha.tls import TlsFiles

# The probe needs psycopg2 (what Airflow's Postgres provider ships) or psycopg 3.
PYTHON_DRIVER_CHECK = (
    "import importlib.util, sys; "
    "sys.exit(not (importlib.util.find_spec('psycopg2') or importlib.util.find_spec('psycopg')))"
)


def python_with_driver(remote: RemoteHook, candidates: list[str]) -> str | None:
    """The first interpreter in ``candidates`` on the host that can import the probe's driver."""
    for python in candidates:
        check = f"{shlex.quote(python)} -c {shlex.quote(PYTHON_DRIVER_CHECK)}"
        if remote.run(check, check=False, quiet=True).ok:
            return python
    return None


def drill_database(inventory: Inventory, tls_files: TlsFiles | None = None) -> NodePostgresHook:
    """The drill's tables: the cluster's ``postgres`` database as its superuser, through HAProxy's write port
    (with ``tls_files``, the server verified, sslmode=verify-full, and pgha's client certificate shown)."""
    address = inventory.host(inventory.haproxy.host).address
    return NodePostgresHook(inventory.postgres.superuser_conn_id, host=address, port=inventory.haproxy.write_port,
                            database="postgres", tls_files=tls_files)


def probe_tls(inventory: Inventory, local: bool) -> dict[str, str]:
    """The write probe's libpq TLS settings on its host, with the CA file phase 3 installed there. The
    server's name is checked too, unless the probe reaches HAProxy on 127.0.0.1: nobody sits in the middle
    of loopback, and no certificate names 127.0.0.1."""
    if not inventory.tls.enabled:
        return {}
    return {"sslmode": "verify-ca" if local else "verify-full", "sslrootcert": tls.CA_FILE}


def python_beside_unit(remote: RemoteHook, unit: str) -> str | None:
    """The ``python`` beside the program a systemd unit starts (its virtualenv's), or None if not shown."""
    shown = remote.run(f"systemctl show -P ExecStart {shlex.quote(unit)}", check=False, quiet=True).stdout
    program = re.search(r"path=(\S+)", shown)
    return program.group(1).rsplit("/", 1)[0] + "/python" if program else None


class DrillProbeHook(BaseHook):
    """
    Controls one drill's write probe and records on the probe host.

    :param remote: RemoteHook of the probe host.
    :param state_dir: ``drill.state_dir`` of the inventory.
    :param drill_id: the drill (unit and directory names).
    """

    hook_name = "pgha drill probe"

    def __init__(self, remote: RemoteHook, state_dir: str, drill_id: str) -> None:
        super().__init__()
        self.remote = remote
        self.state_dir = state_dir.rstrip("/")
        self.drill_id = drill_id

    def get_conn(self) -> RemoteHook:
        return self.remote

    @property
    def directory(self) -> str:
        return f"{self.state_dir}/{self.drill_id}"

    @property
    def unit(self) -> str:
        return f"pgha-drill-probe-{self.drill_id}"

    @property
    def script(self) -> str:
        return f"{self.state_dir}/probe.py"

    @property
    def settings_file(self) -> str:
        return f"{self.directory}/probe.json"

    @property
    def ack_file(self) -> str:
        return f"{self.directory}/acks"

    def record_file(self, name: str) -> str:
        return f"{self.directory}/{name}.json"

    def install(self, script: str, settings: dict[str, Any]) -> bool:
        """The probe script and this drill's settings (0600: they hold the password); True if changed."""
        self.remote.run(f"install -d -m 0700 {shlex.quote(self.state_dir)} {shlex.quote(self.directory)}")
        changed = self.remote.put_file(self.script, script, mode="0755").changed
        settings_file = self.remote.put_file(self.settings_file, json.dumps(settings), mode="0600", secret=True)
        return changed or settings_file.changed

    def remove_settings(self) -> bool:
        """
        Delete the probe's settings (they hold its password): this drill's and any an earlier drill
        left behind. The probe reads them only when it starts. True if one was there.
        """
        pattern = f"{shlex.quote(self.state_dir)}/*/probe.json"
        if not self.remote.run(f"ls {pattern}", check=False, quiet=True).ok:
            return False
        self.remote.run(f"rm -f {pattern}")
        return True

    def is_active(self) -> bool:
        return self.remote.run(f"systemctl is-active --quiet {shlex.quote(self.unit)}", check=False, quiet=True).ok

    def start(self, python: str) -> bool:
        """Start the probe as a transient unit unless it runs already; True if started."""
        if self.is_active():
            return False
        self.remote.run(
            f"systemd-run --quiet --collect --unit={shlex.quote(self.unit)} "
            f"{shlex.quote(python)} {shlex.quote(self.script)} {shlex.quote(self.settings_file)}"
        )
        return True

    def stop(self) -> bool:
        """Stop the probe (it writes ``# stopped``); True if it was running."""
        active = self.is_active()
        if active:
            self.remote.run(f"systemctl stop {shlex.quote(self.unit)}", timeout=120)
        return active

    def _read(self, path: str) -> str:
        """A file's text, '' when it does not exist (yet): an expected state, not worth a warning."""
        return self.remote.run(f"cat {shlex.quote(path)} 2>/dev/null || true", quiet=True).stdout

    def read_acks(self) -> str:
        """The ack file's text ('' before the first ack)."""
        return self._read(self.ack_file)

    def wait_for_acks(self, count: int, timeout: float) -> int:
        """Wait until the probe has acknowledged ``count`` commits; the number seen."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            seen = sum(1 for line in self.read_acks().splitlines() if line[:1].isdigit())
            if seen >= count:
                return seen
            time.sleep(0.5)
        raise AirflowException(
            f"[{self.remote.host_name}] probe {self.unit} acknowledged {seen} of {count} commits in {timeout:.0f}s; "
            f"see {self.ack_file} and `journalctl -u {self.unit}`"
        )

    def record(self, name: str) -> dict[str, Any] | None:
        """A record a drill task kept (``fault``, ``target_back``), None if there is none (yet)."""
        text = self._read(self.record_file(name))
        return json.loads(text) if text.strip() else None

    def save_record(self, name: str, record: dict[str, Any]) -> None:
        self.remote.put_file(self.record_file(name), json.dumps(record, sort_keys=True) + "\n", mode="0600")

    def fault_record(self) -> dict[str, Any] | None:
        """What the inject task recorded (None: nothing was injected for this drill)."""
        return self.record("fault")

    def record_fault(self, record: dict[str, Any]) -> None:
        self.save_record("fault", record)
