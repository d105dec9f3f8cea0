"""model.memory: freed large blocks stay in the heap (glibc), checked in fresh processes."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from model.memory import MAX_KEEP_MB, keep_freed_blocks
from model.settings import ModelSettings

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, frees and allocates again a 100 MB tensor; prints the bytes glibc holds in
# mmapped blocks (mallinfo2's hblkhd) while the second one is alive.
PROBE = """
import ctypes, sys
import torch
from model.memory import keep_freed_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_blocks(int(sys.argv[1]))
a = torch.ones(25 << 20)  # 100 MB
del a
b = torch.ones(25 << 20)
print(int(applied), libc.mallinfo2().hblkhd)
"""


def _probe(keep_mb: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(keep_mb)], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_large_tensors_come_from_the_heap_when_kept() -> None:
    applied, mapped = _probe(256)
    assert applied
    assert mapped < 50 << 20  # the 100 MB tensor is not an mmapped block
    applied, mapped = _probe(0)  # glibc's defaults: above its threshold, mmapped
    assert not applied
    assert mapped >= 100 << 20


def test_limits_are_checked() -> None:
    assert keep_freed_blocks(0) is False
    with pytest.raises(ValueError, match="between 0 and"):
        keep_freed_blocks(MAX_KEEP_MB + 1)
    with pytest.raises(ValueError, match="between 0 and"):
        keep_freed_blocks(-1)


def test_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAHMR_MALLOC_KEEP_MB", "64")
    assert ModelSettings().malloc_keep_mb == 64
    monkeypatch.setenv("METAHMR_MALLOC_KEEP_MB", str(MAX_KEEP_MB + 1))
    with pytest.raises(ValueError, match="malloc_keep_mb"):
        ModelSettings()
    monkeypatch.delenv("METAHMR_MALLOC_KEEP_MB")
    assert ModelSettings().malloc_keep_mb == 512
