"""A host seen through a dry run: it is read for real and never changed.

``DryRunRemote`` stands where a RemoteHook stands. A command that only reads
(``cat``, ``systemctl is-active``, a package query, ``X --version``...) runs on
the host as usual; any other command is not sent: it is logged as
``would run: ...``, kept in the plan and answered with exit code 0 and no
output. ``put_file`` reads the file the host has now and logs the unified diff
against what pgha would write (``would change FILE``) instead of writing it; a
later read of that path in the same task sees the would-be content. A file
marked secret never shows its content: only that, and how many lines, would
change. Every line logged is masked with the secrets the task registered.

Only commands on the read-only list below run; an unknown command is treated as
one that changes the host, so a new command can never slip through a dry run.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass
from typing import Any

from pgha.compat import BaseHook

from pgha.hooks.remote import CommandResult, FileChange

# Commands that only read the host, matched against the whole command once single-quoted words are
# blanked; a command with any shell operator (;, &, |, redirection other than to /dev/null, $, backticks,
# parentheses) never matches.
_READ_ONLY = re.compile(
    r"(cat|test|stat|ls|id|df|getent|getenforce|getsebool|dpkg-query|ss)(\s.*)?"
    r"|rpm -q(\s.*)?"
    r"|sysctl -n \S+"
    r"|hostname"
    r"|date \+\S+"
    r"|ip -o (-4 |-6 )?addr show(\s.*)?"
    r"|semanage port -l"
    r"|systemctl (is-active|is-enabled|is-failed|cat|show|status|list-units|list-unit-files)(\s.*)?"
    r"|firewall-cmd (--permanent )?--query-port=\S+|firewall-cmd --state"
    r"|\S+ (--version|-v|-V)"
)
_QUOTED = re.compile(r"'[^']*'")
_TO_DEV_NULL = re.compile(r"\s+[12]?>/dev/null(?=\s|$)")
_OR_TRUE = re.compile(r"\s+\|\|\s+true$")
_SHELL = re.compile(r"[;&|<>`$()\\\n]")


def reads_only(command: str) -> bool:
    """True when ``command`` is known to leave the host as it was (see ``_READ_ONLY``)."""
    bare = _OR_TRUE.sub("", _TO_DEV_NULL.sub("", _QUOTED.sub("''", command.strip())))
    return not _SHELL.search(bare) and _READ_ONLY.fullmatch(bare) is not None


@dataclass(frozen=True)
class PlannedChange:
    host: str
    kind: str  # "run" or "file"
    what: str  # the command as logged (masked), or the path with owner and mode


class DryRunRemote(BaseHook):
    """
    A RemoteHook (or anything standing where one stands) in dry-run mode; see the module docstring.

    :param remote: the host's real RemoteHook.
    """

    dry_run = True
    hook_name = "pgha dry run"

    def __init__(self, remote: Any) -> None:
        super().__init__()
        self.remote = remote
        self.planned: list[PlannedChange] = []
        self._would_be: dict[str, str] = {}  # path -> content a put_file of this task would have written

    # ------------------------------------------------------------ what passes through unchanged

    @property
    def host_name(self) -> str:
        return self.remote.host_name

    @property
    def login(self) -> str:
        return self.remote.login

    @property
    def running(self) -> list[Any]:
        return self.remote.running

    def kill_running(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.remote.kill_running(*args, **kwargs)

    def close(self) -> None:
        self.remote.close()

    def get_conn(self) -> Any:
        return self.remote

    def add_secret(self, *secrets: str | None) -> None:
        self.remote.add_secret(*secrets)

    def mask(self, text: str) -> str:
        return self.remote.mask(text)

    # ------------------------------------------------------------ reads run, changes are planned

    def run(self, command: str, *, stdin: str | bytes | None = None, log_as: str | None = None,
            **kwargs: Any) -> CommandResult:
        if reads_only(command):
            return self.remote.run(command, stdin=stdin, log_as=log_as, **kwargs)
        shown = self.mask(log_as or command)
        if stdin is not None:
            shown += " (with input on stdin, not shown)"
        self.log.info("[%s] DRY RUN would run: %s", self.host_name, shown)
        self.planned.append(PlannedChange(self.host_name, "run", shown))
        return CommandResult(self.host_name, shown, 0, "", "", 0.0)

    def read_file(self, path: str) -> str | None:
        if path in self._would_be:
            return self._would_be[path]
        return self.remote.read_file(path)

    def put_file(self, path: str, content: str, *, owner: str = "root", group: str | None = None,
                 mode: str = "0644", secret: bool = False) -> FileChange:
        group = group or owner
        current = self.read_file(path)
        attributes = self._attributes(path)
        wanted = f"{owner}:{group}:{int(mode, 8):o}"
        target = f"{path} ({owner}:{group} {mode})"
        if current == content and attributes == wanted:
            self.log.info("[%s] DRY RUN %s: unchanged", self.host_name, path)
            return FileChange(self.host_name, path, False, None, "")
        self.planned.append(PlannedChange(self.host_name, "file", target))
        self._would_be[path] = content
        if current is None:
            summary = f"would create {target}, {len(content.splitlines())} lines"
        elif current == content:
            summary = f"would change {target}: owner or mode only (now {attributes or 'unknown'})"
        else:
            summary = f"would change {target}"
        if secret:
            changed = sum(1 for line in self._diff(path, current, content) if line[:1] in "+-") - 2
            self.log.info("[%s] DRY RUN %s: it holds secrets, its content is not shown (%d lines differ)",
                          self.host_name, summary, max(changed, 0))
        elif current != content:
            self.log.info("[%s] DRY RUN %s:\n%s", self.host_name, summary,
                          self.mask("\n".join(self._diff(path, current, content))))
        else:
            self.log.info("[%s] DRY RUN %s", self.host_name, summary)
        return FileChange(self.host_name, path, True, None, "")

    def _attributes(self, path: str) -> str | None:
        """``owner:group:mode`` of the file at ``path`` now (None when it is not there)."""
        result = self.remote.run(f"stat -c '%U %G %a' {shlex.quote(path)}", check=False, quiet=True)
        return ":".join(result.stdout.split()) if result.ok else None

    @staticmethod
    def _diff(path: str, current: str | None, content: str) -> list[str]:
        return list(difflib.unified_diff((current or "").splitlines(), content.splitlines(),
                                         f"{path} (on the host now)" if current is not None else "/dev/null",
                                         f"{path} (as pgha would write it)", lineterm=""))

    # ------------------------------------------------------------ the plan

    def plan_lines(self) -> list[str]:
        return [f"{'write' if p.kind == 'file' else 'run'}: {p.what}" for p in self.planned]
