"""Hostile model configs: settings transformers trusts that load code or write files outside the repo.

Read statically (JSON only, nothing imported or run), for ``vmm check``'s ``security`` check.
Each finding names the file, the key and, where one is public, the CVE and the transformers
release that fixed it. vLLM loads configs and tokenizers through transformers, so an older
transformers next to vLLM is exposed whatever vLLM's own version.

The code paths guarded (huggingface/transformers, ``src/transformers/``):

- ``configuration_utils.py``: ``PretrainedConfig.__init__`` sets every key of config.json as an
  attribute of the config object, private (``_``-prefixed) ones included, so config.json can
  overwrite the config's internal state. ``_attn_implementation_internal`` (and the
  ``_experts_implementation_internal`` sibling) select the attention / experts kernel, and a
  value of the form ``org/repo`` makes ``integrations/hub_kernels.py``
  (``load_and_register_kernel``) fetch and run kernel code from that Hub repo, with
  ``trust_remote_code`` off: CVE-2026-4372 (GHSA-29pf-2h5f-8g72), transformers < 5.3.0
  (public advisories as quoted in pydantic/pydantic-ai PR #6310 and bojieli/ai-agent-book
  PR #574).
- ``tokenization_utils_base.py`` (``save_chat_templates``) and ``processing_utils.py``
  (``save_pretrained``): a ``chat_template`` given as a list of ``{"name", "template"}`` in
  tokenizer_config.json becomes a dict, and saving writes each non-default template to
  ``os.path.join(save_directory, "chat_templates", f"{name}.jinja")``: a name with ``../`` or
  an absolute path writes outside the directory. Fixed releases check
  ``Path(template_filepath).resolve().parent != Path(chat_template_dir).resolve()`` and raise
  "Invalid chat template name". CVE-2026-9856, transformers < 5.10.0 (as quoted in
  qmog-ai/gemma4.c issue #1). vLLM itself does not save tokenizers; anything that loads the
  model folder with transformers and saves it (fine-tuning, conversion, `save_pretrained`
  in a pipeline) does.
- ``dynamic_module_utils.py`` (``get_class_from_dynamic_module``): an ``auto_map`` reference
  ``other/repo--module.Class`` loads ``module.py`` from *another* Hub repo (``"--" in
  class_reference``: ``repo_id, class_reference = class_reference.split("--")``), and the
  module file is joined to the repo folder, so an absolute module path is a file anywhere on
  disk. With ``--trust-remote-code`` that code runs. No CVE number: a code path vmm guards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError

# Private keys that transformers itself writes into config.json on save (harmless bookkeeping):
# `_name_or_path` (every save), `_attn_implementation_autoset` (transformers 4.48-4.50),
# `_commit_hash` (some conversions).
BENIGN_PRIVATE_KEYS = frozenset({"_name_or_path", "_attn_implementation_autoset", "_commit_hash"})
KERNEL_KEY = re.compile(r"^_(attn|experts)_implementation(_internal)?$")
CONFIG_FILES = ("config.json",)
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.json", "processor_config.json")
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")
MAX_REPORTED = 5


@dataclass(frozen=True)
class Finding:
    file: str
    what: str
    cve: str | None = None
    fixed_in: str | None = None     # the transformers release that closed it

    def line(self) -> str:
        cve = f" ({self.cve}, transformers < {self.fixed_in})" if self.cve else ""
        return f"{self.file}: {self.what}{cve}"


def _load(path: Path) -> Any:
    try:
        return jsonfile.load_file(path)
    except IntegrityError:
        return None                 # malformed: the config / template checks report it


def _walk(doc: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every key at every depth (sub-configs: text_config, vision_config...)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{where}.{key}" if where else str(key)
            yield here, str(key), value
            yield from _walk(value, here)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _walk(item, f"{where}[{i}]")


def private_attributes(doc: Any, file: str) -> list[Finding]:
    out = []
    for where, key, value in _walk(doc):
        if not key.startswith("_") or key in BENIGN_PRIVATE_KEYS:
            continue
        if KERNEL_KEY.match(key):
            out.append(Finding(file, f"sets {where} = {value!r}: selects the kernel transformers loads, "
                                     "from a Hub repo when it names one, without trust_remote_code",
                               "CVE-2026-4372", "5.3.0"))
        else:
            out.append(Finding(file, f"sets the private attribute {where}: transformers copies config.json "
                                     "keys onto the config object, overriding its internal state"))
    return out


def _unsafe_name(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return True
    return ("/" in name or "\\" in name or "\0" in name or name.startswith(".")
            or bool(re.match(r"^[A-Za-z]:", name)))


def template_names(doc: Any, file: str) -> list[Finding]:
    """``chat_template`` as a list of {"name", "template"} (or a dict): names become file names."""
    if not isinstance(doc, dict):
        return []
    templates = doc.get("chat_template")
    if isinstance(templates, list):
        names = [t.get("name") if isinstance(t, dict) else None for t in templates]
    elif isinstance(templates, dict):
        names = list(templates)
    else:
        return []
    return [Finding(file, f"chat_template name {name!r} is a path, not a name: saving the tokenizer "
                          f"writes chat_templates/{name}.jinja outside the model folder",
                    "CVE-2026-9856", "5.10.0")
            for name in names if _unsafe_name(name)]


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):           # AutoTokenizer: [slow, fast], either may be null
        for item in value:
            if isinstance(item, str):
                yield item


def auto_map_targets(doc: Any, file: str) -> list[Finding]:
    """``auto_map`` references that load code from another repo or from outside this one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("auto_map"), dict):
        return []
    out = []
    for auto_class, value in doc["auto_map"].items():
        for ref in _references(value):
            if "--" in ref:
                repo = ref.split("--", 1)[0]
                out.append(Finding(file, f"auto_map {auto_class} = {ref!r} loads code from another repo "
                                         f"({repo}), not from this model's files"))
                continue
            module = ref.rsplit(".", 1)[0] if "." in ref else ref
            if module.startswith(("/", "\\", ".")) or "/" in module or "\\" in module or ".." in ref \
                    or re.match(r"^[A-Za-z]:", module):
                out.append(Finding(file, f"auto_map {auto_class} = {ref!r} points outside the repo "
                                         "(a path where a module name belongs)"))
    return out


def scan(model_dir: Path) -> list[Finding]:
    """Every finding in the model folder's configs, in file order."""
    findings: list[Finding] = []
    docs = {name: _load(model_dir / name) for name in dict.fromkeys(CONFIG_FILES + TEMPLATE_FILES + AUTO_MAP_FILES)
            if (model_dir / name).is_file()}
    for name in CONFIG_FILES:
        if name in docs:
            findings += private_attributes(docs[name], name)
    for name in TEMPLATE_FILES:
        if name in docs:
            findings += template_names(docs[name], name)
    for name in AUTO_MAP_FILES:
        if name in docs:
            findings += auto_map_targets(docs[name], name)
    return findings
