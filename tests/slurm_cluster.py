"""A real single-node SLURM cluster for the tests, started from nothing in a temporary directory.

Debian's ``slurm-wlm`` and ``munge`` (and, for accounting, ``mariadb-server`` and ``slurmdbd``):
``munged``, ``slurmctld`` and ``slurmd`` (and ``mariadbd``, ``slurmdbd``) run as root without
systemd on this host. The node declares one GPU it does not have (``gres.conf`` points it at
/dev/null), so GPU jobs really queue for a GPU, and the scheduler's own records say which jobs
asked for one. Every daemon started is stopped by its pid.

Facts this relies on (slurm-wlm 22.05, snakemake-executor-plugin-slurm 2.8):
- the munge socket directory needs mode 711; ``AuthInfo=socket=`` points slurm at the socket;
- the plugin's ``srun`` inside an allocation drops ``SLURM_CONF``, so slurm.conf must be at
  /etc/slurm/slurm.conf (a link to ours, put back as it was on stop);
- commands talking to slurmdbd ignore ``AuthInfo=socket=``: munge's socket must also be at
  /run/munge/munge.socket.2 (a link likewise), and slurmdbd reads only /etc/slurm/slurmdbd.conf;
- ``DefMemPerCPU``, or a job without ``--mem`` takes the whole node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import NO_CONTROLLER

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
PACKAGES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge", "sbatch": "slurm-wlm"}
ACCOUNTING = {"slurmdbd": "slurmdbd", "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server"}


def missing(accounting: bool = False) -> list[str]:
    """Debian packages whose programs are not installed here."""
    needed = {**PACKAGES, **(ACCOUNTING if accounting else {})}
    return sorted({pkg for exe, pkg in needed.items() if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


class Cluster:
    """``with Cluster(root, accounting=True) as c:`` a running cluster with partitions cpu and gpu."""

    def __init__(self, root: Path, *, accounting: bool = True, cpus: int | None = None):
        self.root = Path(root)
        self.accounting = accounting
        self.cpus = cpus or os.cpu_count() or 2
        self.host = socket.gethostname()
        self.pids: list[tuple[str, Path]] = []
        self._links: list[tuple[Path, Path | None]] = []

    # --- files ------------------------------------------------------------------------------

    def _write_configs(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log", "db", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o711)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.ports = {"ctld": _free_port(), "d": _free_port(), "dbd": _free_port(), "db": _free_port()}
        acct = (
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
            f"AccountingStoragePort={self.ports['dbd']}\nJobAcctGatherType=jobacct_gather/linux\n"
            "AccountingStorageTRES=gres/gpu\nAccountingStoreFlags=job_comment\n"
            if self.accounting
            else "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
        )
        (r / "slurm.conf").write_text(f"""ClusterName=tokenshift
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports["ctld"]}
SlurmdPort={self.ports["d"]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
GresTypes=gpu
DefMemPerCPU=1000
JobCompType=jobcomp/none
{acct}NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=16000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n")
        if self.accounting:
            dbd = r / "slurmdbd.conf"
            dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["dbd"]}
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["db"]}
StorageUser=root
StorageLoc=slurm_acct_db
""")
            os.chmod(dbd, 0o600)

    def _link(self, link: Path, target: Path) -> None:
        """Point ``link`` at ``target``, remembering what was there to put it back."""
        link.parent.mkdir(parents=True, exist_ok=True)
        saved = None
        if link.is_symlink() and not link.exists():  # left by a test run that was killed: nothing to keep
            link.unlink()
        if link.exists() or link.is_symlink():
            # one name per cluster: a cluster started while another runs saves that one's link apart
            saved = link.with_name(f"{link.name}.tokenshift-saved-{os.getpid()}-{id(self)}")
            os.replace(link, saved)
        link.symlink_to(target)
        self._links.append((link, saved))

    # --- daemons ----------------------------------------------------------------------------

    def _start(self, name: str, cmd: list[str], pidfile: Path, ready) -> None:
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the daemon forks: its own log takes over
            subprocess.run(cmd, stdout=log, stderr=log, check=True, env=self.env, timeout=60)
        _wait(pidfile.exists, f"{name} (pid file {pidfile})")
        self.pids.append((name, pidfile))
        _wait(ready, name)

    def _run_ok(self, *cmd: str) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=30).returncode == 0

    @property
    def env(self) -> dict[str, str]:
        """The environment of the cluster's clients: its slurm.conf, and the real scontrol (conftest's
        stand-in for an unanswered one off PATH)."""
        path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != NO_CONTROLLER)
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf"), "PATH": path}

    def start(self) -> Cluster:
        r = self.root
        self._write_configs()
        self._link(SLURM_CONF, r / "slurm.conf")
        gres = SLURM_CONF.with_name("gres.conf")
        self._link(gres, r / "gres.conf")
        sock = r / "munge" / "munge.socket"
        self._start(
            "munged",
            [
                "munged",
                f"--socket={sock}",
                f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/run/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/munge.seed",
                "--force",
            ],
            r / "run" / "munged.pid",
            sock.exists,
        )
        self._link(MUNGE_SOCKET, sock)
        if self.accounting:
            self._start_database()
            self._link(SLURM_CONF.with_name("slurmdbd.conf"), r / "slurmdbd.conf")  # it reads no other path
            self._start(
                "slurmdbd", ["slurmdbd"], r / "run" / "slurmdbd.pid", lambda: self._port_open(self.ports["dbd"])
            )
        self._start(
            "slurmctld",
            ["slurmctld", "-f", str(r / "slurm.conf")],
            r / "run" / "slurmctld.pid",
            lambda: self._run_ok("scontrol", "ping"),
        )
        self._start(
            "slurmd",
            ["slurmd", "-f", str(r / "slurm.conf")],
            r / "run" / "slurmd.pid",
            lambda: b"idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True).stdout,
        )
        return self

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _start_database(self) -> None:
        r = self.root
        subprocess.run(
            [
                "mariadb-install-db",
                f"--datadir={r}/db",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        log = open(r / "log" / "mariadbd.out", "ab")  # noqa: SIM115 - held by the server process until stop()
        proc = subprocess.Popen(
            [
                "mariadbd",
                f"--datadir={r}/db",
                "--user=root",
                f"--port={self.ports['db']}",
                "--bind-address=127.0.0.1",
                f"--socket={r}/run/mysqld.sock",
                f"--pid-file={r}/run/mariadbd.pid",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=64M",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self._db = proc
        _wait(lambda: self._port_open(self.ports["db"]), "mariadbd")
        self.pids.append(("mariadbd", r / "run" / "mariadbd.pid"))

    def stop(self) -> None:
        for _, pidfile in reversed(self.pids):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 15
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        if getattr(self, "_db", None) is not None:
            self._db.wait(timeout=15)
        for link, saved in reversed(self._links):  # each put back on its own: one missing stops none of the others
            link.unlink(missing_ok=True)
            if saved is not None and (saved.exists() or saved.is_symlink()):
                os.replace(saved, link)
        self._links.clear()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the scheduler's own records ----------------------------------------------------------

    def jobs(self) -> list[dict[str, str]]:
        """Every job the cluster ran: from sacct where there is accounting, else from scontrol."""
        if self.accounting:
            out = subprocess.run(
                [
                    "sacct",
                    "-X",
                    "-n",
                    "-P",
                    "-a",
                    "-S",
                    "2000-01-01",
                    "-o",
                    "JobID,JobName,Partition,State,AllocTRES,ReqTRES,Comment",
                ],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            keys = ["id", "name", "partition", "state", "alloc_tres", "req_tres", "comment"]
            return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]
        out = subprocess.run(["scontrol", "show", "job", "-o"], env=self.env, capture_output=True, text=True).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            jobs.append(
                {
                    "id": fields.get("JobId", ""),
                    "name": fields.get("JobName", ""),
                    "partition": fields.get("Partition", ""),
                    "state": fields.get("JobState", ""),
                    "alloc_tres": fields.get("TRES", ""),
                    "req_tres": fields.get("TresPerJob", ""),
                    "comment": fields.get("Comment", ""),
                }
            )
        return jobs
