"""Finding the IAS, XSUAA and Redis bindings: every source, the choices, every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flask_ias_pkce.bindings import (
    BindingError,
    Bindings,
    IdentityBinding,
    load_bindings,
    read_pem,
)

SECRET = "s3cr3t-value-never-shown"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIBkeybody\n-----END PRIVATE KEY-----\n"
URL = "https://tenant.accounts.ondemand.com"


def ias_credentials(**changes: Any) -> dict[str, Any]:
    credentials: dict[str, Any] = {
        "clientid": "ias-client",
        "clientsecret": SECRET,
        "credential-type": "SECRET",
        "url": URL + "/",
        "domains": ["accounts.ondemand.com", "accounts.cloud.sap"],
        "app_tid": "tid-1",
    }
    credentials.update(changes)
    return {key: value for key, value in credentials.items() if value is not None}


def service(label: str, name: str, credentials: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "name": name, "instance_name": name, "credentials": credentials}


def vcap(*services: dict[str, Any]) -> dict[str, str]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for entry in services:
        grouped.setdefault(entry["label"], []).append(entry)
    return {"VCAP_SERVICES": json.dumps(grouped)}


XSUAA = service("xsuaa", "my-xsuaa", {"clientid": "sb-app!t1", "clientsecret": SECRET})


def write_folder(root: Path, name: str, values: dict[str, str], metadata: Any = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for key, value in values.items():
        (folder / key).write_text(value)
    if metadata is not None:
        (folder / ".metadata").write_text(json.dumps(metadata))
    return folder


def binding_error(config: dict[str, Any], environ: dict[str, str]) -> str:
    with pytest.raises(BindingError) as caught:
        load_bindings(config, environ)
    message = str(caught.value)
    for secret in (SECRET, "MIIBkeybody", "MIIBcert"):
        assert secret not in message
    return message


# --- sources --------------------------------------------------------------------------


def test_explicit_config_is_the_source() -> None:
    config = {
        "IAS_PKCE_IAS_URL": URL + "/",
        "IAS_PKCE_CLIENT_ID": "cfg-client",
        "IAS_PKCE_CLIENT_SECRET": SECRET,
        "IAS_PKCE_DOMAINS": "accounts.ondemand.com, Accounts.Cloud.SAP",
        "IAS_PKCE_XSUAA_CLIENT_ID": "sb-cfg!t1",
    }
    bindings = load_bindings(config, vcap(service("identity", "ignored", ias_credentials())))
    identity = bindings.identity
    assert identity.source == "app.config"
    assert identity.url == URL
    assert identity.client_id == "cfg-client"
    assert identity.domains == ("accounts.ondemand.com", "accounts.cloud.sap")
    assert identity.client_secret == SECRET
    assert not identity.uses_certificate
    assert bindings.xsuaa_client_id == "sb-cfg!t1"
    assert bindings.xsuaa is None
    assert bindings.redis_url is None


def test_explicit_config_with_certificate_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "key.pem").write_text(KEY)
    config = {
        "IAS_PKCE_IAS_URL": URL,
        "IAS_PKCE_CLIENT_ID": "cfg-client",
        "IAS_PKCE_CERTIFICATE": str(tmp_path / "cert.pem"),
        "IAS_PKCE_KEY": str(tmp_path / "key.pem"),
        "IAS_PKCE_XSUAA_CLIENT_ID": "sb-cfg!t1",
    }
    identity = load_bindings(config, {}).identity
    assert identity.certificate == CERT
    assert identity.key == KEY
    assert identity.uses_certificate
    assert identity.domains == ("tenant.accounts.ondemand.com",)


def test_vcap_services_identity_and_xsuaa() -> None:
    environ = vcap(service("identity", "my-ias", ias_credentials()), XSUAA)
    bindings = load_bindings({}, environ)
    identity = bindings.identity
    assert identity.source == "VCAP_SERVICES identity 'my-ias'"
    assert identity.url == URL
    assert identity.client_id == "ias-client"
    assert identity.domains == ("accounts.ondemand.com", "accounts.cloud.sap")
    assert identity.app_tid == "tid-1"
    assert identity.credential_type == "SECRET"
    assert bindings.xsuaa is not None
    assert bindings.xsuaa.source == "VCAP_SERVICES xsuaa 'my-xsuaa'"
    assert bindings.xsuaa_client_id == "sb-app!t1"


def test_vcap_x509_binding_and_older_zone_uuid() -> None:
    credentials = ias_credentials(
        clientsecret=None,
        app_tid=None,
        zone_uuid="zone-1",
        certificate=CERT,
        key=KEY,
        **{"credential-type": "X509_GENERATED"},
    )
    identity = load_bindings({}, vcap(service("identity", "ias", credentials), XSUAA)).identity
    assert identity.uses_certificate
    assert identity.app_tid == "zone-1"


def test_service_binding_root_folder_with_metadata(tmp_path: Path) -> None:
    metadata = {
        "metadataProperties": [{"name": "type", "format": "text"}],
        "credentialProperties": [
            {"name": "clientid", "format": "text"},
            {"name": "domains", "format": "json"},
        ],
    }
    values = {
        "type": "identity\n",
        "clientid": "k8s-client\n",
        "clientsecret": SECRET,
        "url": URL,
        "domains": '["accounts.ondemand.com"]',
        "certificate": CERT,
        "key": KEY,
        "credential-type": "X509_GENERATED",
    }
    write_folder(tmp_path, "my-ias", values, metadata)
    write_folder(tmp_path, "my-xsuaa", {"type": "xsuaa", "clientid": "sb-k8s!t1"})
    write_folder(tmp_path, "..data", {"type": "identity"})
    bindings = load_bindings({}, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    identity = bindings.identity
    assert identity.source == "SERVICE_BINDING_ROOT/my-ias"
    assert identity.client_id == "k8s-client"
    assert identity.domains == ("accounts.ondemand.com",)
    assert identity.certificate == CERT
    assert identity.uses_certificate
    assert bindings.xsuaa_client_id == "sb-k8s!t1"


def test_folder_domains_json_without_metadata_and_label_file(tmp_path: Path) -> None:
    values = {
        "label": "identity",
        "clientid": "c",
        "clientsecret": SECRET,
        "url": URL,
        "domains": '["accounts.cloud.sap"]\n',
    }
    write_folder(tmp_path, "ias", values)
    config = {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-x"}
    identity = load_bindings(config, {"SERVICE_BINDING_ROOT": str(tmp_path)}).identity
    assert identity.domains == ("accounts.cloud.sap",)


def test_folder_container_key_holds_all_credentials(tmp_path: Path) -> None:
    metadata = {
        "credentialProperties": [{"name": "credentials", "format": "json", "container": True}]
    }
    values = {"type": "identity", "credentials": json.dumps(ias_credentials())}
    write_folder(tmp_path, "ias", values, metadata)
    config = {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-x"}
    identity = load_bindings(config, {"SERVICE_BINDING_ROOT": str(tmp_path)}).identity
    assert identity.client_id == "ias-client"


def test_legacy_root_layout(tmp_path: Path) -> None:
    values = {"clientid": "old", "clientsecret": SECRET, "url": URL}
    write_folder(tmp_path / "identity", "my-ias", values)
    config = {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-x"}
    identity = load_bindings(config, {}, legacy_roots=[tmp_path]).identity
    assert identity.client_id == "old"
    assert identity.source == f"{tmp_path}/identity/my-ias"


def test_vcap_comes_before_service_binding_root(tmp_path: Path) -> None:
    write_folder(tmp_path, "ias", {"type": "identity", "clientid": "k8s", "url": URL})
    environ = {**vcap(service("identity", "cf", ias_credentials()), XSUAA)}
    environ["SERVICE_BINDING_ROOT"] = str(tmp_path)
    assert load_bindings({}, environ).identity.client_id == "ias-client"


# --- choosing among several -----------------------------------------------------------


def two_ias() -> dict[str, str]:
    return vcap(
        service("identity", "ias-a", ias_credentials(clientid="a")),
        service("identity", "ias-b", ias_credentials(clientid="b")),
        XSUAA,
    )


def test_binding_name_picks_one_of_several() -> None:
    bindings = load_bindings({"IAS_PKCE_BINDING_NAME": "ias-b"}, two_ias())
    assert bindings.identity.client_id == "b"
    assert bindings.identity.source == "VCAP_SERVICES identity 'ias-b'"


def test_several_without_a_name_are_all_used_in_the_order_found() -> None:
    bindings = load_bindings({}, two_ias())
    assert [identity.client_id for identity in bindings.identities] == ["a", "b"]
    assert [identity.name for identity in bindings.identities] == ["ias-a", "ias-b"]
    assert bindings.identity is bindings.identities[0]


def test_binding_name_list_chooses_and_orders() -> None:
    bindings = load_bindings({"IAS_PKCE_BINDING_NAME": ["ias-b", "ias-a"]}, two_ias())
    assert [identity.client_id for identity in bindings.identities] == ["b", "a"]
    # A name given twice (the name and the instance name, say) is one binding.
    again = load_bindings({"IAS_PKCE_BINDING_NAME": ["ias-b", "ias-b"]}, two_ias())
    assert [identity.client_id for identity in again.identities] == ["b"]


def test_binding_name_matching_none_lists_the_names() -> None:
    message = binding_error({"IAS_PKCE_BINDING_NAME": "ias-c"}, two_ias())
    assert "'ias-c'" in message
    assert "ias-a, ias-b" in message
    message = binding_error({"IAS_PKCE_BINDING_NAME": ["ias-a", "ias-c"]}, two_ias())
    assert "'ias-c'" in message


@pytest.mark.parametrize("names", [[], [""], 7, ["ias-a", 3]])
def test_binding_name_of_the_wrong_type(names: Any) -> None:
    assert "IAS_PKCE_BINDING_NAME" in binding_error({"IAS_PKCE_BINDING_NAME": names}, two_ias())


def test_one_application_bound_twice_is_refused_naming_both() -> None:
    environ = vcap(
        service("identity", "ias-a", ias_credentials(clientid="same")),
        service("identity", "ias-b", ias_credentials(clientid="same")),
        XSUAA,
    )
    message = binding_error({}, environ)
    assert "'ias-a'" in message
    assert "'ias-b'" in message
    assert "IAS_PKCE_BINDING_NAME" in message
    # An explicit order decides: the first named gets the tokens.
    ordered = load_bindings({"IAS_PKCE_BINDING_NAME": ["ias-b", "ias-a"]}, environ)
    assert [identity.name for identity in ordered.identities] == ["ias-b", "ias-a"]


def test_per_binding_overrides_are_refused_with_several() -> None:
    message = binding_error({"IAS_PKCE_CLIENT_SECRET": SECRET}, two_ias())
    assert "IAS_PKCE_CLIENT_SECRET" in message
    assert "IAS_PKCE_BINDINGS" in message


def test_several_binding_root_folders(tmp_path: Path) -> None:
    write_folder(
        tmp_path, "ias-x", {"type": "identity", **ias_credentials(clientid="x", domains=None)}
    )
    write_folder(
        tmp_path, "ias-y", {"type": "identity", **ias_credentials(clientid="y", domains=None)}
    )
    config = {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-x"}
    bindings = load_bindings(config, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert [identity.client_id for identity in bindings.identities] == ["x", "y"]
    assert bindings.identities[1].source == "SERVICE_BINDING_ROOT/ias-y"


def test_explicit_bindings_list() -> None:
    config = {
        "IAS_PKCE_BINDINGS": [
            {**ias_credentials(clientid="c1"), "name": "consumer"},
            {
                **ias_credentials(
                    clientid="p1",
                    clientsecret=None,
                    certificate=CERT,
                    key=KEY,
                    **{"credential-type": "X509_GENERATED"},
                ),
                "name": "partner",
            },
        ],
        "IAS_PKCE_XSUAA_CLIENT_ID": "sb-x",
    }
    bindings = load_bindings(config, two_ias())  # the configuration wins over VCAP_SERVICES
    consumer, partner = bindings.identities
    assert (consumer.name, consumer.client_id, consumer.uses_certificate) == (
        "consumer",
        "c1",
        False,
    )
    assert (partner.name, partner.client_id, partner.uses_certificate) == ("partner", "p1", True)
    assert partner.source == "app.config IAS_PKCE_BINDINGS 'partner'"
    # Names choose across the configuration and the environment.
    mixed = load_bindings({**config, "IAS_PKCE_BINDING_NAME": ["partner", "ias-b"]}, two_ias())
    assert [identity.client_id for identity in mixed.identities] == ["p1", "b"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, "must be a list"),
        ([], "must be a list"),
        (["text"], "IAS_PKCE_BINDINGS[0] must be a dict"),
        ([{"clientid": "c"}], "Missing 'name' of app.config IAS_PKCE_BINDINGS[0]"),
        ([{**ias_credentials(), "name": "n"}, {**ias_credentials(), "name": "n"}], "named twice"),
        ([{**ias_credentials(url=None), "name": "n"}], "'url' of app.config IAS_PKCE_BINDINGS 'n'"),
    ],
)
def test_explicit_bindings_list_errors(value: Any, expected: str) -> None:
    assert expected in binding_error({"IAS_PKCE_BINDINGS": value}, {})


def test_explicit_bindings_and_single_url_conflict() -> None:
    config = {
        "IAS_PKCE_BINDINGS": [{**ias_credentials(), "name": "n"}],
        "IAS_PKCE_CLIENT_ID": "c",
    }
    assert "not both" in binding_error(config, {})


def test_several_xsuaa_without_a_rule_name_the_candidates() -> None:
    second = service("xsuaa", "other-xsuaa", {"clientid": "sb-other"})
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA, second)
    message = binding_error({}, environ)
    assert "my-xsuaa" in message
    assert "other-xsuaa" in message
    assert "IAS_PKCE_XSUAA_BINDING_NAME" in message
    # An explicit client id does not silence it: the second hop needs one binding.
    assert "IAS_PKCE_XSUAA_BINDING_NAME" in binding_error(
        {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-pick"}, environ
    )


def test_xsuaa_binding_name_picks_one() -> None:
    second = service("xsuaa", "other-xsuaa", {"clientid": "sb-other"})
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA, second)
    bindings = load_bindings({"IAS_PKCE_XSUAA_BINDING_NAME": "other-xsuaa"}, environ)
    assert bindings.xsuaa is not None
    assert bindings.xsuaa_client_id == "sb-other"
    message = binding_error({"IAS_PKCE_XSUAA_BINDING_NAME": "nope"}, environ)
    assert "'nope'" in message
    assert "my-xsuaa, other-xsuaa" in message


@pytest.mark.parametrize(
    ("plans", "chosen"),
    [
        (("application", "broker"), "sb-1"),
        (("broker", "application"), "sb-0"),
        (("space", "application"), "sb-1"),
    ],
)
def test_xsuaa_plan_broker_before_application(plans: tuple[str, str], chosen: str) -> None:
    entries = [
        {**service("xsuaa", f"x{i}", {"clientid": f"sb-{i}", "clientsecret": SECRET}), "plan": plan}
        for i, plan in enumerate(plans)
    ]
    environ = vcap(service("identity", "ias", ias_credentials()), *entries)
    assert load_bindings({}, environ).xsuaa_client_id == chosen


@pytest.mark.parametrize(
    "plans", [("broker", "broker"), ("application", "application"), ("space", None)]
)
def test_xsuaa_plans_that_do_not_decide(plans: tuple[str, str | None]) -> None:
    entries = [
        {**service("xsuaa", f"x{i}", {"clientid": f"sb-{i}"}), **({"plan": plan} if plan else {})}
        for i, plan in enumerate(plans)
    ]
    environ = vcap(service("identity", "ias", ias_credentials()), *entries)
    message = binding_error({}, environ)
    assert "'x0'" in message
    assert "'x1'" in message


def test_xsuaa_plan_from_a_folder(tmp_path: Path) -> None:
    write_folder(tmp_path, "ias", {"type": "identity", **ias_credentials(domains=None)})
    write_folder(tmp_path, "xa", {"type": "xsuaa", "clientid": "sb-a", "plan": "application"})
    write_folder(tmp_path, "xb", {"type": "xsuaa", "clientid": "sb-b", "plan": "broker"})
    assert load_bindings({}, {"SERVICE_BINDING_ROOT": str(tmp_path)}).xsuaa_client_id == "sb-b"


def test_explicit_xsuaa_client_id_wins_over_binding() -> None:
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA)
    bindings = load_bindings({"IAS_PKCE_XSUAA_CLIENT_ID": "sb-own"}, environ)
    assert bindings.xsuaa_client_id == "sb-own"
    assert bindings.xsuaa is not None


# --- config overriding binding fields -------------------------------------------------


def test_config_overrides_binding_fields(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text(KEY)
    config = {
        "IAS_PKCE_APP_TID": "tid-override",
        "IAS_PKCE_DOMAINS": ["accounts.cloud.sap"],
        "IAS_PKCE_CERTIFICATE": CERT,
        "IAS_PKCE_KEY": str(tmp_path / "key.pem"),
    }
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA)
    identity = load_bindings(config, environ).identity
    assert identity.app_tid == "tid-override"
    assert identity.domains == ("accounts.cloud.sap",)
    assert identity.key == KEY
    assert identity.uses_certificate
    assert identity.source == "VCAP_SERVICES identity 'ias'"


# --- redis ----------------------------------------------------------------------------


def test_redis_url_from_vcap_uri() -> None:
    redis = service("redis-cache", "cache", {"uri": "rediss://:pw@redis.example:1234"})
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA, redis)
    bindings = load_bindings({}, environ)
    assert bindings.redis_url == "rediss://:pw@redis.example:1234"
    assert "pw" not in repr(bindings)
    assert "redis_url='rediss://***@redis.example:1234'" in repr(bindings)


@pytest.mark.parametrize(
    ("tls", "expected"),
    [(True, "rediss://:p%40ss@h.example:6380"), (False, "redis://:p%40ss@h.example:6380")],
)
def test_redis_url_from_vcap_parts(tls: bool, expected: str) -> None:
    parts = {"hostname": "h.example", "port": 6380, "password": "p@ss", "tls": tls}
    environ = vcap(
        service("identity", "ias", ias_credentials()), XSUAA, service("redis-cache", "c", parts)
    )
    assert load_bindings({}, environ).redis_url == expected


def test_redis_url_from_folder(tmp_path: Path) -> None:
    write_folder(tmp_path, "ias", {"type": "identity", **ias_credentials(domains=None)})
    values = {"type": "redis", "hostname": "r.example", "port": "6379", "password": "pw"}
    write_folder(tmp_path, "cache", {**values, "tls": "true"})
    config = {"IAS_PKCE_XSUAA_CLIENT_ID": "sb-x"}
    bindings = load_bindings(config, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert bindings.redis_url == "rediss://:pw@r.example:6379"


def test_several_redis_bindings() -> None:
    first = service("redis-cache", "one", {"uri": "rediss://one:1"})
    second = service("redis-cache", "two", {"uri": "rediss://two:1"})
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA, first, second)
    assert "IAS_PKCE_CACHE_REDIS_URL" in binding_error({}, environ)
    config = {"IAS_PKCE_CACHE_REDIS_URL": "redis://own:1"}
    assert load_bindings(config, environ).redis_url is None


def test_redis_binding_without_host() -> None:
    redis = service("redis-cache", "cache", {"password": SECRET})
    environ = vcap(service("identity", "ias", ias_credentials()), XSUAA, redis)
    message = binding_error({}, environ)
    assert "hostname" in message
    assert "VCAP_SERVICES redis-cache 'cache'" in message


# --- errors ---------------------------------------------------------------------------


def test_no_identity_binding_anywhere_lists_every_place(tmp_path: Path) -> None:
    message = binding_error({}, {})
    assert "IAS_PKCE_" in message
    assert "VCAP_SERVICES label 'identity'" in message
    assert "SERVICE_BINDING_ROOT=(unset)" in message
    message = binding_error({}, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert f"SERVICE_BINDING_ROOT={tmp_path}" in message


def test_no_xsuaa_client_id() -> None:
    message = binding_error({}, vcap(service("identity", "ias", ias_credentials())))
    assert "IAS_PKCE_XSUAA_CLIENT_ID" in message
    assert "VCAP_SERVICES label 'xsuaa'" in message


@pytest.mark.parametrize("missing", ["clientid", "url"])
def test_binding_missing_a_key(missing: str) -> None:
    credentials = ias_credentials(**{missing: None})
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert f"'{missing}' of VCAP_SERVICES identity 'ias'" in message


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ({"IAS_PKCE_IAS_URL": URL, "IAS_PKCE_CLIENT_SECRET": SECRET}, "IAS_PKCE_CLIENT_ID"),
        ({"IAS_PKCE_CLIENT_ID": "c", "IAS_PKCE_CLIENT_SECRET": SECRET}, "IAS_PKCE_IAS_URL"),
    ],
)
def test_explicit_config_missing_a_key(config: dict[str, Any], missing: str) -> None:
    assert f"app.config {missing}" in binding_error(config, {})


def test_url_must_be_https() -> None:
    credentials = ias_credentials(url="http://tenant.accounts.ondemand.com")
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert "'url' of VCAP_SERVICES identity 'ias'" in message
    assert "https" in message


@pytest.mark.parametrize("missing", ["certificate", "key"])
def test_x509_type_needs_certificate_and_key(missing: str) -> None:
    present = {"certificate": CERT, "key": KEY}
    present.pop(missing)
    credentials = ias_credentials(**{"credential-type": "X509_PROVIDED"}, **present)
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert f"no '{missing}'" in message
    assert "X509_PROVIDED" in message
    assert "VCAP_SERVICES identity 'ias'" in message


def test_no_secret_and_no_certificate() -> None:
    credentials = ias_credentials(clientsecret=None, **{"credential-type": "NONE"})
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert "'clientsecret'" in message
    assert "'certificate'" in message
    assert "VCAP_SERVICES identity 'ias'" in message


def test_explicit_config_without_secret() -> None:
    message = binding_error({"IAS_PKCE_IAS_URL": URL, "IAS_PKCE_CLIENT_ID": "c"}, {})
    assert "app.config" in message
    assert "IAS_PKCE_CLIENT_SECRET" in message


def test_malformed_vcap_services_does_not_echo_it() -> None:
    message = binding_error({}, {"VCAP_SERVICES": '{"identity": [{"clientsecret": "' + SECRET})
    assert "VCAP_SERVICES is not valid JSON" in message


@pytest.mark.parametrize("text", ['["a list"]', '{"identity": {"not": "a list"}}'])
def test_vcap_services_of_the_wrong_shape(text: str) -> None:
    assert "VCAP_SERVICES must be" in binding_error({}, {"VCAP_SERVICES": text})


@pytest.mark.parametrize("domains", [[1, 2], {"a": "b"}, [""]])
def test_domains_not_a_list_of_strings(domains: Any) -> None:
    credentials = ias_credentials(domains=domains)
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert "'domains' of VCAP_SERVICES identity 'ias'" in message


def test_domains_of_a_folder_not_json(tmp_path: Path) -> None:
    metadata = {"credentialProperties": [{"name": "domains", "format": "json"}]}
    values = {"type": "identity", **ias_credentials(domains=None), "domains": "[broken"}
    write_folder(tmp_path, "ias", values, metadata)
    message = binding_error({}, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert "'domains' of SERVICE_BINDING_ROOT/ias" in message


def test_broken_metadata(tmp_path: Path) -> None:
    write_folder(tmp_path, "ias", {"type": "identity"}, metadata={"credentialProperties": "x"})
    message = binding_error({}, {"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert ".metadata of SERVICE_BINDING_ROOT/ias" in message


def test_binding_pem_that_is_not_pem() -> None:
    credentials = ias_credentials(key="MIIBkeybody-without-armour", certificate=CERT)
    message = binding_error({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert "'key' of VCAP_SERVICES identity 'ias'" in message


def test_config_value_of_the_wrong_type() -> None:
    message = binding_error({"IAS_PKCE_CLIENT_ID": 42, "IAS_PKCE_IAS_URL": URL}, {})
    assert "app.config IAS_PKCE_CLIENT_ID must be a string" in message


# --- read_pem and repr ----------------------------------------------------------------


def test_read_pem_text_and_file(tmp_path: Path) -> None:
    assert read_pem(CERT) == CERT
    path = tmp_path / "cert.pem"
    path.write_text(CERT)
    assert read_pem(str(path)) == CERT


def test_read_pem_refuses_without_echoing(tmp_path: Path) -> None:
    with pytest.raises(BindingError, match="IAS_PKCE_KEY is neither") as caught:
        read_pem("MIIBkeybody", name="IAS_PKCE_KEY")
    assert "MIIBkeybody" not in str(caught.value)
    path = tmp_path / "not.pem"
    path.write_text("MIIBkeybody")
    with pytest.raises(BindingError, match="does not hold PEM") as caught:
        read_pem(str(path))
    assert "MIIBkeybody" not in str(caught.value)
    with pytest.raises(BindingError):
        read_pem("x" * 5000)


def test_repr_masks_secrets() -> None:
    credentials = ias_credentials(certificate=CERT, key=KEY)
    bindings = load_bindings({}, vcap(service("identity", "ias", credentials), XSUAA))
    assert isinstance(bindings, Bindings)
    for text in (repr(bindings), repr(bindings.identity), repr(bindings.xsuaa)):
        assert SECRET not in text
        assert "MIIBkeybody" not in text
        assert "MIIBcert" not in text
    shown = repr(bindings.identity)
    assert "client_secret='***'" in shown
    assert "key='***'" in shown
    assert f"certificate=<PEM {len(CERT)} bytes>" in shown
    assert "client_id='ias-client'" in shown


def test_repr_shows_absent_secrets_as_none() -> None:
    identity = IdentityBinding(URL, "c", ("d",), None, None, None, None, None, "app.config")
    assert "client_secret=None" in repr(identity)
    assert not identity.uses_certificate
