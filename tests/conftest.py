"""
Suite-wide settings.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Refuse to report success when nothing was collected: a run that selects no
    test is a broken command line or a broken suite, never a pass.
    """
    if not items:
        raise pytest.UsageError("no tests were collected; check the paths and -k/-m expressions")
