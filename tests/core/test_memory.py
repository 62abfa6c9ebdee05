"""weakpaste.core.memory: freed memory stays in the process (fewer page faults), on request."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from weakpaste.core import memory

# Allocates, touches and frees a 40 MB array 20 times (above glibc's largest dynamic mmap
# threshold, 32 MB) and prints the minor page faults it took.
_FAULTS = """
import resource, sys
import numpy as np
from weakpaste.core.memory import keep_freed_memory
print(keep_freed_memory())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.empty(40 << 20, np.uint8)
    a[::4096] = 1
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(opt_out: str) -> tuple[str, int]:
    env = {**os.environ, memory.OPT_OUT: opt_out}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept, faults_kept = _faults("0")
    system, faults_system = _faults("1")
    assert (kept, system) == ("True", "False")
    # 40 MB is 10,240 pages: glibc's defaults fault them in anew (measured: 10,620 against
    # 273 when the memory is kept).
    assert faults_system > 10_000
    assert faults_kept * 5 < faults_system


def test_the_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(memory.OPT_OUT, "yes")
    assert memory.keep_freed_memory() is False
