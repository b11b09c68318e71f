"""The apache-iggy 0.9 SDK suite: run from its own venv, ``.venv-sdk09/bin/python -m pytest
tests/sdk09`` (``make test`` does). The root config in pyproject.toml still applies (rootdir is
the repository; asyncio_mode = "auto", the timeout), and so does tests/conftest.py: its
``server`` fixture is a real ``python -m tidelog serve`` on 127.0.0.1 with a free port, a
per-test data dir and the default root iggy/iggy, stopped after the test; ``server_factory``
starts more (restart tests)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ServerProcess

if TYPE_CHECKING:
    from apache_iggy import IggyClient

# Checked before anything imports apache_iggy, so the wrong venv gets this message rather
# than an ImportError from the 0.8 API.
SDK_VERSION = importlib.metadata.version("apache-iggy")
if SDK_VERSION.split(".")[:2] != ["0", "9"]:
    # Under the main venv's 0.8 SDK every test here would fail on the API, not on the server.
    raise pytest.UsageError(
        f"tests/sdk09 needs apache-iggy 0.9 but this venv has {SDK_VERSION}: "
        "run it with .venv-sdk09/bin/python (make sdk09-venv)"
    )


@pytest.fixture
async def root(server: ServerProcess) -> AsyncIterator[IggyClient]:
    """A 0.9 SDK client logged in as root on the test's server."""
    from tests.sdk09.sdkkit import connect

    client = await connect(server)
    yield client
