"""Find the app's IAS, XSUAA and Redis service bindings.

Bindings are read once, at ``init_app``, so that a missing or broken binding is an error at
start-up that names what is missing, never a failure at the first request. Sources, in
order: explicit ``IAS_PKCE_*`` configuration, ``VCAP_SERVICES`` (Cloud Foundry, read through
cfenv) and ``$SERVICE_BINDING_ROOT/<name>/`` folders (Kubernetes, Kyma). The configuration
and the environment are passed in as mappings, so this module knows nothing of Flask or of
``os.environ``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import cfenv

_CONFIG: Final = "app.config"
_X509_TYPES: Final = frozenset({"X509_GENERATED", "X509_PROVIDED"})
_REDIS_LABELS: Final = frozenset({"redis-cache", "redis"})
_SECRET_FIELDS: Final = frozenset({"client_secret", "key"})
_PEM_FIELDS: Final = frozenset({"certificate"})
#: Binding fields that explicit configuration may override, by credential key.
_OVERRIDES: Final = {
    "clientsecret": "IAS_PKCE_CLIENT_SECRET",
    "certificate": "IAS_PKCE_CERTIFICATE",
    "key": "IAS_PKCE_KEY",
    "domains": "IAS_PKCE_DOMAINS",
    "app_tid": "IAS_PKCE_APP_TID",
}


class BindingError(RuntimeError):
    """A service binding is missing or broken.

    The message names the missing or broken key and the places looked, never a secret.
    """


class _MaskedRepr:
    """A repr that shows which secrets are present, never their text (logs, tracebacks)."""

    def __repr__(self) -> str:
        shown = []
        for name, value in vars(self).items():
            if value is not None and name in _SECRET_FIELDS:
                text = "'***'"
            elif value is not None and name in _PEM_FIELDS:
                text = f"<PEM {len(str(value).encode())} bytes>"
            else:
                text = repr(value)
            shown.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class IdentityBinding(_MaskedRepr):
    """The IAS application this extension authenticates as when it exchanges tokens."""

    url: str
    client_id: str
    domains: tuple[str, ...]
    client_secret: str | None
    certificate: str | None
    key: str | None
    app_tid: str | None
    credential_type: str | None
    source: str
    #: The binding's name (instance name, folder or ``name`` of ``IAS_PKCE_BINDINGS``).
    name: str = ""
    #: The binding's ``certificate_expires_at`` as given (ISO 8601), when it has one.
    certificate_expires_at: str | None = None

    @property
    def uses_certificate(self) -> bool:
        """Authenticate with the X.509 certificate (mTLS) rather than the client secret."""
        has_pair = self.certificate is not None and self.key is not None
        return has_pair and self.credential_type != "SECRET"


@dataclass(frozen=True, repr=False)
class XsuaaBinding(_MaskedRepr):
    """The app's XSUAA service instance: its client id is the audience tokens must carry."""

    client_id: str
    client_secret: str | None
    url: str | None
    certurl: str | None
    certificate: str | None
    key: str | None
    uaadomain: str | None
    xsappname: str | None
    identityzone: str | None
    identityzoneid: str | None
    source: str


@dataclass(frozen=True, repr=False)
class Bindings:
    """Everything the extension takes from the app's service bindings.

    ``identities`` are the IAS bindings in the order tokens are routed to them (the order
    of ``IAS_PKCE_BINDING_NAME``, else the order in which they were found); ``identity``
    is the first of them.
    """

    identity: IdentityBinding
    xsuaa: XsuaaBinding | None
    xsuaa_client_id: str
    redis_url: str | None
    identities: tuple[IdentityBinding, ...]
    #: The bound Redis runs in cluster mode (the ``redis-cache`` binding's ``cluster_mode``).
    redis_cluster: bool = False

    def __repr__(self) -> str:
        # The Redis URL carries the Redis password.
        redis_url = self.redis_url
        if redis_url and urlsplit(redis_url).password is not None:
            parts = urlsplit(redis_url)
            redis_url = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
        return (
            f"Bindings(identities={self.identities!r}, xsuaa={self.xsuaa!r}, "
            f"xsuaa_client_id={self.xsuaa_client_id!r}, redis_url={redis_url!r}, "
            f"redis_cluster={self.redis_cluster!r})"
        )


@dataclass(frozen=True)
class _Found:
    """One service binding as found in a source, before it is checked."""

    label: str
    names: tuple[str, ...]
    credentials: Mapping[str, Any]
    source: str
    plan: str | None = None


def read_pem(value: str, *, name: str = "PEM value") -> str:
    """Return PEM text given as is or as the path of a file holding it.

    ``name`` says in error messages which value is wrong; the value itself is never shown,
    as it may be a key pasted in the wrong form.
    """
    if _looks_like_pem(value):
        return value
    try:
        text = Path(value).read_text(encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError):
        raise BindingError(f"{name} is neither PEM text nor the path of a PEM file") from None
    if not _looks_like_pem(text):
        raise BindingError(f"{name} names a file that does not hold PEM text")
    return text


def _looks_like_pem(text: str) -> bool:
    return text.lstrip().startswith("-----BEGIN ") and "-----END " in text


def load_bindings(
    config: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    legacy_roots: Sequence[str | os.PathLike[str]] = (),
) -> Bindings:
    """Find and check the IAS binding, and the XSUAA and Redis bindings when present.

    ``legacy_roots`` are older Kubernetes layouts such as ``/etc/secrets/sapbtp``, holding
    ``<service>/<instance>/`` folders; they are searched after ``SERVICE_BINDING_ROOT``.
    """
    groups = [_vcap_bindings(environ)]
    root = environ.get("SERVICE_BINDING_ROOT")
    if root:
        groups.append(_folder_bindings(Path(root), "SERVICE_BINDING_ROOT"))
    for legacy in legacy_roots:
        base = Path(legacy)
        for service in sorted(base.iterdir()) if base.is_dir() else []:
            groups.append(_folder_bindings(service, str(service), label=service.name))
    identities = _identities(config, groups, root)
    xsuaa, xsuaa_client_id = _xsuaa_choice(config, groups, root)
    several = "set IAS_PKCE_CACHE_REDIS_URL or unbind all but one"
    quiet = _text_setting(config, "IAS_PKCE_CACHE_REDIS_URL") is not None
    redis_found = _select(groups, _REDIS_LABELS, several, quiet)
    redis_url = _redis_url(redis_found) if redis_found else None
    redis_cluster = _flag(redis_found.credentials.get("cluster_mode")) if redis_found else False
    return Bindings(identities[0], xsuaa, xsuaa_client_id, redis_url, identities, redis_cluster)


def _xsuaa_choice(
    config: Mapping[str, Any], groups: list[list[_Found]], root: str | None
) -> tuple[XsuaaBinding | None, str]:
    client_id = _text_setting(config, "IAS_PKCE_XSUAA_CLIENT_ID")
    found = _xsuaa_binding(config, groups)
    xsuaa = _xsuaa(found) if found else None
    if client_id is not None:
        return xsuaa, client_id
    if xsuaa is None:
        raise BindingError(
            "No XSUAA client id: set IAS_PKCE_XSUAA_CLIENT_ID or bind an xsuaa service. "
            f"Looked in: {_places(root, 'xsuaa')}"
        )
    return xsuaa, xsuaa.client_id


def _xsuaa_binding(config: Mapping[str, Any], groups: list[list[_Found]]) -> _Found | None:
    """The xsuaa binding for the audience check and the second hop.

    ``IAS_PKCE_XSUAA_BINDING_NAME`` when set; else the only one; else the one of plan
    ``broker``, then of plan ``application`` (the rule of SAP's Java library,
    ``getXsuaaConfigurationForTokenExchange``); else an error naming the candidates: several
    bindings never silently turn the second hop off.
    """
    candidates = [[found for found in group if found.label == "xsuaa"] for group in groups]
    everyone = [found for group in candidates for found in group]
    wanted = _text_setting(config, "IAS_PKCE_XSUAA_BINDING_NAME")
    if wanted is not None:
        named = [found for found in everyone if wanted in found.names]
        if not named:
            raise BindingError(
                f"IAS_PKCE_XSUAA_BINDING_NAME={wanted!r} matches no xsuaa binding; found: "
                f"{', '.join(found.names[0] for found in everyone if found.names) or 'none'}"
            )
        return named[0]
    group = next((group for group in candidates if group), [])
    if len(group) <= 1:
        return group[0] if group else None
    for plan in ("broker", "application"):
        of_plan = [found for found in group if (found.plan or "").lower() == plan]
        if len(of_plan) == 1:
            return of_plan[0]
        if of_plan:
            group = of_plan
            break
    raise BindingError(
        f"Several xsuaa bindings ({', '.join(_described(found) for found in group)}) and no "
        "rule picks one: set IAS_PKCE_XSUAA_BINDING_NAME to one of them (without it, the one "
        "of plan 'broker' is used, else the one of plan 'application')"
    )


def _described(found: _Found) -> str:
    return f"{found.source} plan {found.plan or '(unknown)'}"


def _identities(
    config: Mapping[str, Any], groups: list[list[_Found]], root: str | None
) -> tuple[IdentityBinding, ...]:
    """The IAS bindings, in the order tokens are routed to them."""
    url = _text_setting(config, "IAS_PKCE_IAS_URL")
    client_id = _text_setting(config, "IAS_PKCE_CLIENT_ID")
    explicit = _configured_bindings(config)
    if url is not None or client_id is not None:
        if explicit:
            raise BindingError(
                "Set either IAS_PKCE_IAS_URL/IAS_PKCE_CLIENT_ID (one binding) or "
                "IAS_PKCE_BINDINGS (several), not both"
            )
        return (_identity_from({"url": url, "clientid": client_id}, _CONFIG, config, ""),)
    sources = [explicit, *groups] if explicit else groups
    candidates = [[found for found in group if found.label == "identity"] for group in sources]
    wanted = _binding_names(config)
    if wanted is None:
        chosen = next((group for group in candidates if group), [])
    else:
        everyone = [found for group in candidates for found in group]
        chosen = []
        for name in wanted:
            named = [found for found in everyone if name in found.names]
            if not named:
                found_names = ", ".join(found.names[0] for found in everyone if found.names)
                raise BindingError(
                    f"IAS_PKCE_BINDING_NAME {name!r} matches no identity binding; "
                    f"found: {found_names or 'none'}"
                )
            if named[0] not in chosen:
                chosen.append(named[0])
    if not chosen:
        raise BindingError(f"No IAS (identity) service binding found. Looked in: {_places(root)}")
    if len(chosen) > 1:
        overrides = [key for key in _OVERRIDES.values() if config.get(key) not in (None, "")]
        if overrides:
            raise BindingError(
                f"{', '.join(overrides)} would apply to every one of several identity "
                "bindings; set the values per binding in IAS_PKCE_BINDINGS instead"
            )
    identities = tuple(
        _identity_from(found.credentials, found.source, config, found.names[0]) for found in chosen
    )
    if wanted is None:
        _refuse_same_client(identities)
    return identities


def _binding_names(config: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = config.get("IAS_PKCE_BINDING_NAME")
    if value is None or value == "":
        return None
    names = [value] if isinstance(value, str) else value
    if (
        not isinstance(names, list | tuple)
        or not names
        or not all(isinstance(name, str) and name for name in names)
    ):
        raise BindingError("app.config IAS_PKCE_BINDING_NAME must be a name or a list of names")
    return tuple(names)


def _configured_bindings(config: Mapping[str, Any]) -> list[_Found]:
    """``IAS_PKCE_BINDINGS``: identity bindings given as credentials, each with a name."""
    value = config.get("IAS_PKCE_BINDINGS")
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not value:
        raise BindingError("app.config IAS_PKCE_BINDINGS must be a list of binding dicts")
    found: list[_Found] = []
    for index, entry in enumerate(value):
        where = f"app.config IAS_PKCE_BINDINGS[{index}]"
        if not isinstance(entry, Mapping):
            raise BindingError(f"{where} must be a dict of binding credentials")
        name = _required(_text(entry.get("name"), f"'name' of {where}"), f"'name' of {where}")
        source = f"app.config IAS_PKCE_BINDINGS {name!r}"
        if any(name in other.names for other in found):
            raise BindingError(f"{source} is named twice in IAS_PKCE_BINDINGS")
        found.append(_Found("identity", (name,), dict(entry), source))
    return found


def _refuse_same_client(identities: Sequence[IdentityBinding]) -> None:
    seen: dict[str, IdentityBinding] = {}
    for identity in identities:
        first = seen.setdefault(identity.client_id, identity)
        if first is not identity:
            raise BindingError(
                f"{first.source} and {identity.source} are bindings of the same IAS "
                f"application (client id {identity.client_id!r}), so a token cannot say "
                "which one it is for: unbind one, or set IAS_PKCE_BINDING_NAME to the "
                "bindings to use, in order"
            )


def _places(root: str | None, label: str = "identity") -> str:
    explicit = (
        "app.config IAS_PKCE_IAS_URL/IAS_PKCE_CLIENT_ID (unset), " if label == "identity" else ""
    )
    return f"{explicit}VCAP_SERVICES label '{label}', SERVICE_BINDING_ROOT={root or '(unset)'}"


def _select(
    groups: list[list[_Found]],
    labels: set[str] | frozenset[str],
    several: str,
    quiet: bool,
) -> _Found | None:
    """The one binding with one of ``labels`` from the first source that has any.

    ``quiet`` turns "several bindings" into "none", for when configuration makes the choice
    unnecessary.
    """
    candidates = [[found for found in group if found.label in labels] for group in groups]
    group = next((group for group in candidates if group), [])
    if len(group) > 1:
        if quiet:
            return None
        raise BindingError(
            f"Several {'/'.join(sorted(labels))} bindings "
            f"({', '.join(found.source for found in group)}); {several}"
        )
    return group[0] if group else None


def _identity_from(
    credentials: Mapping[str, Any], source: str, config: Mapping[str, Any], name: str
) -> IdentityBinding:
    merged = dict(credentials)
    settings = {"url": "IAS_PKCE_IAS_URL", "clientid": "IAS_PKCE_CLIENT_ID"}
    overridden = set(settings) if source == _CONFIG else set()
    for key, setting in _OVERRIDES.items():
        if config.get(setting) not in (None, ""):
            merged[key] = config[setting]
            overridden.add(key)

    def where(key: str) -> str:
        if key in overridden:
            return f"app.config {settings.get(key) or _OVERRIDES[key]}"
        return f"'{key}' of {source}"

    def text(key: str) -> str | None:
        return _text(merged.get(key), where(key))

    credential_type = text("credential-type")
    if {"certificate", "key"} <= overridden:
        # Certificate and key given explicitly: the operator wants mTLS whatever the binding says.
        credential_type = "X509_PROVIDED"
    url = _https_url(_required(text("url"), where("url")), where("url"))
    binding = IdentityBinding(
        url=url,
        client_id=_required(text("clientid"), where("clientid")),
        domains=_domains(merged.get("domains"), where("domains"), url),
        client_secret=text("clientsecret"),
        certificate=_pem(text("certificate"), where("certificate")),
        key=_pem(text("key"), where("key")),
        app_tid=text("app_tid") or text("zone_uuid"),
        credential_type=credential_type,
        source=source,
        name=name,
        certificate_expires_at=text("certificate_expires_at"),
    )
    _check_credentials(binding)
    return binding


def _check_credentials(binding: IdentityBinding) -> None:
    kind, source = binding.credential_type, binding.source
    if kind in _X509_TYPES:
        for name in ("certificate", "key"):
            if getattr(binding, name) is None:
                raise BindingError(f"{source} has credential-type {kind} but no '{name}'")
    if binding.client_secret is None and not binding.uses_certificate:
        raise BindingError(
            f"{source} (credential-type {kind or 'unset'}) has neither 'clientsecret' nor "
            "'certificate' and 'key'; the token exchange needs one (or set "
            "IAS_PKCE_CLIENT_SECRET, or IAS_PKCE_CERTIFICATE and IAS_PKCE_KEY)"
        )


def _xsuaa(found: _Found) -> XsuaaBinding:
    source = found.source

    def text(key: str) -> str | None:
        return _text(found.credentials.get(key), f"'{key}' of {source}")

    return XsuaaBinding(
        client_id=_required(text("clientid"), f"'clientid' of {source}"),
        client_secret=text("clientsecret"),
        url=text("url"),
        certurl=text("certurl"),
        certificate=_pem(text("certificate"), f"'certificate' of {source}"),
        key=_pem(text("key"), f"'key' of {source}"),
        uaadomain=text("uaadomain"),
        xsappname=text("xsappname"),
        identityzone=text("identityzone"),
        identityzoneid=text("identityzoneid"),
        source=source,
    )


def _redis_url(found: _Found) -> str:
    credentials = found.credentials
    uri = credentials.get("uri")
    if isinstance(uri, str) and uri:
        return uri
    host = credentials.get("hostname") or credentials.get("host")
    if not host:
        raise BindingError(f"Redis binding {found.source} has neither 'uri' nor 'hostname'")
    # SAP's Redis always speaks TLS; plain redis:// only when the binding says so.
    tls = _flag(credentials.get("tls", True))
    password = credentials.get("password")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    port = credentials.get("port") or 6379
    return f"{'rediss' if tls else 'redis'}://{auth}{host}:{port}"


def _flag(value: object) -> bool:
    """A binding's boolean: JSON ``true``, or the text a Kubernetes secret file holds."""
    return str(value).strip().lower() not in ("false", "0", "no", "", "none")


def _text_setting(config: Mapping[str, Any], key: str) -> str | None:
    return _text(config.get(key), f"app.config {key}")


def _text(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BindingError(f"{where} must be a string, not {type(value).__name__}")
    return value


def _required(value: str | None, where: str) -> str:
    if value is None:
        raise BindingError(f"Missing {where}")
    return value


def _pem(value: str | None, where: str) -> str | None:
    return None if value is None else read_pem(value, name=where)


def _https_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise BindingError(f"{where} must be an https:// URL with a host")
    return url.rstrip("/")


def _domains(value: Any, where: str, url: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not value:
        return (urlsplit(url).hostname or "",)
    if not isinstance(value, list | tuple) or not all(
        isinstance(domain, str) and domain.strip() for domain in value
    ):
        raise BindingError(f"{where} must be a list of domain names")
    return tuple(domain.strip().lower() for domain in value)


def _vcap_bindings(environ: Mapping[str, str]) -> list[_Found]:
    text = environ.get("VCAP_SERVICES")
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        # The position only: the text holds secrets.
        raise BindingError(
            f"VCAP_SERVICES is not valid JSON ({error.msg}: line {error.lineno} "
            f"column {error.colno})"
        ) from None
    if not isinstance(parsed, dict) or not all(isinstance(v, list) for v in parsed.values()):
        raise BindingError("VCAP_SERVICES must be a JSON object of lists of bindings")
    found = []
    for offering, entries in parsed.items():
        for entry in entries:
            if not isinstance(entry, dict):
                raise BindingError(f"VCAP_SERVICES {offering!r} holds a non-object binding")
            # What cfenv.AppEnv does, which can read only os.environ.
            service = cfenv.Service(entry)
            label = str(entry.get("label") or offering)
            names = tuple(str(n) for n in (service.name, entry.get("instance_name")) if n)
            source = f"VCAP_SERVICES {label} {names[0] if names else '?'!r}"
            if not isinstance(service.credentials, dict):
                raise BindingError(f"'credentials' of {source} is not an object")
            plan = entry.get("plan")
            plan = plan if isinstance(plan, str) else None
            found.append(_Found(label, names, service.credentials, source, plan))
    return found


def _folder_bindings(base: Path, prefix: str, label: str | None = None) -> list[_Found]:
    if not base.is_dir():
        return []
    # Kubernetes secret volumes hold "..data" style folders next to the bindings.
    folders = [path for path in sorted(base.iterdir()) if path.is_dir()]
    return [
        _read_folder(folder, f"{prefix}/{folder.name}", label)
        for folder in folders
        if not folder.name.startswith(".")
    ]


def _read_folder(folder: Path, source: str, label: str | None) -> _Found:
    json_keys, containers = _metadata(folder, source)
    credentials: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        # Values are exact in secrets, but files written by hand often end with a newline.
        value = text if _looks_like_pem(text) else text.strip()
        is_json = path.name in json_keys or (path.name == "domains" and value.startswith("["))
        credentials[path.name] = _json(value, f"'{path.name}' of {source}") if is_json else value
    for key in containers:
        nested = credentials.pop(key, {})
        if not isinstance(nested, dict):
            raise BindingError(f"'{key}' of {source} is not a JSON object")
        credentials.update(nested)
    kind = label or credentials.get("type") or credentials.get("label") or ""
    names = tuple(str(n) for n in (folder.name, credentials.get("instance_name")) if n)
    plan = credentials.get("plan")
    return _Found(str(kind), names, credentials, source, plan if isinstance(plan, str) else None)


def _metadata(folder: Path, source: str) -> tuple[set[str], set[str]]:
    """Keys that hold JSON, and keys whose JSON object holds all credentials."""
    path = folder / ".metadata"
    if not path.is_file():
        return set(), set()
    metadata = _json(path.read_text(encoding="utf-8"), f".metadata of {source}")
    properties = metadata.get("credentialProperties", []) if isinstance(metadata, dict) else None
    if not isinstance(properties, list) or not all(isinstance(p, dict) for p in properties):
        raise BindingError(f".metadata of {source} has no list 'credentialProperties'")
    containers = {str(p.get("name")) for p in properties if p.get("container")}
    json_keys = {str(p.get("name")) for p in properties if p.get("format") == "json"}
    return json_keys | containers, containers


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BindingError(f"{where} is not valid JSON ({error.msg})") from None
