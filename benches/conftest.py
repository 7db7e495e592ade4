"""Shared fixtures of the benchmarks: the machine description stored with every result."""

import os
import platform
import subprocess

import pytest

SHARED = os.environ.get("SSM_OFFSET_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def machine() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    model = next((l.split(":", 1)[1].strip() for l in run("lscpu").splitlines() if l.startswith("Model name")), "")
    return {
        "cpu": model,
        # The CPUs this process may run on (`nproc` would report OMP_NUM_THREADS instead, which the
        # benchmark commands set to 1 to keep torch on one thread).
        "nproc": str(len(os.sched_getaffinity(0))),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # The machine is shared: other processes compete for its 2 cores while benchmarks run.
        "loadavg_1_5_15_at_end": os.getloadavg(),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["ssm_offset_machine"] = machine()


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(SHARED):
        pytest.skip(f"shared data absent ({SHARED})")
    return SHARED
