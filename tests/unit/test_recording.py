"""The simulator's recordings stay bounded however long the demo or a benchmark runs."""

from __future__ import annotations

import pytest

from kpc_trio.simulator.recording import Recording, WaitTimeoutError


def test_a_recording_keeps_the_newest_items_and_counts_them_all() -> None:
    recording: Recording[int] = Recording("numbers", limit=3)
    for n in range(10):
        recording.append(n)
    assert recording.snapshot() == [7, 8, 9]
    assert recording.wait_for(10, timeout=0.01) == [7, 8, 9]  # all ten were recorded
    with pytest.raises(WaitTimeoutError, match="expected 11 numbers within 0.01s, got 10"):
        recording.wait_for(11, timeout=0.01)
