"""A throwaway PostgreSQL server on loopback, for the accountant's PostgreSQL ledger in tests and
fault runs. The binaries come from Debian's packages (scripts/ensure-postgres.sh installs them);
the server runs from a fresh data folder on a free port and is stopped (and its folder removed)
by `stop()`. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from raymask.cluster.broker import free_port
from raymask.errors import PipelineError

__all__ = ["LocalPostgres", "postgres_bin"]


def postgres_bin() -> str:
    """The folder of the newest installed server's binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise PipelineError("no PostgreSQL server installed; run scripts/ensure-postgres.sh")
    return os.path.dirname(found[-1])


class LocalPostgres:
    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="raymask-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://raymask@127.0.0.1:{self.port}/raymask"

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise PipelineError(f"{os.path.basename(args[0])} failed: {r.stderr.strip()[-300:]}")

    def start(self) -> LocalPostgres:
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            f"{self.bin}/initdb", "-D", self.data, "-U", "raymask", "-A", "trust", "--no-sync"
        )
        self._run(
            f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=on -c synchronous_commit=on",
            "start",
        )  # fmt: skip
        self._run(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "raymask",
                  "raymask")  # fmt: skip
        return self

    def stop(self) -> None:
        try:
            self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except PipelineError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # manual check: start, print the URL, stop on Enter
    pg = LocalPostgres().start()
    print(pg.url)
    try:
        input()
    finally:
        pg.stop()
