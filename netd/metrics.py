"""
Per-service counters: what each service has seen, for logs, tests and the control API.
"""

from __future__ import annotations

from collections import Counter


class Counters(Counter[str]):
    """
    Named event counts of one service (C{connections_refused}, C{frames_rejected}, ...).

    A plain L{collections.Counter}: absent names read as zero and the hot paths add
    with C{counters[name] += n}, which is as cheap as counting gets in Python.
    """

    def snapshot(self) -> dict[str, int]:
        """
        A sorted copy, safe to serialise while the service keeps counting.
        """
        return dict(sorted(self.items()))
