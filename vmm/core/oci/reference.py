"""Registry references (``REGISTRY/REPO[:TAG|@DIGEST]``, ``oci://`` optional) and which ones
may be spoken to over plain HTTP.

Grammar from the OCI distribution spec (opencontainers/distribution-spec, spec.md, "Pulling
manifests", v1.1.0): a repository name is ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` components
joined by ``/``; a tag ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``. There is no implicit
``docker.io``: the first component must name the registry host (it holds a ``.`` or ``:``,
or is ``localhost``), so a model never goes to a registry the operator did not name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vmm.core import settings
from vmm.core.errors import UsageError

SCHEME = "oci://"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    registry: str           # host[:port], lower-cased
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest, else the tag, else ``latest``."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def hostname(self) -> str:
        host = self.registry
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"not a registry reference ({why})", text,
                      "write REGISTRY/REPO[:TAG] or REGISTRY/REPO@sha256:DIGEST, e.g. registry.example.com/models/qwen:v1")


def parse(text: str) -> Reference:
    """``[oci://]REGISTRY/REPO[:TAG][@DIGEST]`` -> :class:`Reference`; exit 2 when malformed."""
    raw = text[len(SCHEME):] if text.startswith(SCHEME) else text
    if "://" in raw:
        raise _bad(text, "only oci:// is understood")
    digest = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.match(digest):
            raise _bad(text, "the digest must be sha256: and 64 lower-case hex digits")
    if "/" not in raw:
        raise _bad(text, "no repository after the registry host")
    host, rest = raw.split("/", 1)
    if not (("." in host or ":" in host or host == "localhost") and _HOST.match(host)):
        raise _bad(text, f"{host!r} is not a registry host (name it: there is no default registry)")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise _bad(text, f"bad tag {tag!r}")
    if not _REPO.match(rest) or len(rest) > 255:
        raise _bad(text, f"bad repository name {rest!r} (lower-case letters, digits, . _ - and /)")
    return Reference(host.lower(), rest, tag, digest)


def is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def scheme_for(ref: Reference, insecure: bool = False) -> str:
    """``http`` for a loopback registry, one named by ``--insecure`` or listed in
    ``VMM_INSECURE_REGISTRIES``; ``https`` for every other."""
    allowed = settings.insecure_registries()
    if insecure or is_loopback(ref.hostname) or ref.registry in allowed or ref.hostname in allowed:
        return "http"
    return "https"
