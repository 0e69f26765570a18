"""The unit tier: core, store and engine on tiny models built from configs (tests/conftest.py
has the shared fixtures)."""

import pytest


@pytest.fixture(scope="session")
def embedded():
    """Refused here: a test on the embedded model belongs in tests/integration."""
    pytest.fail("the embedded model is not for this tier: move the test to tests/integration")
