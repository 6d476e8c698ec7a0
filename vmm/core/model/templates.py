"""Chat templates: which one vLLM will use, where it comes from, and what it renders.

Resolution, in the order transformers' tokenizer loading applies (transformers 5.24.0,
``tokenization_utils_base.PreTrainedTokenizerBase._from_pretrained``):

1. ``chat_template.jinja`` in the model dir (``CHAT_TEMPLATE_FILE``). Its text becomes the
   tokenizer's ``chat_template`` and *replaces* any ``chat_template`` of
   ``tokenizer_config.json`` ("If independent chat template file(s) exist, they take priority
   over template entries in the tokenizer config"). Files under ``additional_chat_templates/``
   (``CHAT_TEMPLATE_DIR``) become further named templates.
2. ``tokenizer_config.json`` ``chat_template``: a string, or a list of ``{name, template}``
   (transformers turns it into a dict; ``get_chat_template`` uses ``default``).
3. GGUF ``tokenizer.chat_template`` metadata (transformers' GGUF tokenizer mapping,
   ``integrations/gguf/gguf_tokenizer_mapping.py``, carries it over as ``chat_template``).
4. A family default shipped with vmm (``vmm/data/<family>.jinja``), chosen by
   :data:`FAMILY_RULES` (:mod:`vmm.core.model.template_families`). vLLM itself has no such fallback for text models (a chat request to
   a model without a template fails), which is why ``setup_chat_template`` writes it into
   the model dir as ``chat_template.jinja`` where vLLM's tokenizer picks it up.

Rendering (bounded in time, memory and output) lives in :mod:`vmm.core.model.template_render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import fsutil, jsonfile
from vmm.core.errors import IntegrityError, UsageError, VmmError
from vmm.core.model.template_render import TemplateProblem, render_sample
from vmm.core.model.template_families import FAMILIES, choose_family, family_template
from vmm.core.store import local, locking, manifests, paths

CHAT_TEMPLATE_FILE = "chat_template.jinja"          # transformers utils/hub.py CHAT_TEMPLATE_FILE
CHAT_TEMPLATE_DIR = "additional_chat_templates"     # transformers utils/hub.py CHAT_TEMPLATE_DIR
TOKENIZER_CONFIG = "tokenizer_config.json"
ORIGINAL_KEPT = f"{paths.META_DIR}/{CHAT_TEMPLATE_FILE}.orig"   # an original replaced by --set
RECORD_FILE = f"{paths.META_DIR}/chat_template.json"           # the record for dirs without manifest
MANIFEST_KEY = "chat_template"                                  # Manifest.extra key of the record

SOURCES = ("chat_template.jinja", "tokenizer_config.json", "gguf", "family")


# --------------------------------------------------------------------------- tokenizer files

def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    from vmm.core.model import config as config_mod

    return config_mod.load_json_file(path)


@dataclass
class TokenizerInfo:
    chat_template: str | None = None
    named_templates: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str | None] = field(default_factory=dict)


def read_tokenizer_config(model_path: Path) -> TokenizerInfo | None:
    """chat_template and special tokens from tokenizer_config.json; None when absent."""
    path = model_path / TOKENIZER_CONFIG
    if not path.is_file():
        return None
    doc = _read_json(path)
    result = TokenizerInfo()
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        result.tokens[key] = _token_text(doc.get(key))
    raw = doc.get("chat_template")
    if isinstance(raw, str):
        result.chat_template = raw
    elif isinstance(raw, list):
        for entry in raw:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise IntegrityError("malformed chat_template list (entries need name and template)",
                                     str(path), "fix the file, or set a template with `vmm template NAME --set`")
            result.named_templates[entry["name"]] = entry["template"]
        result.chat_template = result.named_templates.get("default")
    elif raw is not None:
        raise IntegrityError("malformed chat_template (neither a string nor a list)", str(path),
                             "fix the file, or set a template with `vmm template NAME --set`")
    return result


# --------------------------------------------------------------------------- the record of what vmm wrote

def read_record(model_path: Path) -> dict[str, Any] | None:
    """What vmm wrote as chat_template.jinja (manifest extra, else .vmm/chat_template.json)."""
    try:
        manifest = manifests.read_manifest(model_path)
    except IntegrityError:
        manifest = None
    if manifest is not None:
        record = manifest.extra.get(MANIFEST_KEY)
        return record if isinstance(record, dict) else None
    try:
        record = jsonfile.loads((model_path / RECORD_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_template_file(target: Path, text: str) -> None:
    """Atomic write; the mode follows the umask (fsutil), so vLLM's user can read it."""
    fsutil.atomic_write_bytes(target, text.encode("utf-8"))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vmm_wrote(record: dict[str, Any] | None, current_text: str | None) -> bool:
    """Whether chat_template.jinja is still the file vmm wrote (a later pull may restore the Hub's)."""
    if not record or record.get("written_by") != "vmm" or current_text is None:
        return False
    recorded = record.get("sha256")
    return recorded is None or recorded == _sha256(current_text)


def _write_record(model_path: Path, record: dict[str, Any]) -> str:
    """Store the record in the manifest when the model has one; returns where it went."""
    def put(manifest: manifests.Manifest | None) -> manifests.Manifest | None:
        if manifest is not None:
            manifest.extra[MANIFEST_KEY] = record
        return manifest

    if manifests.update(model_path, put) is not None:
        return paths.META_DIR + "/" + paths.MANIFEST_NAME
    fsutil.atomic_write_json(model_path / RECORD_FILE, record)
    return RECORD_FILE


# --------------------------------------------------------------------------- resolution

@dataclass
class ResolvedTemplate:
    source: str                      # one of SOURCES
    source_path: str | None          # the file it was read from (relative to the model dir)
    family: str                      # the family vmm detects (the fallback it would use)
    template: str
    tokens: dict[str, str | None]
    named_templates: list[str] = field(default_factory=list)
    written_by_vmm: bool = False     # chat_template.jinja was written by vmm
    notes: list[str] = field(default_factory=list)


def _model_identity(model_path: Path, model_name: str | None, quant: str | None):
    """(model_type, architectures, gguf file or None) without failing on a broken config."""
    from vmm.core.model import config as config_mod
    from vmm.core.model import formats

    gguf_path = None
    notes: list[str] = []
    if formats.find_gguf_files(model_path, read_metadata=False):
        try:
            gguf_path = formats.select_gguf(model_path, quant).path
        except UsageError:
            first = formats.find_gguf_files(model_path)[0]
            gguf_path = first.path
            notes.append(f"several GGUF quantizations; read the template metadata of "
                         f"{first.path.relative_to(model_path).as_posix()}")
        except VmmError:
            gguf_path = None
    model_type, archs = None, []
    try:
        if (model_path / "config.json").is_file():
            cfg = config_mod.read_model_config(model_path)
        elif gguf_path is not None:
            cfg = config_mod.config_from_gguf(gguf_path)
        else:
            cfg = None
        if cfg is not None:
            model_type, archs = cfg.model_type, cfg.architectures
    except VmmError as exc:
        notes.append(f"config unreadable ({exc.what}); family chosen by name")
    return model_type, archs, gguf_path, notes


def resolve_template(model_path: Path, model_name: str | None = None,
                     quant: str | None = None) -> ResolvedTemplate:
    """The template vLLM's tokenizer will use, where it comes from, and the special tokens."""
    model_path = Path(model_path)
    model_type, archs, gguf_path, notes = _model_identity(model_path, model_name, quant)
    family = choose_family(model_type, archs, model_name or model_path.name)
    tok = read_tokenizer_config(model_path)
    tokens: dict[str, str | None] = dict(tok.tokens) if tok else {}
    gguf_template = None
    if gguf_path is not None:
        from vmm.core.model import gguf_meta

        gguf_template, bos, eos = gguf_meta.gguf_chat_metadata(gguf_path)
        # A tokenizer_config.json next to the GGUF wins for tokens, as for the template.
        if not tokens.get("bos_token"):
            tokens["bos_token"] = bos
        if not tokens.get("eos_token"):
            tokens["eos_token"] = eos
    record = read_record(model_path)

    named = sorted(tok.named_templates) if tok else []
    extra_dir = model_path / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        named = sorted(set(named) | {p.name.removesuffix(".jinja") for p in extra_dir.glob("*.jinja")})

    jinja_file = model_path / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            text = jinja_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError("cannot read chat template", str(jinja_file), str(exc)) from exc
        written = vmm_wrote(record, text)
        if written and record.get("family") in FAMILIES:
            family = record["family"]
        return ResolvedTemplate("chat_template.jinja", CHAT_TEMPLATE_FILE, family, text,
                                _with_family_tokens(tokens, family), named, written, notes)
    if tok is not None and tok.chat_template is not None:
        return ResolvedTemplate("tokenizer_config.json", TOKENIZER_CONFIG, family, tok.chat_template,
                                _with_family_tokens(tokens, family), named, False, notes)
    if tok is not None and tok.named_templates:
        raise IntegrityError(
            "tokenizer_config.json has named chat templates but none called 'default'",
            f"{model_path / TOKENIZER_CONFIG} (templates: {', '.join(named)})",
            "vLLM cannot pick one: set one with `vmm template NAME --set FILE`")
    if gguf_template:
        return ResolvedTemplate("gguf", gguf_path.relative_to(model_path).as_posix(), family,
                                gguf_template, _with_family_tokens(tokens, family), named, False, notes)
    return ResolvedTemplate("family", f"vmm/data/{FAMILIES[family].file}", family, family_template(family),
                            _with_family_tokens(tokens, family), named, False, notes)


def _with_family_tokens(tokens: dict[str, str | None], family: str) -> dict[str, str | None]:
    """The model's own special tokens; the family's defaults only where it has none."""
    spec = FAMILIES[family]
    out = dict(tokens)
    if not out.get("bos_token") and spec.bos_token:
        out["bos_token"] = spec.bos_token
    if not out.get("eos_token") and spec.eos_token:
        out["eos_token"] = spec.eos_token
    return out


# --------------------------------------------------------------------------- the command

@dataclass
class TemplateResult:
    name: str
    path: str
    source: str
    family: str
    template: str
    rendered: str
    source_path: str | None = None
    system_folded: bool = False
    fold_reason: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    named_templates: list[str] = field(default_factory=list)
    written_by_vmm: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    action: str | None = None        # what --set did


class TemplateLimitError(IntegrityError):
    """A template that exceeds a rendering limit (time, memory, output): exit 5 in
    ``vmm template``, a warning in ``vmm check``."""


def _problem_error(problem: TemplateProblem, where: str) -> IntegrityError:
    hint = "fix the template, or replace it with `vmm template NAME --set FAMILY|FILE`"
    if problem.kind == "limit":
        return TemplateLimitError(f"chat template exceeds a rendering limit ({problem.describe()})", where, hint)
    what = ("chat template has a syntax error" if problem.kind == "syntax"
            else "chat template fails on a plain conversation")
    return IntegrityError(f"{what} ({problem.describe()})", where, hint)


def _where(model_path: Path, resolved: ResolvedTemplate) -> str:
    if resolved.source == "family":
        return f"family template {resolved.family} ({resolved.source_path})"
    if resolved.source == "gguf":
        return f"{model_path / (resolved.source_path or '')} (tokenizer.chat_template)"
    return str(model_path / (resolved.source_path or ""))


def show_template(model_path: Path, model_name: str | None = None, quant: str | None = None,
                  system: str | None = None) -> TemplateResult:
    """``vmm template``: resolve, render the sample, and report (exit 5 on a bad template)."""
    model_path = Path(model_path)
    resolved = resolve_template(model_path, model_name, quant)
    try:
        rendering = render_sample(resolved.template, resolved.tokens, system)
    except TemplateProblem as problem:
        raise _problem_error(problem, _where(model_path, resolved)) from None
    return TemplateResult(
        name=model_name or model_path.name, path=str(model_path), source=resolved.source,
        family=resolved.family, template=resolved.template, rendered=rendering.rendered,
        source_path=resolved.source_path, system_folded=rendering.system_folded,
        fold_reason=rendering.fold_reason, bos_token=resolved.tokens.get("bos_token"),
        eos_token=resolved.tokens.get("eos_token"), named_templates=resolved.named_templates,
        written_by_vmm=resolved.written_by_vmm, messages=rendering.messages, notes=resolved.notes,
    )


# --------------------------------------------------------------------------- writing templates

@dataclass
class SetupResult:
    action: str                  # "kept" (the model has its own) or "written"
    source: str                  # where the template vLLM will use comes from
    family: str
    path: str | None = None      # the file written
    recorded_in: str | None = None


def setup_chat_template(model_path: Path, model_name: str | None = None) -> SetupResult:
    """The original design's core function (docs/architecture.md): give a model without a template of its own its family's.

    A model's own template (chat_template.jinja, tokenizer_config.json, GGUF metadata) is
    kept untouched. Otherwise the family template is written to ``chat_template.jinja``
    (temporary name, fsync, rename) and the manifest records that vmm wrote it. The caller
    holds the model's lock (pull calls this at its end).
    """
    model_path = Path(model_path)
    resolved = resolve_template(model_path, model_name)
    if resolved.source != "family":
        return SetupResult("kept", resolved.source, resolved.family, resolved.source_path)
    target = model_path / CHAT_TEMPLATE_FILE
    _write_template_file(target, resolved.template)
    where = _write_record(model_path, {"written_by": "vmm", "family": resolved.family,
                                       "from": "family default", "original": None,
                                       "sha256": _sha256(resolved.template)})
    return SetupResult("written", "chat_template.jinja", resolved.family, CHAT_TEMPLATE_FILE, where)


def operator_template(model_path: Path) -> str | None:
    """The text of a ``chat_template.jinja`` that ``vmm template --set`` put in place of the
    repo's own (the Hub's original was moved to ``.vmm/``), or None. A pull that repairs or
    updates the model would otherwise restore the Hub's file over the operator's choice."""
    record = read_record(model_path)
    if not record or record.get("written_by") != "vmm" or not record.get("original"):
        return None
    target = model_path / CHAT_TEMPLATE_FILE
    try:
        current = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return current if vmm_wrote(record, current) else None


def after_pull(model_path: Path, model_name: str, operator_text: str | None) -> SetupResult:
    """Pull's last step, under the model lock: keep the operator's ``--set`` template (the
    freshly pulled original goes to ``.vmm/``), then give a model without a template of its
    own its family's (the design's download lifecycle: pull sets up the chat template)."""
    target = model_path / CHAT_TEMPLATE_FILE
    if operator_text is not None:
        try:
            current = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != operator_text:
            if current is not None:
                kept = model_path / ORIGINAL_KEPT
                kept.parent.mkdir(parents=True, exist_ok=True)
                target.replace(kept)
            _write_template_file(target, operator_text)
    return setup_chat_template(model_path, model_name)


def set_template(model_path: Path, value: str, model_name: str | None = None) -> SetupResult:
    """``vmm template NAME --set FAMILY|FILE``: write ``chat_template.jinja`` for vLLM.

    The new template must render the sample conversation (exit 5 otherwise, nothing
    written). An original ``chat_template.jinja`` that vmm did not write is moved to
    ``.vmm/chat_template.jinja.orig`` (hidden from transformers, which only reads the top
    level) and recorded; a ``chat_template`` in tokenizer_config.json stays untouched and is
    overridden, since transformers prefers chat_template.jinja over it (5.24.0
    ``_from_pretrained``: the file's text replaces ``init_kwargs["chat_template"]``).
    """
    model_path = Path(model_path)
    if value in FAMILIES:
        text, family, origin = family_template(value), value, f"family {value}"
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError("not a template family or file", value,
                             f"name one of {', '.join(FAMILIES)} or a .jinja file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError("cannot read template file", str(path), str(exc)) from exc
        family, origin = None, str(path.absolute())
    resolved = resolve_template(model_path, model_name)
    tokens = _with_family_tokens(resolved.tokens, family or resolved.family)
    try:
        render_sample(text, tokens)
    except TemplateProblem as problem:
        raise _problem_error(problem, value if family is None else f"family template {family}") from None
    record = read_record(model_path) or {}
    target = model_path / CHAT_TEMPLATE_FILE
    try:
        current = target.read_text(encoding="utf-8") if target.is_file() else None
    except (OSError, UnicodeDecodeError):
        current = ""
    ours = vmm_wrote(record, current)
    original = record.get("original") if record.get("written_by") == "vmm" else None
    overrides = record.get("overrides") if record.get("written_by") == "vmm" else None
    if current is not None and not ours:
        kept = model_path / ORIGINAL_KEPT
        kept.parent.mkdir(parents=True, exist_ok=True)
        target.replace(kept)
        original, overrides = ORIGINAL_KEPT, CHAT_TEMPLATE_FILE
    elif overrides is None and resolved.source in ("tokenizer_config.json", "gguf"):
        overrides = resolved.source
    _write_template_file(target, text)
    where = _write_record(model_path, {"written_by": "vmm", "family": family, "from": origin,
                                       "original": original, "overrides": overrides,
                                       "sha256": _sha256(text)})
    return SetupResult("written", "chat_template.jinja", family or resolved.family, CHAT_TEMPLATE_FILE, where)


def template_command(model: local.LocalModel, root: Path, quant: str | None = None,
                     system: str | None = None, set_value: str | None = None) -> TemplateResult:
    """``vmm template``: optionally ``--set`` (under the model's lock), then show."""
    action = None
    if set_value is not None:
        if model.path.parent == Path(root).absolute():
            with locking.model_lock(Path(root), model.path.name, "template --set"):
                done = set_template(model.path, set_value, model.name)
        else:
            done = set_template(model.path, set_value, model.name)
        action = f"wrote {done.path} ({'family ' + set_value if set_value in FAMILIES else set_value})"
    result = show_template(model.path, model.name, quant, system)
    result.action = action
    return result

