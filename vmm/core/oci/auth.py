"""Registry credentials the way docker and podman store them, and the token flow.

Files, first match wins (``settings.registry_auth_files``): ``REGISTRY_AUTH_FILE``,
``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json`` (podman / skopeo,
containers-auth.json(5)), then docker's ``~/.docker/config.json``. All share the shape
``{"auths": {"<host[:port]>": {"auth": base64("user:password")}}}``; docker's keys may carry a
scheme and path (``https://host/v1/``). Credential helpers (``credsStore``/``credHelpers``)
and ``identitytoken`` are not run/used: log in so that the file holds ``auth``.

Challenges (distribution's token spec, distribution/distribution ``docs/spec/auth/token.md``):
a 401 with ``WWW-Authenticate: Basic realm=...`` is answered with the stored credentials;
``Bearer realm=...,service=...,scope=...`` sends them (Basic) to the realm, which returns
``{"token"|"access_token": ...}``. Credentials go only to the registry's own host, and to a
token realm that is that same host or HTTPS; never to a redirect target (blob storage).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import urlsplit

from vmm.core import jsonfile, settings

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _host_of_key(key: str) -> str:
    key = key.strip().lower()
    if "://" in key:
        key = urlsplit(key).netloc
    return key.split("/", 1)[0]


def credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) stored for ``registry`` (``host`` or ``host:port``), else None."""
    registry = registry.lower()
    for path in settings.registry_auth_files():
        try:
            doc = jsonfile.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if _host_of_key(str(key)) != registry or not isinstance(entry, dict):
                continue
            raw = entry.get("auth")
            if isinstance(raw, str) and raw:
                try:
                    user, _, password = base64.b64decode(raw).decode("utf-8").partition(":")
                except (ValueError, UnicodeDecodeError):
                    continue
                if user:
                    return user, password
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return entry["username"], entry["password"]
    return None


def basic_header(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate`` -> (scheme lower-cased, {param: value}); ("", {}) when absent."""
    if not header:
        return "", {}
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def may_send_credentials(realm: str, registry_hostname: str) -> bool:
    """Stored credentials go to a token realm only over HTTPS or on the registry's own host."""
    parts = urlsplit(realm)
    return parts.scheme == "https" or (parts.hostname or "").lower() == registry_hostname.lower()
