"""`deploy`: dags/, lab/dags, lab/inventory.yml and the pgha wheel to an Airflow host;
pgha is pip-installed into the host's Airflow virtualenv, as a deployment does.
"""

import hashlib
import os
import re
import shlex

from .topology import (AIRFLOW_HOST, AIRFLOW_HOSTS_SUITE, BRIDGE_IP, CLUSTER_MAJOR, CLUSTER_SUITES, SOURCE_MAJOR,
                       WHEEL_PORT)
from .settings import AIRFLOW_PIP, DEPLOY_ROOT, LAB_DAGS, LAB_DIR, PROVISION_DIR, REPO_DIR
from .common import die
from .ssh import ssh_run, tar_bytes
from .cache import pgha_wheel
from .containers import running


def section_line(section, key):
    """The value of the first ``key:`` inside the top-level ``section:`` of lab/inventory.yml (group 1: what
    precedes it; group 2: the value, a word or a flow mapping; a comment after it stays)."""
    return re.compile(rf"^({section}:\n(?:[ ]+.*\n|\n)*?[ ]+{key}:[ ]*)(\{{[^}}\n]*\}}|[^\s#]+)", re.MULTILINE)


# lab/inventory.yml's lines `deploy` sets: the source and cluster majors; Patroni from Debian 13's package
# where the database hosts run it (the wheelhouse holds Debian 12's Python's wheels only).
PACKAGE_INSTALL = "{method: package}"


def lab_inventory(text, source_major=SOURCE_MAJOR, cluster_major=CLUSTER_MAJOR):
    """lab/inventory.yml's text with ``source.major`` (PGHA_LAB_SOURCE_MAJOR) and ``postgres.major``
    (PGHA_LAB_CLUSTER_MAJOR) set to the lab's, and Patroni's install method to Debian's package on
    database hosts that are not Debian 12."""
    edits = [("source", "major", str(source_major)), ("postgres", "major", str(cluster_major))]
    if CLUSTER_SUITES[cluster_major] != AIRFLOW_HOSTS_SUITE:
        edits.append(("patroni", "install", PACKAGE_INSTALL))
    for section, key, value in edits:
        text, count = section_line(section, key).subn(lambda m: f"{m.group(1)}{value}", text, count=1)
        if count != 1:
            die(f"deploy: lab/inventory.yml has no {section}.{key} line to set")
    return text


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
    files["lab/inventory.yml"] = (lab_inventory((LAB_DIR / "inventory.yml").read_text()).encode(), 0o644)
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
    install_pgha(name, next(n for n in files if n.startswith("dist/")))
    return int(out.strip().splitlines()[-1])


def install_pgha(name, wheel):
    """pip-install the deployed wheel into the Airflow virtualenv unless that very wheel is installed
    (a stamp holds its sha256): --force-reinstall, since a rebuilt wheel keeps its version."""
    path = f"{DEPLOY_ROOT}/{wheel}"
    stamp = f"{DEPLOY_ROOT}/.installed-wheel"  # outside dist/, which every sync makes exact
    pip = (f"{AIRFLOW_PIP} install -q --disable-pip-version-check --no-index "
           f"--find-links http://{BRIDGE_IP}:{WHEEL_PORT}/ --trusted-host {BRIDGE_IP}")
    ssh_run(name, f"set -e; sum=$(sha256sum {path} | cut -d' ' -f1); "
                  f"[ \"$(cat {stamp} 2>/dev/null)\" = \"$sum\" ] && exit 0; "
                  f"{pip} {path}; {pip} --force-reinstall --no-deps {path}; echo \"$sum\" > {stamp}")
