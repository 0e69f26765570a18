"""The integration tier: every test here uses the real embedded SmolLM2 (``load_model()``, the
``embedded`` and ``make_app`` fixtures, or a ``lenstui`` process on it), and is marked
``integration`` by this folder, so ``-m "not integration"`` leaves them all out."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    for item in items:  # every collected item comes here, not only this folder's
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
