"""A throw-away PostgreSQL server for the tests: own data folder, free loopback port, trust auth.

    with PostgresServer.start() as server:      # initdb + pg_ctl start + createdb
        url = server.url                        # postgresql+psycopg://optuna@127.0.0.1:PORT/optuna
    # stopped (immediate shutdown) and its folder removed

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/N/bin``;
``.ci/run`` installs it on a CI machine that lacks it) or from ``PATH``. PostgreSQL refuses to run
as root, so as root ``initdb`` and ``pg_ctl`` run as the ``postgres`` user (``runuser``) on a
folder that user owns. Durability is switched off (``fsync``, ``synchronous_commit``): the
server lives for one test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "optuna"
DATABASE = "optuna"
SERVER_USER = "postgres"  # the account that runs the server when the tests run as root
TOOLS = ("initdb", "pg_ctl", "createdb")


def find_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``createdb`` (newest version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for d in reversed(candidates):
        if all(os.access(Path(d, t), os.X_OK) for t in TOOLS):
            return Path(d)
    found = [shutil.which(t) for t in TOOLS]
    if all(found):
        return Path(found[0]).parent  # type: ignore[arg-type]
    return None


def missing_reason() -> str | None:
    """Why a server cannot be started here (one line), or None if it can."""
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root, but there is no {SERVER_USER!r} user to run PostgreSQL"
        if shutil.which("runuser") is None:
            return "running as root, but runuser is missing (needed to start PostgreSQL)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'psycopg[binary]'"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throw-away server; `stop` ends it and removes its folder."""

    bindir: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @staticmethod
    def _as_server_user(cmd: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd

    def _run(self, cmd: list[str], *, as_server: bool = True) -> None:
        full = self._as_server_user(cmd) if as_server else cmd
        done = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )

    @classmethod
    def start(cls, attempts: int = 3) -> PostgresServer:
        """initdb, start on a free port (retried if the port was taken meanwhile), createdb."""
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(missing_reason())
        root = Path(tempfile.mkdtemp(prefix="unet-compress-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, SERVER_USER)
        server = cls(bindir, root, 0)
        try:
            server._run(
                [str(bindir / "initdb"), "-D", str(server.data_dir), "-A", "trust", "-U", USER,
                 "--no-sync", "-E", "UTF8"]
            )  # fmt: skip
            for attempt in range(attempts):
                server.port = free_port()
                options = (
                    f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                )
                try:
                    server._run(
                        [str(bindir / "pg_ctl"), "-D", str(server.data_dir), "-o", options,
                         "-l", str(root / "server.log"), "-w", "-t", "60", "start"]
                    )  # fmt: skip
                    break
                except RuntimeError:
                    if attempt == attempts - 1:
                        raise
            server._run(
                [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port),
                 "-U", USER, DATABASE],
                as_server=False,
            )  # fmt: skip
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        """Immediate shutdown (the data is thrown away anyway); remove the folder."""
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_server_user(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                     "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
