"""`deploy`: dags/, lab/dags, lab/inventory.yml and the pgha wheel to an Airflow host;
pgha is pip-installed into the host's Airflow virtualenv, as a deployment does.
"""

import hashlib
import os
import shlex

from .topology import AIRFLOW_HOST, BRIDGE_IP, WHEEL_PORT
from .settings import AIRFLOW_PIP, DEPLOY_ROOT, LAB_DAGS, LAB_DIR, PROVISION_DIR, REPO_DIR
from .common import die
from .ssh import ssh_run, tar_bytes
from .cache import pgha_wheel
from .containers import running


def deploy_files():
    """{path under /opt/pgha: (bytes, mode)}: the repo's dags/ (+ lab/dags merged into it),
    lab/inventory.yml and the pgha wheel under dist/; root-owned, world-readable."""
    files = {}

    def add_tree(src, dest):
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                name = f"{dest}/{path.relative_to(src)}"
                if name in files:
                    die(f"deploy: {name} comes from both the repo and {src}")
                files[name] = (path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)

    add_tree(REPO_DIR / "dags", "dags")
    add_tree(LAB_DAGS, "dags")
    files["lab/inventory.yml"] = ((LAB_DIR / "inventory.yml").read_bytes(), 0o644)
    files["lab/probe_writer.py"] = ((LAB_DIR / "probe_writer.py").read_bytes(), 0o644)  # cutover tests' writer
    wheel = pgha_wheel()
    files[f"dist/{wheel.name}"] = (wheel.read_bytes(), 0o644)
    return files


def deploy(rec, name=AIRFLOW_HOST):
    """Sync the code to the host and pip-install the pgha wheel into the Airflow virtualenv
    (its requirements come from the lab's wheelhouse, already satisfied by Airflow's own
    install); returns the number of files that changed (0: already there)."""
    if not running(rec, name):
        die(f"{name} is not running")
    files = deploy_files()
    digest = hashlib.sha256(tar_bytes(files)).hexdigest()[:16]
    have = ssh_run(name, f"cat {DEPLOY_ROOT}/.deployed 2>/dev/null || true").strip()
    if have == digest:
        return 0
    script = (PROVISION_DIR / "deploy_sync.py").read_text()
    out = ssh_run(name, f"python3 -c {shlex.quote(script)} {DEPLOY_ROOT} {digest}", stdin=tar_bytes(files))
    wheel = next(n for n in files if n.startswith("dist/"))
    index = f"http://{BRIDGE_IP}:{WHEEL_PORT}/"
    ssh_run(name, f"{AIRFLOW_PIP} uninstall -q -y pgha >/dev/null 2>&1 || true; "
                  f"{AIRFLOW_PIP} install -q --disable-pip-version-check --no-index --find-links {index} "
                  f"--trusted-host {BRIDGE_IP} {DEPLOY_ROOT}/{wheel}")
    return int(out.strip().splitlines()[-1])
