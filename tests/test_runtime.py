"""``coda.runtime.keep_freed_memory``: it changes the whole process, so it runs in a child."""

import subprocess
import sys

import pytest

from coda import runtime

# In a child process: RSS (MB) after allocating and freeing 256 MB, with or without the call.
CHILD = """
import sys
from pathlib import Path
import torch
from coda.runtime import keep_freed_memory

def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mb()
block = torch.ones(64 * 2**20)  # 256 MB, above glibc's largest mmap threshold (32 MB)
del block
print(applied, rss_mb() - before)
"""


def freed_block_still_resident_mb(mode: str) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    applied, mb = done.stdout.split()
    return applied, float(mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_stays_mapped_only_after_the_call():
    applied, kept = freed_block_still_resident_mb("keep")
    _, default = freed_block_still_resident_mb("default")
    assert applied == "True"
    assert kept > 200  # the freed 256 MB are still in the process, ready for reuse
    assert default < 50  # glibc's default returned them to the kernel


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False
