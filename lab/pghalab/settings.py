"""Where the lab keeps things on the outer machine and on its hosts, and its fixed names.

PGHA_LAB_CACHE (default /var/cache/pgha-lab: base image, wheelhouse, snapshots, pgha
wheels; shared by every checkout) and PGHA_LAB_STATE (default lab/.state: this lab's
record, keys, secrets, host disks and logs) move them.
"""

import os
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent  # lab/
REPO_DIR = LAB_DIR.parent
LAB_COMMAND = LAB_DIR / "lab"  # the executable (the fault gate runs its crash/start/isolate/heal)
BUILD_SCRIPT = LAB_DIR / "build-image.sh"
WHEEL_REQUIREMENTS = LAB_DIR / "wheelhouse.txt"
PROVISION_DIR = LAB_DIR / "provision"  # what `provision` pushes to the Airflow host
LAB_DAGS = LAB_DIR / "dags"  # the lab's own DAGs, merged into the host's dags folder
LAB_INVENTORY = LAB_DIR / "inventory.yml"

CACHE = Path(os.environ.get("PGHA_LAB_CACHE", "/var/cache/pgha-lab")).resolve()
# resolved: mounts are found by their path in /proc/self/mountinfo, which has no symlinks
STATE = Path(os.environ.get("PGHA_LAB_STATE", LAB_DIR / ".state")).resolve()
RECORD = STATE / "run.json"  # what is running now; `down` uses only this
KEYS = STATE / "keys"  # lab client key + per-host SSH host keys (kept by `down`)
HOST_DIRS = STATE / "hosts"  # per host: upper/ work/ merged/ console.log
LOGS = STATE / "logs"
SECRETS = STATE / "secrets.json"  # every generated secret of the lab (0600), kept by `down`
NSPAWN_RUN = Path("/run/systemd/nspawn")  # nspawn's own runtime dir
BRIDGE_OWNER = Path("/run/pgha-lab.owner")  # which checkout's lab made the bridge (its lab command and state)
SNAPSHOTS = CACHE / "snapshots"  # NAME-<key>/{meta.json,secrets.json}; layers/<id>/ (former upper dirs)

NFT_TABLE = "pgha_lab"  # family inet
CGROUP_DIR = "pgha-lab"  # per-host cgroups live under <hierarchy>/pgha-lab/<host>
FAULT_GATE_VERBS = ("crash", "start", "isolate", "heal")
PROVISIONED = "provisioned"  # name of the snapshots `provision` makes and reuses (one per host)
DEPLOY_ROOT = "/opt/pgha"  # dags/, lab/inventory.yml and the pgha wheel (dist/) on the Airflow hosts
AIRFLOW_PIP = "/opt/airflow/venv/bin/pip"  # pgha is installed into the Airflow units' virtualenv
PGHA_SOURCES = ("pyproject.toml", "README.md", "plugins", "include")  # what the pgha wheel is built from

BOOT_TIMEOUT = 180
STOP_TIMEOUT = 60
