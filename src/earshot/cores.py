"""How many cores this process may use: the one count every pool and thread setting in earshot starts from.

`os.cpu_count()` is the machine's count. In a container with a CPU limit (Kubernetes `limits.cpu`, `docker run
--cpus`) or a process pinned with `taskset`, it is too many: a 2-CPU pod on a 64-core node would start 64
inference threads and be throttled by the kernel most of each period. `usable()` is the smaller of

- the CPUs the process may run on (its affinity mask),
- the tightest CPU quota of the process's cgroup and its parents (cgroup v2 `cpu.max`, or v1
  `cpu.cfs_quota_us / cpu.cfs_period_us`), rounded down (at least 1), as a fractional quota's last part would
  be throttled;

`EARSHOT_CORES`, when set to a positive integer, replaces both (an explicit override).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

CORES_ENV = "EARSHOT_CORES"


def quota(root: Path = Path("/sys/fs/cgroup"), cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quotas of this process (cgroup v2 or v1 under `root`; the tightest of its own
    cgroup and every parent), or None when unlimited or unknown."""
    found = [q for part in _cgroup_dirs(root, cgroup) if (q := _limit(part)) is not None]
    return min(found, default=None)


def _limit(folder: Path) -> float | None:
    """The CPU quota one cgroup folder sets (v2 `cpu.max`, else v1 CFS files), in CPUs; None for none."""
    try:
        text = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        text = []
    if len(text) == 2 and text[0] != "max":
        with contextlib.suppress(ValueError, ZeroDivisionError):
            return int(text[0]) / int(text[1]) or None
    try:
        q = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return q / period if q > 0 and period > 0 else None


def usable(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use (see the module's docstring); at least 1."""
    given = os.environ.get(CORES_ENV, "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    q = quota(root)
    if q is not None:
        n = min(n, max(1, math.floor(q)))
    return max(1, n)


def _cgroup_dirs(root: Path, cgroup: Path) -> list[Path]:
    """The cgroup folders whose limits apply to this process: its own cgroup (from `cgroup`, v2 and v1's cpu
    controller) and each parent up to the mount's root, where a container sees its own cgroup."""
    dirs: list[Path] = []
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = Path(path.lstrip("/"))
        if controllers == "":
            bases = [root]
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
        else:
            continue
        for base in bases:
            dirs += [base / p for p in (rel, *rel.parents)]
    dirs += [root, root / "cpu", root / "cpu,cpuacct"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]
