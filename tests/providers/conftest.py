"""Mock LLM servers for the provider tests: one fakellm and one llmock per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.mock_servers import (
    MockServer,
    fakellm_reset,
    llmock_reset,
    start_fakellm,
    start_llmock,
)


@pytest.fixture(scope="session")
def fakellm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    server = start_fakellm(tmp_path_factory.mktemp("fakellm"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llmock_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    # Named apart from llmock's own pytest plugin, which claims `llmock` and `llmock_server`.
    server = start_llmock(tmp_path_factory.mktemp("llmock"))
    yield server
    server.stop()


@pytest.fixture
def fakellm(fakellm_process: MockServer) -> MockServer:
    """The session's fakellm, with no conversation state left from earlier tests."""
    fakellm_reset(fakellm_process)
    return fakellm_process


@pytest.fixture
def chaos(llmock_process: MockServer) -> MockServer:
    """The session's llmock with an empty scenario queue and journal."""
    llmock_reset(llmock_process)
    return llmock_process
