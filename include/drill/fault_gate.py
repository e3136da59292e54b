#!/usr/bin/env python3
"""pgha fault gate: the only thing the drill's SSH key may run on the fault injector.

The fault injector is the machine that can crash or isolate a database host
(hypervisor, cloud CLI box, the lab's outer machine). The drill reaches it
over SSH with a key whose authorized_keys line forces this script:

    restrict,command="/usr/local/lib/pgha/fault_gate.py /etc/pgha/fault-gate.json" ssh-ed25519 AAAA... pgha-drill

The inventory's ``drill.inject_commands`` are then plain ``<verb> {node}``
(e.g. ``crash {node}`` / ``start {node}``). The gate takes the requested
command from SSH_ORIGINAL_COMMAND (unwrapping the ``sudo -n -- bash -o
pipefail -c '...'`` that RemoteHook adds), accepts exactly ``<verb> <node>``
with a verb and a node from its config, runs the configured argv plus the
node, and logs every request. Config (JSON)::

    {"nodes": ["psg1", "psg2", "psg3"],
     "verbs": {"crash": ["/srv/pgha/lab/lab", "crash"], "start": ["/srv/pgha/lab/lab", "start"],
               "isolate": ["/srv/pgha/lab/lab", "isolate"], "heal": ["/srv/pgha/lab/lab", "heal"]},
     "log": "/var/log/pgha-fault-gate.log"}

Standard library only.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WRAPPERS = (["sudo", "-n", "--"], ["bash", "-o", "pipefail", "-c"])


class Refused(Exception):
    """The request is not one the gate allows."""


def requested(original: str) -> list[str]:
    """``<verb> <node>`` out of SSH_ORIGINAL_COMMAND, with RemoteHook's wrappers removed."""
    words = shlex.split(original)
    for wrapper in WRAPPERS:
        if words[: len(wrapper)] == wrapper:
            words = words[len(wrapper):]
            if wrapper[0] == "bash":
                if len(words) != 1:
                    raise Refused("bash -c takes exactly one command")
                words = shlex.split(words[0])
    return words


def resolve(config: dict[str, Any], words: list[str]) -> list[str]:
    """The argv to run for ``[verb, node]``; Refused for anything else."""
    if len(words) != 2:
        raise Refused(f"expected '<verb> <node>', got {len(words)} word(s)")
    verb, node = words
    if verb not in config["verbs"]:
        raise Refused(f"verb {verb!r} not allowed (allowed: {sorted(config['verbs'])})")
    if node not in config["nodes"]:
        raise Refused(f"node {node!r} not allowed")
    return [*config["verbs"][verb], node]


def _log(config: dict[str, Any], text: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {os.environ.get('SSH_CLIENT', '-').split(' ')[0]} {text}\n"
    try:
        with open(config.get("log", "/var/log/pgha-fault-gate.log"), "a") as fh:
            fh.write(line)
    except OSError:
        sys.stderr.write(line)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} CONFIG.json (as an authorized_keys forced command)", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[1]).read_text())
    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        command = resolve(config, requested(original))
    except (Refused, ValueError) as exc:
        _log(config, f"REFUSED {original!r}: {exc}")
        print(f"fault gate: refused: {exc}", file=sys.stderr)
        return 126
    _log(config, f"RUN {shlex.join(command)}")
    return subprocess.run(command, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
