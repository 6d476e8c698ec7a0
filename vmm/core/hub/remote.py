"""A model's plan inputs read from the Hub without downloading its weights.

What is read, for ``org/name[:QUANT][@REV]`` at the commit the revision resolves to:

- the file list with sizes (``fetch_snapshot``: one metadata call);
- ``config.json`` and ``tokenizer_config.json`` (whole; small);
- safetensors: each weight file's 8-byte header length and JSON header by HTTP Range, as
  huggingface_hub 2.4.0 ``HfApi.get_safetensors_metadata`` does (``hf_api.py``: a first
  ``Range: bytes=0-100000``, then ``bytes=8-{length+7}`` only when the header is longer);
  sharded checkpoints: the index, then every shard's header, in parallel;
- GGUF: the first bytes of the chosen quantization's file(s) by Range, 1 MiB then x4 until the
  header, key/values and tensor infos parse (never the tensor data).

The same parsers as for local files do the reading (``weights.parse_safetensors_header``,
``gguf_meta.parse_gguf_prefix``). Requests go to ``{endpoint}/{repo}/resolve/{commit}/{path}``;
the HTTP is the transfer engine's (``connection.fetch_range``): redirects (LFS files go to a
CDN) followed by hand, the token sent only to the endpoint's own host, as pull does.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

from vmm.core import jsonfile, names, settings
from vmm.core.errors import IntegrityError, NotFoundError, RemoteError, UsageError, VmmError
from vmm.core.hub import connection
from vmm.core.hub.client import RemoteFile, fetch_snapshot
from vmm.core.model import config as config_mod
from vmm.core.model import formats, gguf_meta, weights

# huggingface_hub 2.4.0 get_safetensors_metadata reads 100 kB first ("97% of safetensors
# files have a metadata size < 100kb"); a second request only for longer headers.
SAFETENSORS_FIRST_READ = 100_001
GGUF_FIRST_READ = 1 << 20          # a vocabulary of 150k tokens needs ~3-4 MiB: x4 as needed
GGUF_GROWTH = 4                    # each retry re-parses from the start: few, larger steps
GGUF_MAX_READ = 256 << 20
PARALLEL_REQUESTS = 8
TIMEOUT_S = 30.0
ATTEMPTS = 3
BACKOFF_S = 0.2


@dataclass
class GgufVariant:
    quant: str
    files: list[str]
    size_bytes: int


@dataclass
class RemoteModel:
    """What a plan needs, read from the Hub."""

    repo_id: str
    revision: str                       # what was asked for
    commit: str
    endpoint: str
    cfg: config_mod.ModelConfig
    weights: weights.WeightSummary
    fmt: str                            # safetensors, pytorch, gguf
    weight_files: list[str]
    quant: str | None
    repo_bytes: int                     # every file of the commit
    selected_bytes: int                 # what `vmm pull` would fetch
    bytes_read: int = 0                 # bytes this plan read from the Hub (bodies)
    requests: int = 0
    gguf_variants: list[GgufVariant] = field(default_factory=list)

    def document(self) -> dict:
        return {"repo": self.repo_id, "revision": self.revision, "commit": self.commit,
                "endpoint": self.endpoint, "format": self.fmt, "quant": self.quant,
                "weight_files": self.weight_files, "repo_bytes": self.repo_bytes,
                "selected_bytes": self.selected_bytes, "bytes_read": self.bytes_read,
                "requests": self.requests,
                "gguf_variants": [{"quant": v.quant, "size_bytes": v.size_bytes} for v in self.gguf_variants]}


class RangeReader:
    """Byte ranges of one commit's files; counts what it read. Thread-safe (connections per call).

    The HTTP is the transfer engine's (:func:`vmm.core.hub.connection.fetch_range`): the same
    redirect handling, the token only to the endpoint's host, the same retryable failures.
    """

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | None,
                 sizes: dict[str, int]) -> None:
        self.repo_id, self.commit, self.endpoint, self.token = repo_id, commit, endpoint.rstrip("/"), token
        self.endpoint_host = connection.host_key(self.endpoint)
        self.sizes = sizes                  # path -> size from the snapshot: ranges never pass the end
        self.bytes_read = 0
        self.requests = 0
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return (f"{self.endpoint}/{quote(self.repo_id, safe='/')}/resolve/"
                f"{quote(self.commit, safe='')}/{quote(path, safe='/')}")

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of ``path`` (``end=None``: to the end of the file)."""
        size = self.sizes[path]
        end = size if end is None else min(end, size)
        if end <= start:
            return b""
        label = f"{self.repo_id}/{path}"
        req = connection.RangeRequest(self.url(path), start, end, label, whole_file=(start == 0 and end == size))
        last = ""
        for attempt in range(ATTEMPTS):
            parts: list[bytes] = []
            conns = connection.Connections(TIMEOUT_S)
            try:
                connection.fetch_range(conns, req, (self.endpoint_host, self.token),
                                       bytearray(min(end - start, 1 << 20)),
                                       lambda view: parts.append(bytes(view)), threading.Event())
            except connection.Retry as exc:
                last = exc.why
                time.sleep(min(exc.delay or BACKOFF_S * 2 ** attempt, 5.0))
                continue
            finally:
                conns.close()
            body = b"".join(parts)
            with self._lock:
                self.bytes_read += len(body)
                self.requests += 1
            return body
        raise RemoteError("cannot reach the Hub", f"{label}: {last}",
                          "check the network or HF_ENDPOINT, then run the same command again")


def _json_file(reader: RangeReader, path: str) -> dict:
    raw = reader.read(path)
    try:
        doc = jsonfile.loads(raw)          # nesting bounded, as for files on disk
    except ValueError:
        raise IntegrityError("malformed JSON on the Hub", f"{reader.repo_id}/{path}", "check the repo") from None
    if not isinstance(doc, dict):
        raise IntegrityError("malformed JSON on the Hub (not an object)", f"{reader.repo_id}/{path}",
                             "check the repo")
    return doc


def safetensors_header(reader: RangeReader, rf: RemoteFile) -> dict:
    """One file's validated header: 100 kB first, the rest only when the header is longer."""
    name = f"{reader.repo_id}/{rf.path}"
    first = reader.read(rf.path, 0, min(rf.size, SAFETENSORS_FIRST_READ))
    length = weights.safetensors_header_length(first, rf.size, name)
    raw = first[8:8 + length] if len(first) >= 8 + length else reader.read(rf.path, 8, 8 + length)
    return weights.parse_safetensors_header(raw, rf.size, name)


def gguf_header(reader: RangeReader, rf: RemoteFile, tensors: bool = True) -> gguf_meta.GgufInfo:
    """Header and tensor infos of one GGUF file from a prefix that doubles until it parses."""
    want = min(rf.size, GGUF_FIRST_READ)
    data = b""
    while True:
        if want > len(data):
            data += reader.read(rf.path, len(data), want)
        try:
            return gguf_meta.parse_gguf_prefix(data, rf.size, rf.path, tensors)
        except gguf_meta.GgufPrefixTooShort:
            if want >= min(rf.size, GGUF_MAX_READ):
                raise IntegrityError("GGUF header too long to plan from", f"{reader.repo_id}/{rf.path}",
                                     f"headers over {GGUF_MAX_READ >> 20} MiB are not read; pull it") from None
            want = min(rf.size, GGUF_MAX_READ, want * GGUF_GROWTH)


def _parallel(fn, items):
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(items))) as pool:
        return list(pool.map(fn, items))


def _gguf_variants(files: list[RemoteFile]) -> list[GgufVariant]:
    by_quant: dict[str, GgufVariant] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf"):
            continue
        quant = formats.gguf_quant_of(f.path) or f.path
        v = by_quant.setdefault(quant, GgufVariant(quant, [], 0))
        v.files.append(f.path)
        v.size_bytes += f.size
    return sorted(by_quant.values(), key=lambda v: v.size_bytes)


def _weights_safetensors(reader: RangeReader, by_path: dict[str, RemoteFile], selected: list[RemoteFile]):
    index = formats.SAFETENSORS_INDEX if formats.SAFETENSORS_INDEX in by_path else None
    if index:
        doc = _json_file(reader, index)
        wm = doc.get("weight_map")
        if not isinstance(wm, dict):
            raise IntegrityError("index without weight_map", f"{reader.repo_id}/{index}", "check the repo")
        shard_names = sorted(set(str(v) for v in wm.values()))
        missing = [s for s in shard_names if s not in by_path]
        if missing:
            raise IntegrityError("the index names shards the repo lacks", f"{reader.repo_id}: {', '.join(missing[:3])}",
                                 "check the repo or pick another revision")
    else:
        shard_names = [f.path for f in selected if f.path.endswith(".safetensors") and "/" not in f.path]
    headers = _parallel(lambda p: safetensors_header(reader, by_path[p]), shard_names)
    return weights.sum_safetensors_headers(headers), shard_names


def _weights_gguf(reader: RangeReader, selected: list[RemoteFile]):
    ggufs = [f for f in selected if f.path.lower().endswith(".gguf")]
    parts = sorted(ggufs, key=lambda f: (formats.gguf_split_of(f.path) or (1, 1))[0])
    infos = _parallel(lambda f: gguf_header(reader, f), parts)
    params, nbytes = 0, 0
    for info in infos:
        for t in info.tensors:
            params += t.n_elements
            nbytes += t.n_bytes or 0
    return weights.WeightSummary(params, nbytes, {}, "gguf tensor infos (Hub)"), [f.path for f in parts], infos[0]


def read_remote_model(name: str, revision: str | None = None, endpoint: str | None = None,
                      token: str | None = None) -> RemoteModel:
    """Config and weight sizes of a Hub model, from metadata and headers only."""
    from vmm.core.hub.pull import select_files

    if settings.offline():
        raise RemoteError("planning from the Hub needs the network", name,
                          "unset HF_HUB_OFFLINE, or pull the model first")
    ref = names.parse_model_name(name)
    if revision and ref.revision and revision != ref.revision:
        raise UsageError("two revisions given", f"{ref.revision} and {revision}", "give one")
    endpoint = (endpoint or settings.hub_endpoint()).rstrip("/")
    token = token if token is not None else settings.hub_token()
    want = revision or ref.revision or "main"
    snapshot = fetch_snapshot(ref.repo_id, want, endpoint=endpoint, token=token)
    selected, quant = select_files(snapshot.files, ref.quant, repo_id=ref.repo_id)
    by_path = {f.path: f for f in snapshot.files}
    reader = RangeReader(ref.repo_id, snapshot.commit, endpoint, token, {f.path: f.size for f in snapshot.files})
    fmt = formats.format_from_names([f.path for f in selected])
    variants = _gguf_variants(snapshot.files)
    try:
        if fmt == "gguf" or (fmt == "mixed" and quant):
            fmt = "gguf"
            weights, weight_files, info = _weights_gguf(reader, selected)
            cfg = config_mod.config_from_info(info)
        elif fmt in ("safetensors", "mixed") and any(f.path.endswith(".safetensors") for f in selected):
            fmt = "safetensors"
            with ThreadPoolExecutor(max_workers=1) as pool:      # the configs while the headers come
                pending = pool.submit(_remote_config, reader, by_path)
                weights, weight_files = _weights_safetensors(reader, by_path, selected)
                cfg = pending.result()
        elif fmt == "pytorch":
            cfg = _remote_config(reader, by_path)
            weight_files = [f.path for f in selected if formats.is_pytorch_weight(f.path.rsplit("/", 1)[-1])]
            total = None
            if formats.PYTORCH_INDEX in by_path:
                meta = _json_file(reader, formats.PYTORCH_INDEX).get("metadata")
                total = meta.get("total_size") if isinstance(meta, dict) else None
            if not isinstance(total, int):
                total = sum(by_path[p].size for p in weight_files)
            weights = weights.WeightSummary(None, total, {}, "index total_size (Hub)")
        else:
            raise IncompatibleWeights(ref.repo_id, snapshot.commit)
    except VmmError:
        raise
    except (ValueError, KeyError) as exc:
        raise RemoteError("the Hub sent something vmm cannot read", f"{ref.repo_id}: {exc}",
                          "check HF_ENDPOINT points at a Hugging Face-compatible server") from exc
    return RemoteModel(
        repo_id=ref.repo_id, revision=want, commit=snapshot.commit, endpoint=endpoint, cfg=cfg,
        weights=weights, fmt=fmt, weight_files=weight_files, quant=quant,
        repo_bytes=sum(f.size for f in snapshot.files), selected_bytes=sum(f.size for f in selected),
        bytes_read=reader.bytes_read, requests=reader.requests, gguf_variants=variants)


class IncompatibleWeights(NotFoundError):
    def __init__(self, repo_id: str, commit: str) -> None:
        super().__init__("no weights vmm can size in the repo", f"{repo_id}@{commit[:12]}",
                         "vmm plans safetensors, pytorch and GGUF checkpoints")


def _remote_config(reader: RangeReader, by_path: dict[str, RemoteFile]) -> config_mod.ModelConfig:
    if "config.json" not in by_path:
        raise NotFoundError("no config.json in the repo", reader.repo_id, "is this a model repo?")
    # The same three files read_model_config reads on disk (ModelOpt checkpoints keep their
    # quantization in hf_quant_config.json).
    names_ = ["config.json"] + [n for n in ("tokenizer_config.json", "hf_quant_config.json") if n in by_path]
    docs = dict(zip(names_, _parallel(lambda p: _json_file(reader, p), names_)))
    return config_mod.from_config_dict(docs["config.json"], docs.get("tokenizer_config.json"),
                                       source="config.json (Hub)", hf_quant=docs.get("hf_quant_config.json"),
                                       where=f"{reader.repo_id}/config.json (Hub)")
