"""pytest fixtures for testing apps that use flask-ias-pkce.

Installed as the ``ias_pkce`` plugin: every project that has flask-ias-pkce installed gets
these fixtures without importing anything. The emulator is imported inside the fixtures so
that merely loading the plugin costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flask_ias_pkce.testing.emulator import IASEmulator


@pytest.fixture
def ias_emulator() -> Iterator[IASEmulator]:
    """A running :class:`~flask_ias_pkce.testing.IASEmulator` with default settings,
    stopped after the test. Trust ``ias_emulator.ca_file`` when calling it."""
    from flask_ias_pkce.testing.emulator import IASEmulator

    with IASEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def _ias_emulator_of_the_session() -> Iterator[IASEmulator]:
    from flask_ias_pkce.testing.emulator import IASEmulator

    with IASEmulator() as emulator:
        yield emulator


@pytest.fixture
def shared_ias_emulator(
    _ias_emulator_of_the_session: IASEmulator,
) -> Iterator[IASEmulator]:
    """One running :class:`~flask_ias_pkce.testing.IASEmulator` with default settings for
    every test of the session that asks for it: no new server, CA and keys per test.

    Each test starts with no recorded calls and no injected faults (and its own faults are
    removed after it). Rotated signing keys stay rotated: tokens issued afterwards are
    signed with the current key, so later tests do not notice. A test that changes the
    client certificate (``rotate_client_certificate``, ``refuse_client_certificate``),
    needs the first keys, or counts connections takes :func:`ias_emulator`.
    """
    emulator = _ias_emulator_of_the_session
    emulator.reset_calls()
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
def public_token(ias_emulator: IASEmulator) -> str:
    """A valid public-client token of ``ias_emulator``, as the PKCE flow would give it."""
    return ias_emulator.issue_public_token()


@pytest.fixture
def ias_tenant_hosts() -> Iterator[None]:
    """Resolve ``*.localhost`` (the emulator's subscriber tenants) to 127.0.0.1 in this
    process for the test; see :func:`~flask_ias_pkce.testing.resolve_tenant_hosts`."""
    from flask_ias_pkce.testing.hosts import resolve_tenant_hosts

    with resolve_tenant_hosts():
        yield
