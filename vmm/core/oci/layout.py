"""OCI image layouts on disk: a directory or a tar of one (opencontainers/image-spec
``image-layout.md`` v1.1.0): ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``),
``index.json`` (an image index naming the manifest, ``org.opencontainers.image.ref.name``
for its tag) and ``blobs/sha256/<hex>``. ``skopeo copy oci:DIR docker://...`` reads the
directory form; the tar holds the same entries at its top level (what ``oci-archive:`` reads).

Reading never trusts a blob's name: every blob a model needs is hashed as it is installed
(:mod:`vmm.core.oci.install`), and the manifest and config are hashed before they are parsed.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError, NotFoundError, UsageError
from vmm.core.fsutil import atomic_write_bytes
from vmm.core.oci import artifact as art
from vmm.core.store.dedup import link_or_copy

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_DOC = b'{"imageLayoutVersion":"1.0.0"}'
COPY_BLOCK = 8 << 20


def _index(a: art.Artifact, tag: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": art.OCI_INDEX, "manifests": [{
        "mediaType": art.OCI_MANIFEST, "artifactType": art.ARTIFACT_TYPE, "digest": a.manifest_digest,
        "size": len(a.manifest), "annotations": {art.ANN_REF_NAME: tag}}]},
        sort_keys=True, separators=(",", ":")).encode()


def write_dir(target: Path, a: art.Artifact, sources: dict[str, Path], tag: str) -> None:
    """The layout of ``a`` in the directory ``target`` (absent or empty); file blobs are
    hardlinked from the model when on the same filesystem, else copied."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError("the export target exists and is not an empty directory", str(target),
                         "name a new directory or a FILE.tar")
    blobs = target / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for f in a.files:
        dst = blobs / f.hex
        if not dst.exists():
            link_or_copy(sources[f.path], dst)
    atomic_write_bytes(blobs / a.config_digest[7:], a.config)
    atomic_write_bytes(blobs / a.manifest_digest[7:], a.manifest)
    atomic_write_bytes(target / LAYOUT_FILE, LAYOUT_DOC)
    atomic_write_bytes(target / INDEX_FILE, _index(a, tag))     # last: the layout is complete


def write_tar(target: Path, a: art.Artifact, sources: dict[str, Path], tag: str) -> None:
    """The same layout as one uncompressed tar, written to a temporary name and renamed."""
    if target.is_dir():
        raise UsageError("the export target is a directory", str(target), "name a FILE.tar or a new directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    import io

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))

    try:
        with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, LAYOUT_FILE, LAYOUT_DOC)
            add_bytes(tar, INDEX_FILE, _index(a, tag))
            add_bytes(tar, f"blobs/sha256/{a.manifest_digest[7:]}", a.manifest)
            add_bytes(tar, f"blobs/sha256/{a.config_digest[7:]}", a.config)
            done: set[str] = set()
            for f in a.files:
                if f.digest in done:
                    continue
                done.add(f.digest)
                info = tarfile.TarInfo(f"blobs/sha256/{f.hex}")
                info.size, info.mode, info.mtime = f.size, 0o644, 0
                with open(sources[f.path], "rb") as handle:
                    tar.addfile(info, handle)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Layout:
    """An OCI layout to read from: a directory or a tar file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self._tar = tarfile.open(path, mode="r:")
                self._members = {m.name.lstrip("./") if m.name.startswith("./") else m.name: m
                                 for m in self._tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError) as exc:
                raise IntegrityError("cannot read the OCI archive", str(path), f"{exc}; is it a tar?") from exc
        self.kind = "oci-archive" if self._tar is not None else "oci-layout"

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def _open(self, name: str):
        if self._tar is None:
            try:
                return open(self.path / name, "rb")
            except FileNotFoundError:
                raise NotFoundError("missing from the OCI layout", f"{self.path}/{name}",
                                    "the layout is incomplete: export or copy it again") from None
        member = self._members.get(name)
        if member is None:
            raise NotFoundError("missing from the OCI archive", f"{self.path}: {name}",
                                "the archive is incomplete: export it again")
        return self._tar.extractfile(member)

    def _open_blob(self, hex_digest: str):
        """A file object of its own for one blob (workers read in parallel: a tar member is
        read through a fresh handle on the archive at the member's data offset)."""
        name = f"blobs/sha256/{hex_digest}"
        if self._tar is None:
            return self._open(name)
        member = self._members.get(name)
        if member is None or member.sparse is not None:
            return self._open(name)
        return _Window(open(self.path, "rb"), member.offset_data, member.size)

    def read_small(self, name: str, limit: int = art.MAX_MANIFEST_BYTES) -> bytes:
        with self._open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise IntegrityError("file too large for an OCI layout document", f"{self.path}: {name}",
                                 "not an OCI layout vmm reads")
        return data

    def blob_bytes(self, digest: str, size: int | None = None) -> bytes:
        data = self.read_small(f"blobs/sha256/{digest[7:]}")
        if art.digest_of(data) != digest or (size is not None and len(data) != size):
            raise IntegrityError("a blob does not match its digest", f"{self.path}: {digest}",
                                 "the layout is damaged; nothing was installed")
        return data

    def manifest(self, tag: str | None) -> tuple[bytes, str]:
        """(manifest bytes, its digest) of the one image of ``index.json`` (or the one tagged ``tag``)."""
        try:
            index = jsonfile.loads(self.read_small(INDEX_FILE))
            entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
        except (ValueError, AttributeError) as exc:
            raise IntegrityError("index.json is not an image index", str(self.path), "the layout is damaged") from exc
        if tag is not None:
            entries = [m for m in entries if (m.get("annotations") or {}).get(art.ANN_REF_NAME) == tag]
        if len(entries) != 1:
            tags = ", ".join(str((m.get("annotations") or {}).get(art.ANN_REF_NAME)) for m in entries) or "none"
            raise UsageError(f"the layout holds {len(entries)} matching images", f"{self.path} (tags: {tags})",
                             "name one with --tag")
        entry = entries[0]
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise IntegrityError("index.json names a malformed digest", str(self.path), "the layout is damaged")
        return self.blob_bytes(digest, size if isinstance(size, int) else None), digest

    def fetcher(self) -> Callable:
        """The install ``fetch`` reading blobs from this layout."""

        def fetch(layer: art.LayerFile, start: int, end: int, sink, restart) -> None:
            with self._open_blob(layer.hex) as handle:
                handle.seek(start)
                # The last piece reads one byte more: a blob longer than its layer is caught.
                remaining = end - start + (1 if end == layer.size else 0)
                while remaining > 0:
                    chunk = handle.read(min(COPY_BLOCK, remaining))
                    if not chunk:
                        break
                    sink(memoryview(chunk))
                    remaining -= len(chunk)
            if remaining > (1 if end == layer.size else 0):
                raise IntegrityError("a blob is shorter than its layer's size", f"{self.path}: {layer.path} "
                                     f"({layer.digest})", "the layout is damaged; nothing was installed")

        return fetch


class _Window:
    """Bytes [offset, offset + size) of a file, as a read-only file object."""

    def __init__(self, handle, offset: int, size: int) -> None:
        self.handle, self.offset, self.size, self.pos = handle, offset, size, 0

    def seek(self, pos: int) -> None:
        self.pos = max(0, min(pos, self.size))

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self.pos))
        self.handle.seek(self.offset + self.pos)
        data = self.handle.read(n)
        self.pos += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.handle.close()


def is_layout(path: Path) -> bool:
    """A directory holding ``oci-layout``, or a tar file whose members include it."""
    if path.is_dir():
        return (path / LAYOUT_FILE).is_file()
    if path.is_file():
        try:
            if not tarfile.is_tarfile(path):
                return False
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    if member.name in (LAYOUT_FILE, f"./{LAYOUT_FILE}"):
                        return True
        except (tarfile.TarError, OSError):
            return False
    return False


def remove_partial_export(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
