"""The documentation's configuration table is generated from the code: it must be complete."""

from __future__ import annotations

from flask import Flask

from flask_ias_pkce.constants import CONFIG_DEFAULTS, CONFIG_DOCS
from flask_ias_pkce.testing import IASEmulator

from helpers import build_app


def test_every_config_key_has_a_description() -> None:
    assert set(CONFIG_DOCS) == set(CONFIG_DEFAULTS)
    assert all(text.strip() for text in CONFIG_DOCS.values())


def test_every_key_the_extension_sets_is_documented(ias_emulator: IASEmulator) -> None:
    # init_app fills in the defaults: any IAS_PKCE_* key it adds must be in the table.
    app: Flask = build_app(ias_emulator)

    ours = {key for key in app.config if key.startswith("IAS_PKCE_")}

    assert ours <= set(CONFIG_DOCS)
