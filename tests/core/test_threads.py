"""core.threads: a library's thread count inside a block, restored after."""

from __future__ import annotations

import pytest

from weakpaste.core.threads import thread_count


class _Library:
    def __init__(self, threads: int) -> None:
        self.threads, self.calls = threads, []

    def get(self) -> int:
        return self.threads

    def set(self, n: int) -> None:
        self.calls.append(n)
        self.threads = n


def test_the_count_holds_inside_and_is_restored_after():
    lib = _Library(8)
    with thread_count(lib.get, lib.set, 1):
        assert lib.threads == 1
    assert lib.threads == 8 and lib.calls == [1, 8]


def test_the_count_is_restored_when_the_block_raises():
    lib = _Library(4)
    with pytest.raises(ValueError, match="inside"), thread_count(lib.get, lib.set, 2):
        raise ValueError("inside")
    assert lib.threads == 4


def test_torch_and_opencv_counts_come_back():
    cv2 = pytest.importorskip("cv2")
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    with thread_count(torch.get_num_threads, torch.set_num_threads, 1), \
            thread_count(cv2.getNumThreads, cv2.setNumThreads, 1):
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before
