"""A real multi-node Ray cluster on this machine for tests: `ray start --head` and `ray start --address` nodes,
each a `--block` process of its own with its own free ports, a private temp dir and token authentication.

Stopping signals the `ray start` processes this helper started and every process below them (SIGTERM, then
SIGKILL for what is left); nothing else on the machine is touched (no `ray stop`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import free_port

RAY = str(Path(sys.executable).with_name("ray"))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pids: list[int]) -> list[int]:
    """Every process below `pids` (not the pids themselves)."""
    tree, out, todo = _children(), [], list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class RayCluster:
    """Nodes of one Ray cluster on 127.0.0.1 (Ray names the host by its address), started and stopped by us."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        # Unix socket paths must stay under ~107 bytes: the session folder goes in a short private temp dir.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.log_dir = log_dir
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.nodes: list[subprocess.Popen] = []
        self.address: str | None = None

    def _start(self, args: list[str], name: str) -> None:
        ports = [free_port() for _ in range(22)]
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
               "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
               "--node-manager-port", str(ports[4]), "--object-manager-port", str(ports[5]),
               "--worker-port-list", ",".join(map(str, ports[6:])), "--object-store-memory", str(200 << 20),
               *args]
        out = (self.log_dir / f"{name}.log").open("ab")
        self.nodes.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        out.close()

    def start_head(self, num_cpus: int = 1) -> str:
        port = free_port()
        self._start(["--head", "--port", str(port), "--num-cpus", str(num_cpus), "--temp-dir", str(self.temp_dir),
                     "--include-dashboard", "false", "--dashboard-port", str(free_port())], "head")
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, num_cpus: int = 1) -> None:
        assert self.address, "start the head first"
        self._start(["--address", self.address, "--num-cpus", str(num_cpus)], f"node{len(self.nodes)}")

    def start(self, cpus: list[int], tries: int = 3) -> str:
        """A head with `cpus[0]` CPUs and a node for each further entry, up and joined; a node that fails to start
        (a port taken between choosing it and binding it) brings the whole cluster down and up again on new ports.
        Returns the head's address."""
        for attempt in range(tries):
            try:
                self.start_head(cpus[0])
                for n in cpus[1:]:
                    self.add_node(n)
                self.wait_for(len(cpus))
                return self.address or ""
            except RuntimeError:
                self.stop()
                self.nodes = []
                self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def wait_for(self, n_nodes: int, timeout: float = 90.0) -> None:
        """Until `n_nodes` nodes are alive in the cluster (asked through `ray status` with our token)."""
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            for p in self.nodes:
                if p.poll() is not None:
                    logs = "".join(f.read_text(errors="replace")[-1500:] for f in sorted(self.log_dir.glob("*.log")))
                    raise RuntimeError(f"a ray node exited with {p.returncode}:\n{logs}")
            r = subprocess.run([RAY, "status", "--address", self.address], capture_output=True, text=True,
                               env=self.env, timeout=60)
            last = r.stdout + r.stderr
            active = last.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if r.returncode == 0 and active.count("node_") >= n_nodes:
                return
            time.sleep(1.0)
        raise RuntimeError(f"cluster did not reach {n_nodes} nodes:\n{last[-2000:]}")

    def node_pids(self, index: int) -> list[int]:
        """Processes of node `index` (its `ray start` process and everything below it)."""
        p = self.nodes[index]
        return [p.pid, *descendants([p.pid])]

    def actor_pids(self, index: int, name: str = "MapWorker") -> list[int]:
        """Processes of node `index` running an actor whose process title names `name`."""
        return [pid for pid in descendants([self.nodes[index].pid]) if cmdline(pid).startswith("ray::")
                and name in cmdline(pid)]

    def stop(self, grace: float = 3.0) -> None:
        """Stop every process of the nodes we started: SIGTERM to each at once (a `ray start --block` alone takes
        20 s or more to wind its node down), then SIGKILL to what is left after `grace` seconds."""
        procs = [(p.pid, cmdline(p.pid)) for p in self.nodes if p.poll() is None]
        procs += [(pid, cmdline(pid)) for pid in descendants([p.pid for p in self.nodes])]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for pid, cmd in procs:  # the same command line: not a reused pid
                if running(pid) and cmdline(pid) == cmd:
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.time() + wait
            while time.time() < deadline:
                for p in self.nodes:
                    p.poll()  # reap our own children
                if not any(running(pid) and cmdline(pid) == cmd for pid, cmd in procs):
                    break
                time.sleep(0.1)
        for p in self.nodes:
            p.wait(5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
