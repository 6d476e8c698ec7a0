"""HTTP header names vmm sends and reads, in one place (as huggingface_hub keeps its own in
``constants.py``): the Hub's ``/resolve/`` answers and CDN redirects (``hub/connection.py``,
``hub/client.py``), and the OCI distribution API (``oci/registry.py``,
opencontainers/distribution-spec ``spec.md``)."""

ACCEPT = "Accept"
ACCEPT_ENCODING = "Accept-Encoding"
AUTHORIZATION = "Authorization"
CONNECTION = "Connection"
CONTENT_LENGTH = "Content-Length"
CONTENT_RANGE = "Content-Range"
CONTENT_TYPE = "Content-Type"
DATE = "Date"                                  # the CDN's clock, for a signed URL's expiry
DOCKER_CONTENT_DIGEST = "Docker-Content-Digest"  # a registry's digest of what it stored
LOCATION = "Location"
RANGE = "Range"
RETRY_AFTER = "Retry-After"
USER_AGENT = "User-Agent"
WWW_AUTHENTICATE = "WWW-Authenticate"          # a registry's token challenge (realm, service, scope)

USER_AGENT_VALUE = "vmm"
