"""The cores a process may use: CPU affinity, a container's CPU quota (cgroup v2 and v1 files), EARSHOT_CORES;
and the server sizing its pools from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from earshot import cores


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cores.quota(tmp_path) == pytest.approx(1.5)
    assert cores.usable(tmp_path) == 1  # a fractional quota rounds down
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cores.quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.quota(tmp_path) == pytest.approx(3.0)
    assert cores.usable(tmp_path) == min(3, len(os.sched_getaffinity(0)))
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cores.quota(tmp_path) is None
    assert cores.usable(tmp_path) == len(os.sched_getaffinity(0))


def test_the_tightest_quota_of_the_cgroup_and_its_parents(tmp_path):
    """A pod's limit sits on a parent of the container's cgroup: the tightest quota on the way up applies."""
    root, own = tmp_path / "fs", tmp_path / "fs" / "kubepods" / "pod1" / "ctr"
    own.mkdir(parents=True)
    (own / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("250000 100000\n")
    (root / "kubepods" / "cpu.max").write_text("800000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    assert cores.quota(root, proc) == pytest.approx(2.5)
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cores.quota(tmp_path / "v1", proc) == pytest.approx(1.5)
    proc.write_text("4:cpu,cpuacct:/docker/other\n")  # another cgroup's limit is not ours
    assert cores.quota(tmp_path / "v1", proc) is None


def test_override(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setenv(cores.CORES_ENV, "3")
    assert cores.usable(tmp_path) == 3
    monkeypatch.setenv(cores.CORES_ENV, "zero")
    assert cores.usable(tmp_path) == 1


def test_pinned_process_sizes_its_pools_to_one_core():
    """A process pinned to one CPU (taskset) uses one core: the server's workers and ONNX Runtime threads, the
    classifier's threads, the command line's default workers."""
    code = (
        "import json, os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from earshot import cores; from earshot.serve.settings import Settings; "
        "from earshot.cli.app import default_workers; s = Settings(); "
        "print(json.dumps([cores.usable(), s.workers, s.ort_threads, default_workers(), os.cpu_count()]))"
    )
    env = {k: v for k, v in os.environ.items() if k != cores.CORES_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    usable, workers, threads, cli, machine = json.loads(out.stdout)
    assert (usable, workers, threads, cli) == (1, 1, 1, 1)
    assert machine == os.cpu_count()  # the machine's count is unchanged: the limit comes from the affinity
