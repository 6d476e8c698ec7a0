"""``vmm check``: will vLLM load this model, intact? A checklist of pass / warn / fail.

Checks, in order: ``integrity`` (every file against the manifest: sha256 for LFS files, git
blob sha1 for the others; sizes only with ``fast``; a hand-made dir gets sizes and headers
and a warning), ``shards`` (index against files), ``weights`` (safetensors headers parse and
match the file sizes; GGUF files open), ``gguf choice`` and ``pickle`` (warnings),
``config`` (fields present and sane), ``security`` (:mod:`vmm.core.model.security`: private
attributes, chat-template names and ``auto_map`` targets that load code or write files outside
the repo, with the CVE named), ``vllm`` (:mod:`vmm.core.serving.compat`), ``template``,
``tool calls`` (:mod:`vmm.core.serving.parsers`: the tool-call / reasoning parsers ``vmm serve``
would pass to the target vLLM; a warning, never a failure, when there is none).

Exit code when something fails (docs/exit-codes.md): 5 when any integrity, format, config,
security or template check fails (the files must be repaired first), else 6 when only vLLM
compatibility fails.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core.model import config as config_mod
from vmm.core.model import formats, security, templates, weights
from vmm.core import hashing
from vmm.core.serving import multinode
from vmm.core.store import local, manifests
from vmm.core.errors import IncompatibleError, IntegrityError, NotFoundError, UsageError, VmmError

@dataclass
class Check:
    name: str
    status: str             # pass | warn | fail
    detail: str
    exit_code: int = 0      # for a failure: the exit code it implies (5 or 6)
    failure: str | None = None   # what the error line says, when shorter than the detail


@dataclass
class CheckReport:
    name: str
    path: str
    ok: bool
    checks: list[Check] = field(default_factory=list)
    exit_code: int = 0
    managed: bool = False
    vllm_version: str | None = None
    fast: bool = False
    # Comparable across hosts (multi-node preflight): equal digests + a passing integrity
    # check = the same files; see vmm.core.serving.multinode.manifest_digest.
    manifest_digest: str | None = None
    commit: str | None = None

    def document(self) -> dict:
        """``check --json``: the contract's ``ok`` and ``checks`` (docs/contract.md), then the rest."""
        return {"ok": self.ok, "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                                          for c in self.checks],
                "name": self.name, "path": self.path, "vllm_version": self.vllm_version,
                "exit_code": self.exit_code, "manifest_digest": self.manifest_digest, "commit": self.commit}

    def error(self) -> VmmError | None:
        """The one error line for a failed check (most specific exit code first)."""
        failed = [c for c in self.checks if c.status == "fail" and c.exit_code == self.exit_code]
        if not failed:
            return None
        first = failed[0]
        more = f" (+{len(failed) - 1} more failed check(s))" if len(failed) > 1 else ""
        cls = IntegrityError if self.exit_code == IntegrityError.exit_code else IncompatibleError
        if first.name == "security":
            hint = ("do not load it with the transformers releases named; remove the keys named from the "
                    "files, or take the model from a source you trust")
        elif cls is IncompatibleError:
            hint = "see the vllm check above: another vLLM version (--vllm-version to judge it) or another model"
        elif self.managed:
            hint = f"see the checklist above; `vmm pull --verify {self.name}` re-downloads damaged or missing files"
        else:
            hint = "see the checklist above; restore or re-download the files named"
        return cls(f"check failed: {first.name}{more}", f"{self.name}: {first.failure or first.detail}", hint)


@dataclass
class FileVerdict:
    path: str
    ok: bool
    problem: str | None = None        # "missing", "size 10 != 12", "sha256 mismatch"
    hashed: bool = False


def _verify_one(model_dir: Path, entry: manifests.ManifestFile, fast: bool, actual_rel: str) -> FileVerdict:
    path = model_dir / actual_rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileVerdict(entry.path, False, "missing")
    except OSError as exc:
        return FileVerdict(entry.path, False, f"unreadable ({exc.strerror or exc})")
    if size != entry.size:
        return FileVerdict(entry.path, False, f"size {size} != {entry.size}")
    algorithm, expected = hashing.expected_digest(entry)
    if fast or algorithm == "size":
        return FileVerdict(entry.path, True)
    try:
        # LFS files: the Hub's lfs.sha256 is the content's; their git blob id is the pointer's.
        ok = hashing.hash_file(path, algorithm, entry.size) == expected
        kind = {"sha256": "sha256", "git-sha1": "git sha1"}[algorithm]
    except OSError as exc:
        return FileVerdict(entry.path, False, f"unreadable ({exc.strerror or exc})")
    return FileVerdict(entry.path, ok, None if ok else f"{kind} mismatch", hashed=True)


def verify_files(model_dir: Path, manifest: manifests.Manifest, fast: bool = False,
                 workers: int | None = None) -> list[FileVerdict]:
    """Every manifest file against its recorded size and hash, in parallel across files."""
    record = templates.read_record(model_dir) or {}
    renamed: dict[str, str] = {}
    current = model_dir / templates.CHAT_TEMPLATE_FILE
    try:
        current_text = current.read_text(encoding="utf-8") if current.is_file() else None
    except (OSError, UnicodeDecodeError):
        current_text = None
    if record.get("original") and templates.vmm_wrote(record, current_text):
        # `vmm template --set` moved the Hub's chat_template.jinja aside: verify the kept original.
        renamed[templates.CHAT_TEMPLATE_FILE] = record["original"]
    entries = manifest.files
    workers = workers or max(2, min(32, (os.cpu_count() or 2) * 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda e: _verify_one(model_dir, e, fast, renamed.get(e.path, e.path)), entries))


# --------------------------------------------------------------------------- the checks

def _integrity(model: local.LocalModel, fast: bool, fmt: str) -> Check:
    manifest = model.manifest
    if manifest is None:
        return Check("integrity", "warn",
                     "no manifest (directory put here by hand): only sizes and headers are checked; "
                     "`vmm pull` records hashes")
    if not manifest.files:
        return Check("integrity", "warn", "the manifest lists no files; nothing to compare")
    verdicts = verify_files(model.path, manifest, fast)
    bad = [v for v in verdicts if not v.ok]
    if bad:
        shown = ", ".join(f"{v.path} ({v.problem})" for v in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        return Check("integrity", "fail",
                     f"{len(bad)} of {len(verdicts)} files do not match the manifest: {shown}{more}; "
                     f"run `vmm pull --verify {model.name}` to repair", IntegrityError.exit_code)
    hashed = sum(v.hashed for v in verdicts)
    total = sum(f.size for f in manifest.files)
    if fast:
        return Check("integrity", "pass", f"{len(verdicts)} files, {total} bytes: sizes match (--fast: hashes not read)")
    unhashed = len(verdicts) - hashed
    if unhashed:
        return Check("integrity", "warn", f"{len(verdicts)} files, {total} bytes: sizes match; "
                     f"{unhashed} have no recorded hash (sizes only)" + (f", {hashed} hashes match" if hashed else ""))
    detail = f"{len(verdicts)} files, {total} bytes: sizes and {hashed} hashes match"
    return Check("integrity", "pass", detail)


def _shards(model_dir: Path, quant: str | None) -> Check:
    try:
        report = formats.shard_report(model_dir, quant)
    except IntegrityError as exc:
        return Check("shards", "fail", f"{exc.what}: {exc.which}", IntegrityError.exit_code)
    if report.missing:
        return Check("shards", "fail", f"{len(report.missing)} shard(s) named by {report.index or 'the split'} "
                     f"are missing: {', '.join(report.missing)}", IntegrityError.exit_code)
    if report.unindexed:
        return Check("shards", "warn", f"not named by {report.index}: {', '.join(report.unindexed)}")
    if report.sharded:
        return Check("shards", "pass", f"{report.shard_count} shards" + (f", all named by {report.index}" if report.index else ""))
    return Check("shards", "pass", "not sharded" if report.shard_count else "no weight shards")


def _gguf_reader_opens(path: Path) -> str | None:
    """Open with gguf-py's own GGUFReader (what vLLM's GGUF loader uses); the error or None."""
    try:
        from gguf import GGUFReader

        GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - GGUFReader fails in many ways on garbage
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _weights(model_dir: Path, fmt: str, quant: str | None, fast: bool) -> list[Check]:
    checks: list[Check] = []
    if fmt == "unknown":
        return [Check("weights", "fail", "no weight files (safetensors, pytorch .bin or GGUF)",
                      IntegrityError.exit_code)]
    problems: list[str] = []
    counted: list[str] = []
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    safetensors = [n for n in names if n.endswith(".safetensors")]
    for name in safetensors:
        try:
            weights.read_safetensors_header(model_dir / name)
        except IntegrityError as exc:
            problems.append(f"{name}: {exc.what}")
    if safetensors:
        counted.append(f"{len(safetensors)} safetensors header(s) parse and match the file sizes")
    gguf_files = formats.find_gguf_files(model_dir) if "gguf" in formats.formats_present(model_dir) else []
    if gguf_files:
        from vmm.core.model import gguf_meta

        chosen = gguf_files
        if quant:
            chosen = [g for g in gguf_files if (g.quant or "").upper() == quant.upper()] or gguf_files
        parts = [p for g in gguf_files for p in g.parts]
        for part in parts:
            try:
                gguf_meta.read_gguf(part, tensors=True)
            except IntegrityError as exc:
                problems.append(f"{part.relative_to(model_dir).as_posix()}: {exc.what}")
        opened = 0
        if not fast:
            targets = [p for g in chosen for p in g.parts]
            with ThreadPoolExecutor(max_workers=max(1, min(4, len(targets)))) as pool:
                for part, err in zip(targets, pool.map(_gguf_reader_opens, targets)):
                    if err:
                        problems.append(f"{part.relative_to(model_dir).as_posix()}: gguf reader: {err}")
                    else:
                        opened += 1
        counted.append(f"{len(parts)} GGUF file(s) parse" + (f", {opened} open with gguf's reader" if opened else ""))
        if len(gguf_files) > 1 and not quant:
            checks.append(Check("gguf choice", "warn",
                                f"several GGUF quantizations ({', '.join(g.quant or g.path.name for g in gguf_files)}) "
                                "and none chosen: name one as NAME:QUANT to serve it"))
    if problems:
        checks.insert(0, Check("weights", "fail", "; ".join(problems), IntegrityError.exit_code))
    else:
        checks.insert(0, Check("weights", "pass", "; ".join(counted) or f"{fmt} weights present"))
    bins = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    if bins:
        checks.append(Check("pickle", "warn",
                            f"{len(bins)} pickled PyTorch file(s) ({bins[0]}{', ...' if len(bins) > 1 else ''}): "
                            "loading a pickle can run arbitrary code; vmm never unpickles them"
                            + ("; vLLM loads the safetensors instead" if safetensors else
                               "; prefer a safetensors revision of the model")))
    return checks


def _raw_config(model_dir: Path) -> dict:
    """config.json's values with a nested text_config's winning, as ModelConfig reads them."""
    try:
        doc = config_mod.load_json_file(model_dir / "config.json")
    except IntegrityError:
        return {}
    text = doc.get("text_config") if isinstance(doc.get("text_config"), dict) else {}
    return {**doc, **{k: v for k, v in text.items() if v is not None}}


def _config(model_dir: Path, fmt: str, quant: str | None) -> tuple[Check, config_mod.ModelConfig | None]:
    try:
        if not (model_dir / "config.json").is_file() and fmt in ("gguf", "mixed"):
            pass

            try:
                cfg = config_mod.config_from_gguf(formats.select_gguf(model_dir, quant).path)
            except UsageError:
                cfg = config_mod.config_from_gguf(formats.find_gguf_files(model_dir)[0].path)
        else:
            cfg = config_mod.read_model_config(model_dir)
    except NotFoundError as exc:
        return Check("config", "fail", f"{exc.what}: {exc.which}", IntegrityError.exit_code), None
    except IntegrityError as exc:
        return Check("config", "fail", f"{exc.what}: {exc.which}", IntegrityError.exit_code), None
    problems: list[str] = []
    warnings: list[str] = []
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    optional = ("num_key_value_heads", "head_dim", "max_position_embeddings", "intermediate_size")
    raw = _raw_config(model_dir) if cfg.source == "config.json" else {}
    for key in required + optional:
        # The raw value first: ModelConfig treats 0 like "absent" (`a or b` chains).
        value = raw[key] if key in raw and raw[key] is not None else getattr(cfg, key)
        if value is None:
            if key in required:
                problems.append(f"{key} missing")
        elif isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key} = {value!r} is not an integer")
        elif value <= 0:
            problems.append(f"{key} = {value} is not positive")
    heads, kv, hidden = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    if heads and heads > 0 and hidden and hidden > 0 and not cfg.head_dim and not cfg.is_mla and hidden % heads:
        problems.append(f"num_attention_heads {heads} does not divide hidden_size {hidden} (and no head_dim)")
    if heads and kv and heads > 0 and kv > 0 and heads % kv:
        problems.append(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    if cfg.max_position_embeddings is None:
        warnings.append("no maximum length (max_position_embeddings or similar): pass --max-model-len")
    if not cfg.architectures:
        warnings.append("no architectures")
    where = cfg.source or "config"
    if problems:
        return Check("config", "fail", f"{where}: " + "; ".join(problems), IntegrityError.exit_code), cfg
    summary = (f"{where}: {', '.join(cfg.architectures) or cfg.model_type or '?'}, hidden {hidden}, "
               f"{cfg.num_hidden_layers} layers, {heads} heads / {cfg.effective_kv_heads} kv heads, "
               f"head dim {cfg.effective_head_dim}")
    if warnings:
        return Check("config", "warn", summary + "; " + "; ".join(warnings)), cfg
    return Check("config", "pass", summary), cfg


def _vllm(cfg: config_mod.ModelConfig | None, name: str, fmt: str, vllm_version: str | None,
          cache_dir: Path | None) -> tuple[Check, str | None]:
    from vmm.core.serving import compat

    if cfg is None:
        return Check("vllm", "warn", "cannot judge vLLM compatibility without a readable config"), None
    report = compat.compat_report(cfg, name, fmt, vllm_version, cache_dir)
    parts = []
    for finding in report.findings:
        text = finding.detail
        if finding.status != "pass" and finding.hint:
            text += f" ({finding.hint})"
        parts.append(text)
    detail = "; ".join(parts) + f" [registry: {report.registry_source}" + \
        "".join(f"; {n}" for n in report.notes) + "]"
    status = report.status
    failure = "; ".join(f"{f.detail} ({f.hint})" if f.hint else f.detail
                        for f in report.findings if f.status == "fail") or None
    return Check("vllm", status, detail, IncompatibleError.exit_code if status == "fail" else 0,
                 failure), report.vllm_version


def _template(model: local.LocalModel, quant: str | None) -> Check:
    try:
        result = templates.show_template(model.path, model.name, quant)
    except templates.TemplateLimitError as exc:
        return Check("template", "warn", f"{exc.what}: {exc.which}; vLLM would hang or fail on chat requests")
    except IntegrityError as exc:
        return Check("template", "fail", f"{exc.what}: {exc.which}", IntegrityError.exit_code)
    if result.source == "family":
        return Check("template", "warn",
                     f"no chat template of its own: vLLM chat requests fail without one; vmm's {result.family} "
                     f"family template would apply (`vmm template {model.name} --set {result.family}` writes it)")
    detail = f"from {result.source_path or result.source}" + (" (written by vmm)" if result.written_by_vmm else "")
    detail += f", family {result.family}; renders the sample conversation"
    if result.system_folded:
        detail += " with the system message folded into the first user turn (no system role)"
    return Check("template", "pass", detail)


def _tool_calls(model: local.LocalModel, cfg: config_mod.ModelConfig | None, quant: str | None,
                vllm_version: str | None, cache_dir: Path | None) -> Check:
    from vmm.core.serving import parsers

    if cfg is None:
        return Check("tool calls", "warn", "cannot judge tool calling without a readable config")
    choice = parsers.choose_for_model(model.path, model.name, cfg.model_type, cfg.architectures,
                                      vllm_version, cache_dir, quant=quant)
    where = f"vLLM {choice.vllm_version} ({choice.registry_source})"
    reasoning = (f"; reasoning parser {choice.reasoning_parser}" if choice.reasoning_parser else "")
    if choice.tool_call_parser:
        return Check("tool calls", "pass", f"tool-call parser {choice.tool_call_parser} with {where}: "
                     f"{choice.tool_why}{reasoning}")
    return Check("tool calls", "warn", f"no tool-call parser with {where}: {choice.tool_why}; requests with "
                 f"tools and tool_choice \"auto\" get HTTP 400{reasoning}")


def _security(model_dir: Path) -> Check:
    """Settings transformers trusts that load code or write files outside the repo (exit 5)."""
    findings = security.scan(model_dir)
    if not findings:
        return Check("security", "pass", "no private config attributes, chat-template names that are paths, "
                                         "or auto_map code from outside the repo")
    shown = "; ".join(f.line() for f in findings[:security.MAX_REPORTED])
    more = f" (+{len(findings) - security.MAX_REPORTED} more)" if len(findings) > security.MAX_REPORTED else ""
    return Check("security", "fail", shown + more, IntegrityError.exit_code, failure=findings[0].line())


def _digest(model: local.LocalModel, expected: str) -> Check:
    """The manifest is the one a plan was made from (operators' readiness: same files, same plan)."""
    actual = multinode.manifest_digest(model.manifest)
    if actual is None:
        return Check("manifest digest", "fail", f"no manifest to compare with {expected} (a directory put here "
                                                "by hand)", IntegrityError.exit_code)
    if actual != expected:
        return Check("manifest digest", "fail", f"{actual}, not the {expected} the plan was made for (other files "
                                                "or another commit on this volume)", IntegrityError.exit_code)
    return Check("manifest digest", "pass", f"{actual}, as the plan expects")


def check_model(model: local.LocalModel, quant: str | None = None, fast: bool = False,
                vllm_version: str | None = None, cache_dir: Path | None = None,
                expect_digest: str | None = None) -> CheckReport:
    """Run every check; never raises for a failed check (the report says), only for bad usage.

    ``expect_digest``: also fail (exit 5) unless the manifest digest is this one."""
    path = model.path
    fmt = formats.detect_format(path)
    checks: list[Check] = [_integrity(model, fast, fmt), _shards(path, quant)]
    if expect_digest is not None:
        checks.insert(1, _digest(model, expect_digest))
    checks.extend(_weights(path, fmt, quant, fast))
    config_check, cfg = _config(path, fmt, quant)
    checks.append(config_check)
    checks.append(_security(path))
    vllm_check, version = _vllm(cfg, model.name, fmt, vllm_version, cache_dir)
    checks.append(vllm_check)
    checks.append(_template(model, quant))
    checks.append(_tool_calls(model, cfg, quant, vllm_version or version, cache_dir))
    codes = {c.exit_code for c in checks if c.status == "fail"}
    exit_code = IntegrityError.exit_code if IntegrityError.exit_code in codes else \
        IncompatibleError.exit_code if codes else 0
    return CheckReport(name=model.name, path=str(path), ok=not codes, checks=checks, exit_code=exit_code,
                       managed=model.manifest is not None, vllm_version=version, fast=fast,
                       manifest_digest=multinode.manifest_digest(model.manifest),
                       commit=model.manifest.commit if model.manifest else None)
