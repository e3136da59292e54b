"""pgha lab: the SMTP sink on vm1 that pgha's alerts are sent to (connection smtp_default).

Accepts every message (no relay, no auth) on ADDRESS:PORT and keeps it as one file,
<UTC time>-<n>.eml in the directory given, written whole before it appears under that
name. Runs as the unit pgha-mail-sink with the Airflow virtualenv's python (aiosmtpd).

    python mail_sink.py ADDRESS PORT DIRECTORY
"""

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP


class Keep:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{next(self.counter):06d}.eml"
        partial = self.directory / f".{name}.part"
        partial.write_bytes(envelope.original_content or envelope.content)
        partial.chmod(0o644)
        partial.rename(self.directory / name)
        print(f"kept {name}: from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}", flush=True)
        return "250 Message accepted for delivery"


def main(address: str, port: str, directory: str) -> None:
    handler = Keep(Path(directory))
    loop = asyncio.new_event_loop()
    serve = loop.create_server(lambda: SMTP(handler, hostname="pgha-lab-mail-sink"), address, int(port))
    loop.run_until_complete(serve)
    print(f"SMTP sink on {address}:{port}, messages in {directory}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
