"""Credentials that rotate without a restart: binding files under a real
``SERVICE_BINDING_ROOT`` change (a Kubernetes ``..data`` swap, or files replaced one by
one), the emulator stops accepting the old certificate, and no request fails."""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_ias_pkce import IASPKCE, current_token, signals
from flask_ias_pkce.constants import BINDING_POLL_SECONDS, EXTENSION_NAME
from flask_ias_pkce.credentials import (
    BindingWatcher,
    ClientIdentity,
    parse_expires_at,
    tree_fingerprint,
)
from flask_ias_pkce.testing import IASEmulator
from flask_ias_pkce.testing.gunicorn import GunicornServer, bound_environment

from helpers import bearer

#: How long a change of the files may take to be in use (the issue's promise).
WITHIN_SECONDS = 10.0


def binding_files(ias: IASEmulator, binding: dict[str, Any] | None = None) -> dict[str, str]:
    binding = binding or ias.binding
    files = {
        "type": "identity",
        "clientid": binding["clientid"],
        "url": binding["url"],
        "domains": json.dumps(binding["domains"]),
        "app_tid": binding["app_tid"],
        "credential-type": binding["credential-type"],
        "certificate": binding["certificate"],
        "key": binding["key"],
    }
    return files


class KubernetesSecret:
    """A secret volume as the kubelet writes it: files in a timestamped folder, a
    ``..data`` symlink to it, and one symlink per key through ``..data``; an update makes a
    new folder and swaps ``..data`` atomically."""

    def __init__(self, folder: Path, files: dict[str, str]) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self._generation = 0
        self.write(files)
        for name in files:
            (folder / name).symlink_to(f"..data/{name}")

    def write(self, files: dict[str, str]) -> None:
        self._generation += 1
        data = self.folder / f"..2026_12_01_{self._generation:04d}"
        data.mkdir()
        for name, text in files.items():
            (data / name).write_text(text)
        staging = self.folder / "..data_tmp"
        staging.symlink_to(data.name)
        os.replace(staging, self.folder / "..data")


def write_plain(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def rotation_app(ias: IASEmulator, **config: Any) -> Flask:
    app = Flask("rotating_app")
    app.config.update(
        IAS_PKCE_XSUAA_CLIENT_ID=ias.xsuaa_client_id,
        IAS_PKCE_VERIFY=ias.ca_file,
        IAS_PKCE_TIMEOUT=(2.0, 2.0),
        **config,
    )
    extension = IASPKCE()

    @app.get("/api/me")
    def me() -> str:
        return "ok"

    extension.init_app(app)
    app.extensions["test_extension"] = extension
    return app


def thumbprint_in_use(app: Flask) -> str:
    identity = app.extensions[EXTENSION_NAME].authenticator.exchanger.credentials.identity
    return str(identity.thumbprint)


def wait_for(condition: Any, seconds: float = WITHIN_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bindings"
    folder.mkdir()
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(folder))
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    return folder


@pytest.fixture
def slow_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the re-read on a refusal can pick up the new files.
    monkeypatch.setattr("flask_ias_pkce.extension.BINDING_POLL_SECONDS", 3600.0)


def statuses_under_load(
    app: Flask, ias: IASEmulator, path: str, rotate: Any, in_use: Any
) -> list[int]:
    """The statuses of requests sent one after another, each with a fresh token (so
    that each one calls IAS), while ``rotate()`` swaps the credentials: at least three
    before, then until ``in_use()`` says the new ones are used, then three more."""
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        client = app.test_client()
        while not stop.is_set():
            token = ias.issue_public_token(jti=os.urandom(8).hex())
            statuses.append(client.get(path, headers=bearer(token)).status_code)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        assert wait_for(lambda: len(statuses) >= 3)
        rotate()
        assert wait_for(in_use)
        done = len(statuses)
        assert wait_for(lambda: len(statuses) >= done + 3)
    finally:
        stop.set()
        worker.join(timeout=30)
    return statuses


def test_kubernetes_rotation_with_zero_failed_requests(
    ias_emulator: IASEmulator, root: Path
) -> None:
    ias = ias_emulator
    secret = KubernetesSecret(root / "ias", binding_files(ias))
    app = rotation_app(ias)
    old = ias.client_certificate_thumbprint

    def rotate() -> None:
        new_binding = ias.rotate_client_certificate(refuse_old=False)
        secret.write(binding_files(ias, new_binding))
        # IAS drops the old certificate right after the files changed.
        ias.refuse_client_certificate(old)

    def new_in_use() -> bool:
        return thumbprint_in_use(app) == ias.client_certificate_thumbprint

    statuses = statuses_under_load(app, ias, "/api/me", rotate, new_in_use)

    assert set(statuses) == {200}, statuses
    used = [call.client_thumbprint for call in ias.exchanges if call.status == 200]
    assert used[0] == old
    assert used[-1] == ias.client_certificate_thumbprint


def xsuaa_files(ias: IASEmulator, binding: dict[str, Any] | None = None) -> dict[str, str]:
    """The XSUAA binding as a Kubernetes secret holds it: one file per key."""
    binding = binding or ias.xsuaa_binding
    return {"type": "xsuaa", **{name: str(value) for name, value in binding.items()}}


def xsuaa_rotation_app(ias: IASEmulator) -> Flask:
    """:func:`rotation_app` with ``/api/xsuaa``, whose view obtains the XSUAA token."""
    app = rotation_app(ias)

    def xsuaa() -> str:
        return "ok" if current_token.xsuaa_token() else "none"

    app.add_url_rule("/api/xsuaa", view_func=xsuaa)
    return app


@pytest.fixture
def x509_xsuaa() -> Iterator[IASEmulator]:
    with IASEmulator(xsuaa_credential_type="x509") as emulator:
        yield emulator


def test_the_xsuaa_certificate_rotates_with_zero_failed_requests(
    x509_xsuaa: IASEmulator, root: Path
) -> None:
    ias = x509_xsuaa
    KubernetesSecret(root / "ias", binding_files(ias))
    xsuaa_secret = KubernetesSecret(root / "xsuaa", xsuaa_files(ias))
    app = xsuaa_rotation_app(ias)
    old = ias.xsuaa_client_certificate_thumbprint

    def rotate() -> None:
        xsuaa_secret.write(xsuaa_files(ias, ias.rotate_xsuaa_client_certificate(refuse_old=False)))
        ias.refuse_client_certificate(old)  # XSUAA drops the old one right after

    def new_in_use() -> bool:
        new = ias.xsuaa_client_certificate_thumbprint
        return any(call.client_thumbprint == new for call in ias.xsuaa_exchanges)

    # Every request is an exchange at IAS and at XSUAA.
    statuses = statuses_under_load(app, ias, "/api/xsuaa", rotate, new_in_use)

    assert set(statuses) == {200}, statuses
    used = [call.client_thumbprint for call in ias.xsuaa_exchanges if call.status == 200]
    assert used[0] == old
    assert used[-1] == ias.xsuaa_client_certificate_thumbprint
    # The IAS binding did not change: its certificate stayed the one in use.
    assert {call.client_thumbprint for call in ias.exchanges} == {ias.client_certificate_thumbprint}


def test_xsuaa_refusing_the_old_certificate_reads_the_binding_again(
    x509_xsuaa: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = x509_xsuaa
    write_plain(root / "ias", binding_files(ias))
    write_plain(root / "xsuaa", xsuaa_files(ias))
    client = xsuaa_rotation_app(ias).test_client()
    write_plain(root / "xsuaa", xsuaa_files(ias, ias.rotate_xsuaa_client_certificate()))

    answer = client.get("/api/xsuaa", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 200
    assert [call.status for call in ias.xsuaa_exchanges] == [401, 200]
    assert ias.xsuaa_exchanges[-1].client_thumbprint == ias.xsuaa_client_certificate_thumbprint


def test_files_replaced_one_by_one_keep_the_old_pair_until_both_are_new(
    ias_emulator: IASEmulator, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ias = ias_emulator
    folder = root / "ias"
    write_plain(folder, binding_files(ias))
    app = rotation_app(ias)
    client = app.test_client()
    old = ias.client_certificate_thumbprint
    new_binding = ias.rotate_client_certificate(refuse_old=False)
    caplog.set_level(logging.WARNING, logger="flask_ias_pkce")

    (folder / "certificate").write_text(new_binding["certificate"])  # the key is still old
    assert wait_for(lambda: "cannot be read again" in caplog.text)
    assert thumbprint_in_use(app) == old
    assert client.get("/api/me", headers=bearer(ias.issue_public_token())).status_code == 200

    (folder / "key").write_text(new_binding["key"])
    assert wait_for(lambda: thumbprint_in_use(app) == ias.client_certificate_thumbprint)
    ias.refuse_client_certificate(old)
    assert client.get("/api/me", headers=bearer(ias.issue_public_token())).status_code == 200
    assert ias.exchanges[-1].client_thumbprint == ias.client_certificate_thumbprint


def test_invalid_client_reads_the_binding_again_once(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = ias_emulator
    folder = root / "ias"
    write_plain(folder, binding_files(ias))
    client = rotation_app(ias).test_client()
    write_plain(folder, binding_files(ias, ias.rotate_client_certificate(refuse_old=True)))

    answer = client.get("/api/me", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 200
    assert [call.status for call in ias.exchanges] == [401, 200]
    assert ias.exchanges[-1].client_thumbprint == ias.client_certificate_thumbprint


def test_invalid_client_with_nothing_new_is_a_502_after_one_read(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = ias_emulator
    write_plain(root / "ias", binding_files(ias))
    client = rotation_app(ias).test_client()
    ias.rotate_client_certificate(refuse_old=True)  # the files are not updated

    answer = client.get("/api/me", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 502
    assert [call.status for call in ias.exchanges] == [401]


def test_a_failed_handshake_reads_the_binding_again(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = ias_emulator
    foreign_certificate, foreign_key = ias.make_foreign_client_certificate()
    folder = root / "ias"
    files = binding_files(ias)
    write_plain(folder, {**files, "certificate": foreign_certificate, "key": foreign_key})
    client = rotation_app(ias).test_client()
    write_plain(folder, files)

    answer = client.get("/api/me", headers=bearer(ias.issue_public_token()))

    assert answer.status_code == 200
    assert ias.exchanges[-1].client_thumbprint == ias.client_certificate_thumbprint


def test_reload_credentials_reads_vcap_services_again(
    ias_emulator: IASEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ias = ias_emulator
    monkeypatch.delenv("SERVICE_BINDING_ROOT", raising=False)
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias.vcap_services()))
    app = rotation_app(ias)
    extension: IASPKCE = app.extensions["test_extension"]
    assert extension.reload_credentials(app) is False  # nothing changed

    ias.rotate_client_certificate(refuse_old=True)
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(ias.vcap_services()))
    with app.app_context():
        assert extension.reload_credentials() is True

    assert thumbprint_in_use(app) == ias.client_certificate_thumbprint
    answer = app.test_client().get("/api/me", headers=bearer(ias.issue_public_token()))
    assert answer.status_code == 200
    assert [call.status for call in ias.exchanges] == [200]


def test_reload_keeps_the_pair_when_certificate_and_key_do_not_match(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = ias_emulator
    folder = root / "ias"
    write_plain(folder, binding_files(ias))
    app = rotation_app(ias)
    old = thumbprint_in_use(app)
    foreign_certificate, _ = ias.make_foreign_client_certificate()
    (folder / "certificate").write_text(foreign_certificate)

    assert app.extensions["test_extension"].reload_credentials(app) is False
    assert thumbprint_in_use(app) == old


def test_an_expired_new_certificate_is_not_taken(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    ias = ias_emulator
    folder = root / "ias"
    write_plain(folder, binding_files(ias))
    app = rotation_app(ias)
    old = thumbprint_in_use(app)
    expired = ias.rotate_client_certificate(
        refuse_old=False, valid_for=datetime.timedelta(minutes=-1)
    )
    write_plain(folder, binding_files(ias, expired))

    assert app.extensions["test_extension"].reload_credentials(app) is False
    assert thumbprint_in_use(app) == old


@pytest.fixture
def expiring() -> Iterator[list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    def receive(sender: Flask, **extra: Any) -> None:
        received.append({"sender": sender.name, **extra})

    signals.credentials_expiring.connect(receive)
    yield received
    signals.credentials_expiring.disconnect(receive)


def test_expiry_from_the_binding_is_warned_of_at_start_up(
    ias_emulator: IASEmulator,
    root: Path,
    caplog: pytest.LogCaptureFixture,
    expiring: list[dict[str, Any]],
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    files = {**binding_files(ias_emulator), "certificate_expires_at": soon.isoformat()}
    write_plain(root / "ias", files)
    caplog.set_level(logging.WARNING, logger="flask_ias_pkce")

    rotation_app(ias_emulator)

    date = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"expires on {date}" in caplog.text
    [signal] = expiring
    assert signal["binding"] == "SERVICE_BINDING_ROOT/ias"
    assert signal["expires_at"] == pytest.approx(soon.timestamp(), abs=1)
    assert 0 < signal["remaining"] <= 24 * 3600


def test_expiry_of_a_loaded_certificate_is_warned_of(
    ias_emulator: IASEmulator,
    root: Path,
    caplog: pytest.LogCaptureFixture,
    expiring: list[dict[str, Any]],
    slow_watcher: None,
) -> None:
    folder = root / "ias"
    write_plain(folder, binding_files(ias_emulator))
    caplog.set_level(logging.WARNING, logger="flask_ias_pkce")
    app = rotation_app(ias_emulator)
    assert expiring == []  # the first certificate lives 7 days
    assert "expires on" not in caplog.text

    short = ias_emulator.rotate_client_certificate(valid_for=datetime.timedelta(hours=30))
    write_plain(folder, binding_files(ias_emulator, short))
    assert app.extensions["test_extension"].reload_credentials(app) is True

    assert "expires on" in caplog.text
    [signal] = expiring
    assert signal["sender"] == app.name
    assert 29 * 3600 < signal["remaining"] <= 30 * 3600


def test_the_key_never_stays_on_disk(
    ias_emulator: IASEmulator,
    root: Path,
    slow_watcher: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A temporary folder of this test's own: other processes on the machine use /tmp too.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    folder = root / "ias"
    write_plain(folder, binding_files(ias_emulator))
    app = rotation_app(ias_emulator)
    client = app.test_client()
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )
    write_plain(folder, binding_files(ias_emulator, ias_emulator.rotate_client_certificate()))
    assert (
        client.get("/api/me", headers=bearer(ias_emulator.issue_public_token())).status_code == 200
    )

    assert [call.status for call in ias_emulator.exchanges] == [200, 401, 200]
    assert os.listdir(private) == []


def test_workers_forked_from_a_preloaded_app_watch_the_files(
    ias_emulator: IASEmulator, root: Path
) -> None:
    # gunicorn --preload builds the app (and its watcher thread) before it forks: each
    # worker must watch the files itself, or it would only learn of a rotation by a refusal.
    ias = ias_emulator
    secret = KubernetesSecret(root / "ias", binding_files(ias))
    environment = bound_environment(
        ias, prefix="TESTAPP", IAS_PKCE_XSUAA_CLIENT_ID=ias.xsuaa_client_id
    )
    del environment["VCAP_SERVICES"]
    with GunicornServer(
        "wsgi_app:create_app()",
        environment=environment,
        chdir=Path(__file__).parent,
        workers=2,
        extra_arguments=["--preload"],
    ) as server:

        def me() -> int:
            token = ias.issue_public_token(jti=os.urandom(8).hex())
            return requests.get(
                server.url + "/api/me", headers=bearer(token), timeout=10
            ).status_code

        assert me() == 200
        secret.write(binding_files(ias, ias.rotate_client_certificate(refuse_old=False)))
        new = ias.client_certificate_thumbprint
        # Both workers see the new files; no refusal is needed to find them.
        time.sleep(BINDING_POLL_SECONDS * 2.5)
        assert [me() for _ in range(6)] == [200] * 6

    assert [call.status for call in ias.exchanges] == [200] * 7
    assert {call.client_thumbprint for call in ias.exchanges[1:]} == {new}


def test_reload_credentials_of_a_disabled_extension_does_nothing() -> None:
    app = Flask("disabled")
    app.config["IAS_PKCE_ENABLED"] = False
    extension = IASPKCE(app)

    assert extension.reload_credentials(app) is False


# -- the parts on their own ------------------------------------------------------------


def test_a_pair_that_does_not_read_is_refused(ias_emulator: IASEmulator) -> None:
    binding = ias_emulator.binding
    with pytest.raises(ValueError, match="not PEM"):
        ClientIdentity("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x")
    identity = ClientIdentity(binding["certificate"], binding["key"])
    # Its repr names the certificate, never the key.
    assert identity.thumbprint in repr(identity)
    assert "PRIVATE" not in repr(identity)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-24T10:00:00Z", datetime.datetime(2026, 12, 24, 10, tzinfo=datetime.UTC)),
        ("2026-12-24T10:00:00", datetime.datetime(2026, 12, 24, 10, tzinfo=datetime.UTC)),
        ("2026-12-24T11:00:00+01:00", datetime.datetime(2026, 12, 24, 10, tzinfo=datetime.UTC)),
        ("next tuesday", None),
        ("", None),
        (None, None),
    ],
)
def test_certificate_expires_at_is_read(
    value: str | None, expected: datetime.datetime | None
) -> None:
    parsed = parse_expires_at(value)
    assert parsed == (expected.timestamp() if expected is not None else None)


def test_refusals_in_a_burst_read_the_files_once(
    ias_emulator: IASEmulator, root: Path, slow_watcher: None
) -> None:
    write_plain(root / "ias", binding_files(ias_emulator))
    app = rotation_app(ias_emulator)
    reloader = app.extensions[EXTENSION_NAME].reloader
    reads: list[int] = []
    original = reloader.reload

    def counted() -> bool:
        reads.append(1)
        return bool(original())

    reloader.reload = counted
    assert reloader.reread() is False  # nothing new: read, no change
    assert reloader.reread() is False  # a moment later: not read again
    assert reads == [1]


def test_a_watcher_survives_a_failing_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("one")
    failures: list[int] = []

    def reload() -> None:
        failures.append(1)
        raise RuntimeError("boom")

    watcher = BindingWatcher(str(tmp_path), reload, alive=lambda: True, interval=0.01).start()
    try:
        (tmp_path / "file").write_text("two")
        assert wait_for(lambda: failures)
        (tmp_path / "file").write_text("three")
        assert wait_for(lambda: len(failures) >= 2)
    finally:
        watcher.stop()
        watcher.thread.join(timeout=5)
    assert not watcher.thread.is_alive()
    assert "Watching the binding files" in caplog.text


def test_an_unreadable_file_counts_as_a_change(tmp_path: Path) -> None:
    target = tmp_path / "certificate"
    target.write_text("pem")
    before = tree_fingerprint(str(tmp_path))
    target.chmod(0)
    try:
        readable = os.access(target, os.R_OK)  # root reads anything
        after = tree_fingerprint(str(tmp_path))
    finally:
        target.chmod(0o600)
    assert (after == before) is readable
