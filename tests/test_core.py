"""The protocol core without Flask: built by build_core from settings, a Flask-Caching
backend and a clock, as init_app builds it, and used here with no app at all."""

from __future__ import annotations

import time

import pytest
from flask_caching.backends.simplecache import SimpleCache

from flask_ias_pkce import InvalidToken
from flask_ias_pkce.bindings import load_bindings
from flask_ias_pkce.config import load_settings
from flask_ias_pkce.core import Core, build_core
from flask_ias_pkce.testing import IASEmulator

from helpers import FakeClock


@pytest.fixture
def ias_emulator(shared_ias_emulator: IASEmulator) -> IASEmulator:
    """These tests leave the emulator as it was: one emulator serves the whole session."""
    return shared_ias_emulator


def core_for(ias: IASEmulator, clock: FakeClock, **config: object) -> Core:
    app_config = ias.app_config(IAS_PKCE_RETRIES=0, **config)
    settings = load_settings(app_config, load_bindings(app_config, {}))
    return build_core(settings, SimpleCache(), clock=clock)


def test_the_core_exchanges_once_and_serves_from_its_cache_without_flask(
    ias_emulator: IASEmulator,
) -> None:
    clock = FakeClock(time.time())
    core = core_for(ias_emulator, clock)
    token = ias_emulator.issue_public_token()

    first = core.authenticator.authenticate(token)
    again = core.authenticator.authenticate(token)

    assert ias_emulator.xsuaa_client_id in first.claims["aud"]
    assert (first.from_cache, again.from_cache) == (False, True)
    assert again.token == first.token
    assert len(ias_emulator.exchanges) == 1


def test_the_core_takes_its_time_from_the_clock_it_is_given(ias_emulator: IASEmulator) -> None:
    clock = FakeClock(time.time())
    core = core_for(ias_emulator, clock)
    token = ias_emulator.issue_public_token(exp=int(clock.now) + 600)
    core.authenticator.authenticate(token)

    clock.advance(3600)

    with pytest.raises(InvalidToken) as refused:
        core.authenticator.authenticate(token)
    assert refused.value.reason == "expired"
    assert len(ias_emulator.exchanges) == 1
