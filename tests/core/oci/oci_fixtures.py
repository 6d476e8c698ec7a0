"""Fixtures (imported by the test modules): a real distribution registry (no auth, and htpasswd basic auth), and a managed model."""

from __future__ import annotations

import pytest

from oci_registries import start_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), auth=True)
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """The registry client's retries without the operator's backoff (fault tests stay fast)."""
    from vmm.core.oci import registry

    monkeypatch.setattr(registry, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(registry, "BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(registry, "RETRY_AFTER_MAX_S", 0.02)
