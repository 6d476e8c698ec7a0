"""The artifact format: a vmm model as a CNCF ModelPack model artifact, and back.

Media types and annotation keys are those of the CNCF ModelPack model-spec
(github.com/modelpack/model-spec, ``specs-go/v1/mediatype.go``, ``annotations.go``,
``docs/spec.md``, ``docs/config.md``; read at commit d78bf32, June 2026): an OCI image manifest
(``application/vnd.oci.image.manifest.v1+json``) with ``artifactType``
``application/vnd.cncf.model.manifest.v1+json``, a config blob
``application/vnd.cncf.model.config.v1+json`` and one *raw* layer per file
(``application/vnd.cncf.model.weight.v1.raw`` and siblings), so a layer's digest is the
file's own sha256 (the Hub's LFS oid) and nothing is archived or hashed twice. Each layer names
its file with ``org.cncf.model.filepath`` and ``org.opencontainers.image.title`` (the name
CRI-O / containerd give a raw artifact layer when they mount it). docs/oci.md says why
ModelPack and not KitOps' ModelKit (whose layers are tar archives).

vmm's own annotations on the manifest carry the Hub id, revision, commit and vmm's file list
(each file's git blob sha1 too), so a pulled or imported model gets the same manifest it had.
The manifest and config are serialised deterministically: the same model exports the same
digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from vmm.core import jsonfile, names
from vmm.core.errors import IntegrityError, UsageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"
CODE_RAW = "application/vnd.cncf.model.code.v1.raw"
DATASET_RAW = "application/vnd.cncf.model.dataset.v1.raw"
RAW_TYPES = frozenset((WEIGHT_RAW, WEIGHT_CONFIG_RAW, DOC_RAW, CODE_RAW, DATASET_RAW))

ANN_FILEPATH = "org.cncf.model.filepath"
ANN_TITLE = "org.opencontainers.image.title"       # opencontainers/image-spec annotations.md
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CREATED = "org.opencontainers.image.created"
# vmm's own keys (reverse-domain style, as image-spec annotations.md asks).
ANN_HUB_ID = "dev.vmm.hub.id"
ANN_HUB_REVISION = "dev.vmm.hub.revision"
ANN_HUB_COMMIT = "dev.vmm.hub.commit"
ANN_HUB_QUANT = "dev.vmm.hub.quant"
ANN_VMM_MANIFEST = "dev.vmm.manifest+json"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024   # distribution's own limit for a manifest body
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".npz")
_CODE_SUFFIXES = (".py", ".sh", ".ipynb")
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "use_policy", "responsible_use")


def digest_of(data: bytes) -> str:
    """The OCI digest of a blob held in memory (a manifest, a config): ``sha256:<hex>``."""
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class LayerFile:
    path: str
    size: int
    digest: str              # "sha256:<hex>"
    media_type: str
    git_sha1: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass
class Artifact:
    """A model artifact: its manifest and config as bytes (what is pushed and hashed) and its files."""

    manifest: bytes
    config: bytes
    files: list[LayerFile]
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    quant: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    def blobs(self) -> list[tuple[str, int]]:
        """(digest, size) of every blob the manifest names, config first, each once."""
        seen: dict[str, int] = {self.config_digest: len(self.config)}
        for f in self.files:
            seen.setdefault(f.digest, f.size)
        return list(seen.items())


def media_type_for(path: str) -> str:
    """Which ModelPack raw type a file is: weights, docs, code, else weight config."""
    base = path.rsplit("/", 1)[-1].lower()
    if base.endswith(_WEIGHT_SUFFIXES):
        return WEIGHT_RAW
    if base.endswith(".md") or base.startswith(_DOC_PREFIXES):
        return DOC_RAW
    if base.endswith(_CODE_SUFFIXES):
        return CODE_RAW
    return WEIGHT_CONFIG_RAW


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build(repo_id: str, revision: str | None, commit: str | None, quant: str | None,
          files: list[LayerFile], model_format: str | None, created: str | None) -> Artifact:
    """The artifact of a model whose files (with their sha256 digests) are ``files``."""
    files = sorted(files, key=lambda f: f.path)
    config_doc = {
        "descriptor": {k: v for k, v in (("name", repo_id), ("revision", commit), ("createdAt", created)) if v},
        "config": {"format": model_format} if model_format and model_format not in ("unknown", "mixed") else {},
        "modelfs": {"type": "layers", "diffIds": [f.digest for f in files]},
    }
    config = _dumps(config_doc)
    vmm_manifest = {"repo_id": repo_id, "revision": revision, "commit": commit, "quant": quant,
                    "files": [{"path": f.path, "size": f.size, "sha256": f.hex, "git_sha1": f.git_sha1}
                              for f in files]}
    annotations = {ANN_HUB_ID: repo_id, ANN_VMM_MANIFEST: _dumps(vmm_manifest).decode()}
    for key, value in ((ANN_HUB_REVISION, revision), (ANN_HUB_COMMIT, commit), (ANN_HUB_QUANT, quant),
                       (ANN_CREATED, created)):
        if value:
            annotations[key] = value
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest_of(config),
                   "size": len(config)},
        "layers": [{"mediaType": f.media_type, "digest": f.digest, "size": f.size,
                    "annotations": {ANN_FILEPATH: f.path, ANN_TITLE: f.path}} for f in files],
        "annotations": annotations,
    }
    return Artifact(_dumps(manifest_doc), config, files, repo_id, revision, commit, quant, annotations)


def _not_model(where: str, why: str) -> UsageError:
    return UsageError(f"not a model artifact ({why})", where,
                      "vmm pulls and imports CNCF ModelPack model artifacts with raw layers, as `vmm push` / "
                      "`vmm export` write them (docs/oci.md)")


def parse(manifest: bytes, where: str, content_type: str | None = None) -> Artifact:
    """Read a manifest as a model artifact; exit 2 for anything that is not one, exit 5 for
    a manifest that is malformed or names an unsafe file path."""
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise IntegrityError("manifest too large", where, f"over {MAX_MANIFEST_BYTES} bytes; not a model artifact")
    try:
        doc = jsonfile.loads(manifest)
    except ValueError as exc:
        raise IntegrityError("manifest is not JSON", where, "the registry or layout is damaged") from exc
    if not isinstance(doc, dict):
        raise IntegrityError("manifest is not a JSON object", where, "the registry or layout is damaged")
    media_type = doc.get("mediaType") or content_type
    if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
        raise _not_model(where, "an image index, not one manifest")
    if media_type not in (OCI_MANIFEST, None) or doc.get("schemaVersion") != 2:
        raise _not_model(where, f"manifest media type {media_type!r}")
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    if doc.get("artifactType") != ARTIFACT_TYPE and config.get("mediaType") != CONFIG_TYPE:
        raise _not_model(where, f"artifactType {doc.get('artifactType')!r}, config {config.get('mediaType')!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _not_model(where, "no layers")
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    annotations = {str(k): str(v) for k, v in annotations.items()}
    sha1s = _vmm_sha1s(annotations)
    files: list[LayerFile] = []
    seen: set[str] = set()
    for layer in layers:
        if not isinstance(layer, dict):
            raise IntegrityError("malformed layer in the manifest", where, "the registry or layout is damaged")
        ann = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
        path = ann.get(ANN_FILEPATH) or ann.get(ANN_TITLE)
        mtype, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
        if mtype not in RAW_TYPES:
            raise _not_model(where, f"layer media type {mtype!r}: only raw (untarred) layers are installed")
        if not isinstance(digest, str) or not _DIGEST.match(digest) or not isinstance(size, int) or size < 0:
            raise IntegrityError("malformed layer descriptor (digest or size)", where, "the registry or layout is damaged")
        if not isinstance(path, str):
            raise _not_model(where, f"layer {digest[:19]} names no file ({ANN_FILEPATH})")
        _safe_path(path)
        if path in seen:
            raise IntegrityError("two layers name the same file", f"{where}: {path}", "the artifact is malformed")
        seen.add(path)
        files.append(LayerFile(path, size, digest, mtype, sha1s.get((path, digest[7:], size))))
    cdigest = config.get("digest")
    if not isinstance(cdigest, str) or not _DIGEST.match(cdigest) or not isinstance(config.get("size"), int):
        raise IntegrityError("malformed config descriptor", where, "the registry or layout is damaged")
    art = Artifact(manifest, b"", files, annotations=annotations)
    art.repo_id = annotations.get(ANN_HUB_ID)
    art.revision = annotations.get(ANN_HUB_REVISION)
    art.commit = annotations.get(ANN_HUB_COMMIT)
    art.quant = annotations.get(ANN_HUB_QUANT)
    return art


def config_descriptor(manifest: bytes) -> tuple[str, int]:
    """(digest, size) of the config blob of a manifest :func:`parse` accepted."""
    doc = jsonfile.loads(manifest)
    return doc["config"]["digest"], doc["config"]["size"]


def _safe_path(path: str) -> None:
    from pathlib import Path

    names.safe_repo_path(Path("/"), path)


def _vmm_sha1s(annotations: dict[str, str]) -> dict[tuple[str, str, int], str]:
    """{(path, sha256 hex, size): git sha1} from vmm's own file list, when the artifact has one."""
    raw = annotations.get(ANN_VMM_MANIFEST)
    if not raw:
        return {}
    try:
        doc = jsonfile.loads(raw.encode())
        out = {}
        for f in doc.get("files", []):
            if isinstance(f, dict) and isinstance(f.get("git_sha1"), str):
                out[(f["path"], f["sha256"], f["size"])] = f["git_sha1"]
        return out
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
