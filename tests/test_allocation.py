"""glibc's allocator settings for batch jobs (src/shoprec/allocation.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings exist in glibc only",
)
def test_glibc_accepts_the_settings_once_per_process() -> None:
    # in a fresh interpreter: the setting is process-wide and must not leak into other tests
    code = (
        "from shoprec.allocation import reuse_large_allocations as r\n"
        "import torch\n"
        "a = r(); b = r()\n"
        "x = torch.ones(1024, 43098); y = x + 1.0; del y; y = x + 1.0\n"
        "assert float(y[0, 0]) == 2.0\n"
        "print(a, b)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "True"]
