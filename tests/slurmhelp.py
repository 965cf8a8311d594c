"""A real one-node Slurm for tests: installed with apt-get when missing, daemons in a temp folder.

munged, slurmctld and slurmd daemonize; their PIDs come from their pid files and exactly those are
stopped at the end (a munged that was already running is used and left alone).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

MUNGE_PID = Path("/run/munge/munged.pid")


@dataclass(frozen=True)
class Slurm:
    conf: Path
    env: dict[str, str]  # SLURM_CONF set: for sbatch, squeue, scontrol

    def run(self, *args: str) -> str:
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    def wait_done(self, job_id: str, timeout: float) -> None:
        """Until squeue no longer lists the job (an array: all its tasks)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-j", job_id).strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm job {job_id} still queued: {self.show(job_id)}")
            time.sleep(0.5)

    def show(self, job_id: str) -> str:
        return self.run("scontrol", "show", "job", job_id)


def install_slurm() -> None:
    if all(shutil.which(name) for name in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "slurm-wlm"], env=env, check=True, timeout=900
    )


@contextmanager
def one_node_slurm(folder: Path) -> Iterator[Slurm]:
    install_slurm()
    started: list[int] = []
    try:
        if not _munge_answers():
            started.append(_start_munged())
        conf = _write_conf(folder)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True, timeout=60)
            started.append(_read_pid(folder / pid_file))
        slurm = Slurm(conf, env)
        _wait_idle(slurm, folder)
        yield slurm
    finally:
        for pid in reversed(started):
            _stop(pid)


def _munge_answers() -> bool:
    if not shutil.which("munge"):
        return False
    with suppress(subprocess.SubprocessError, OSError):
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True)
        subprocess.run(["unmunge"], input=token.stdout, capture_output=True, timeout=10, check=True)
        return True
    return False


def _start_munged() -> int:
    run_dir = MUNGE_PID.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    run_dir.chmod(0o755)
    MUNGE_PID.unlink(missing_ok=True)
    subprocess.run(
        ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged"],
        check=True,
        timeout=30,
    )
    return _read_pid(MUNGE_PID)


def _write_conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for name in ("state", "spool"):
        (folder / name).mkdir(exist_ok=True)
    memory = _available_mb() * 8 // 10
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=batchgentest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=batch_sched_delay=0
MinJobAge=300
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""",
        encoding="utf-8",
    )
    return conf


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 1024


def _read_pid(path: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            words = path.read_text().split()  # empty while the daemon has not yet written it
            if words:
                return int(words[0])
        time.sleep(0.1)
    raise AssertionError(f"no pid file {path}")


def _wait_idle(slurm: Slurm, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(subprocess.SubprocessError):
            if "idle" in slurm.run("sinfo", "-h", "-o", "%t"):
                return
        time.sleep(0.5)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in folder.glob("*.log"))
    raise AssertionError(f"the Slurm node never became idle:\n{logs}")


def _stop(pid: int, timeout: float = 20) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie: PID 1 here may not reap the daemons' orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
