"""Tool calling and reasoning: which ``--tool-call-parser`` / ``--reasoning-parser`` to pass.

Without ``--enable-auto-tool-choice --tool-call-parser X`` vLLM answers an OpenAI-style
request that carries ``tools`` with ``tool_choice: "auto"`` with HTTP 400 ('"auto" tool
choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
``vllm/renderers/online_renderer.py``, vLLM 0.32.0); without ``--reasoning-parser Y`` a
reasoning model's thinking comes back inside the answer. vmm chooses both from the model's
model_type, architecture, name and chat template (a template that uses ``tools`` is the
evidence that the model was trained for tool calls), by :data:`RULES`, whose every entry
cites the vLLM documentation or source it comes from:

- "tool_calling.md": ``docs/features/tool_calling.md`` of vllm-project/vllm (read at commit
  0064cc9c, the parser names of vLLM 0.32-0.33);
- "reasoning_outputs.md": ``docs/features/reasoning_outputs.md`` (commit 00256d59);
- a path under ``vllm/``: vLLM 0.32.0's own source.

The names are checked against the parsers the *target* vLLM registers
(``ToolParserManager.list_registered()`` / ``ReasoningParserManager.list_registered()``,
which ``vllm serve`` validates its flags against in ``validate_api_server_args``): the
installed vLLM's, read in a subprocess and cached per version, else the snapshot bundled in
``vmm/data/vllm_parsers.json`` (``scripts/gen_vllm_parsers.py``). A name the target does not
register is never passed: some names changed across versions (``glm4_moe`` in 0.10,
``glm45`` since; ``openai``/``openai_gptoss`` arrived after 0.10.0), so a rule lists
candidates and the first registered one wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vmm.core.errors import UsageError
from vmm.core.serving import vllm_env

PROBE_TIMEOUT_S = 120
NONE = "none"                     # the operator's "no parser" value


# --------------------------------------------------------------------------- registries

@dataclass
class ParserRegistry:
    version: str
    source: str                   # "installed vllm 0.32.0" / "snapshot of vllm 0.33.0"
    tool_parsers: list[str]
    reasoning_parsers: list[str]
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def _snapshot_doc() -> dict[str, Any]:
    text = resources.files("vmm").joinpath("data", "vllm_parsers.json").read_text(encoding="utf-8")
    return json.loads(text)


def snapshot_registry(version: str | None = None) -> ParserRegistry:
    """The bundled names for ``version`` (:func:`vllm_env.nearest_snapshot`: exact, else the
    nearest older snapshot, else the oldest; the newest when ``version`` is None)."""
    doc = _snapshot_doc()["versions"]
    chosen, note = vllm_env.nearest_snapshot(list(doc), version)
    entry = doc[chosen]
    return ParserRegistry(version or chosen, f"snapshot of vllm {chosen}", list(entry["tool_parsers"]),
                          list(entry["reasoning_parsers"]), [f"{note} parser names"] if note else [])


_PROBE = r"""
import json
try:
    from vllm.tool_parsers import ToolParserManager
except ImportError:  # vLLM < ~0.12
    from vllm.entrypoints.openai.tool_parsers import ToolParserManager
from vllm.reasoning import ReasoningParserManager
def names(manager, attrs):
    if hasattr(manager, "list_registered"):
        return sorted(manager.list_registered())
    out = set()
    for attr in attrs:
        out |= set(getattr(manager, attr, {}) or {})
    return sorted(out)
print("VMM-PARSERS:" + json.dumps({
    "tool_parsers": names(ToolParserManager, ("tool_parsers", "lazy_parsers")),
    "reasoning_parsers": names(ReasoningParserManager, ("reasoning_parsers", "lazy_parsers"))}))
"""


def installed_registry(install: vllm_env.VllmInstall, cache_dir: Path | None) -> ParserRegistry:
    """The installed vLLM's parser names (subprocess; cached per version). RuntimeError on failure."""
    version = install.version or "unknown"
    doc = vllm_env.cached_probe(install.python, _PROBE, "VMM-PARSERS:", "parsers", version, cache_dir, PROBE_TIMEOUT_S,
                                valid=lambda d: isinstance(d, dict) and isinstance(d.get("tool_parsers"), list))
    return ParserRegistry(version, f"installed vllm {version}", list(doc["tool_parsers"]),
                          list(doc["reasoning_parsers"]))


def choose_registry(vllm_version: str | None = None, cache_dir: Path | None = None) -> ParserRegistry:
    """The target vLLM's parser names (:func:`vllm_env.for_target`)."""
    registry, notes = vllm_env.for_target(vllm_version, cache_dir, installed_registry,
                                          lambda version: (snapshot_registry(version), None))
    registry.notes = notes + registry.notes
    return registry


# --------------------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Rule:
    family: str
    model_types: tuple[str, ...] = ()      # any of these model_type values
    name: str | None = None                # or a regular expression on the model's name (case-insensitive)
    tools: tuple[str, ...] = ()            # tool-call parser candidates, first registered wins
    reasoning: tuple[str, ...] = ()        # reasoning parser candidates
    tools_need_template: bool = False      # only when the chat template uses `tools`
    reasoning_needs: str | None = None     # only when the template contains this text
    source: str = ""                       # where the tool-call parser comes from
    reasoning_source: str = ""             # where the reasoning parser comes from
    note: str = ""


# Order matters: the first rule that matches decides (specific names before model_types).
RULES: tuple[Rule, ...] = (
    Rule("gpt-oss", model_types=("gpt_oss",), tools=("openai",), reasoning=("openai_gptoss",),
         source="tool_calling.md 'OpenAI OSS Models (openai)'",
         reasoning_source="vllm/model_executor/models/config.py: GptOssForCausalLMConfig defaults to openai_gptoss"),
    Rule("Qwen3-Coder", name=r"qwen3-coder", tools=("qwen3_xml",),
         source="tool_calling.md 'Qwen3-Coder Models (qwen3_xml)'"),
    Rule("QwQ", name=r"(^|/)qwq", tools=("hermes",), reasoning=("deepseek_r1",),
         source="tool_calling.md 'Qwen Models' (Qwen/QwQ-32B: hermes)",
         reasoning_source="reasoning_outputs.md (QwQ-32B: deepseek_r1)"),
    Rule("DeepSeek-R1 distill", name=r"deepseek-r1-distill|r1-distill", reasoning=("deepseek_r1",),
         reasoning_source="reasoning_outputs.md 'DeepSeek R1 series: deepseek_r1' (tool calling: no)"),
    Rule("DeepSeek-V3.1", name=r"deepseek-v3\.1", tools=("deepseek_v31",), reasoning=("deepseek_v3",),
         source="tool_calling.md 'DeepSeek-V3.1 Models (deepseek_v31)'",
         reasoning_source="reasoning_outputs.md (DeepSeek-V3.1: deepseek_v3)",
         note="thinking is off unless a request sets chat_template_kwargs {\"thinking\": true}"),
    Rule("DeepSeek-R1", name=r"deepseek-r1", tools=("deepseek_v3",), reasoning=("deepseek_r1",),
         tools_need_template=True,
         source="tool_calling.md (DeepSeek-R1-0528: deepseek_v3, with vLLM's examples/tool_chat_template_deepseekr1.jinja)",
         reasoning_source="reasoning_outputs.md (DeepSeek R1 series: deepseek_r1)"),
    Rule("DeepSeek-V3", model_types=("deepseek_v3",), tools=("deepseek_v3",), tools_need_template=True,
         source="tool_calling.md 'DeepSeek-V3 Models (deepseek_v3)'",
         note="vLLM's docs pair it with examples/tool_chat_template_deepseekv3.jinja"),
    Rule("Llama 4", model_types=("llama4",), tools=("llama4_pythonic",),
         source="tool_calling.md 'For Llama 4 model, use --tool-call-parser llama4_pythonic'"),
    Rule("Hermes", name=r"hermes-?[23]", tools=("hermes",),
         source="tool_calling.md 'Hermes Models (hermes)'"),
    Rule("xLAM", name=r"xlam", tools=("xlam",), source="tool_calling.md 'xLAM Models (xlam)'"),
    Rule("Phi-4-mini", name=r"phi-4-mini", tools=("phi4_mini_json",), tools_need_template=True,
         source="vllm/tool_parsers/phi4mini_tool_parser.py (0.32.0): 'Used when --enable-auto-tool-choice "
                "--tool-call-parser phi4_mini_json'"),
    Rule("FunctionGemma", name=r"functiongemma", tools=("functiongemma",),
         source="tool_calling.md 'FunctionGemma Models (functiongemma)'"),
    Rule("Gemma 4", model_types=("gemma4", "gemma4_text"), tools=("gemma4",), tools_need_template=True,
         source="vllm/tool_parsers/gemma4_engine_tool_parser.py (0.32.0): Gemma4's native <|tool_call> syntax"),
    Rule("Granite 4", model_types=("granitemoehybrid",), name=r"granite-4", tools=("granite4",),
         source="tool_calling.md 'IBM Granite: granite-4.0 models: granite4'"),
    Rule("Granite 20B FC", name=r"granite-20b-functioncalling", tools=("granite-20b-fc",),
         source="tool_calling.md 'granite-20b-functioncalling: granite-20b-fc'"),
    Rule("Granite 3", model_types=("granite",), tools=("granite",), tools_need_template=True,
         source="tool_calling.md 'IBM Granite: granite-3.1-8b-instruct: granite'"),
    Rule("Hunyuan-A13B", name=r"hunyuan-a13b", tools=("hunyuan_a13b",), reasoning=("hunyuan_a13b",),
         source="tool_calling.md 'Hunyuan Models (hunyuan_a13b)'",
         reasoning_source="reasoning_outputs.md (Hunyuan A13B series: hunyuan_a13b)"),
    Rule("Kimi-K2", model_types=("kimi_k2",), name=r"kimi-k2", tools=("kimi_k2",),
         source="tool_calling.md 'Kimi-K2 Models (kimi_k2)'"),
    Rule("GLM-4.7", name=r"glm-4\.7", tools=("glm47",), source="tool_calling.md 'GLM-4.7 Models (glm47)'"),
    Rule("GLM-4.5/4.6", model_types=("glm4_moe",), tools=("glm45", "glm4_moe"), reasoning=("glm45", "glm4_moe"),
         source="tool_calling.md 'GLM-4.5 Models (glm45)'; vLLM 0.10.0 named it glm4_moe",
         reasoning_source="reasoning_outputs.md (GLM-4.5 series: glm45); vLLM 0.10.0 named it glm4_moe"),
    Rule("MiniMax-M2", model_types=("minimax_m2",), reasoning=("minimax_m2_append_think",),
         reasoning_source="reasoning_outputs.md (MiniMax-M2: minimax_m2_append_think)"),
    Rule("InternLM2.5", model_types=("internlm2",), tools=("internlm",), tools_need_template=True,
         source="tool_calling.md 'InternLM Models (internlm)'",
         note="vLLM's docs pair it with examples/tool_chat_template_internlm2_tool.jinja"),
    Rule("Jamba", model_types=("jamba",), tools=("jamba",), source="tool_calling.md 'Jamba Models (jamba)'"),
    Rule("LongCat-Flash", name=r"longcat-flash", tools=("longcat",),
         source="tool_calling.md 'LongCat-Flash-Chat Models (longcat)'"),
    Rule("Olmo 3", model_types=("olmo3",), tools=("olmo3",), tools_need_template=True,
         source="tool_calling.md 'Olmo 3 Models (olmo3)'"),
    Rule("GigaChat 3", name=r"gigachat3", tools=("gigachat3",), source="tool_calling.md 'Gigachat 3 Models'"),
    Rule("Apertus", model_types=("apertus",), tools=("apertus",), tools_need_template=True,
         source="tool_calling.md 'Apertus Models (apertus)'"),
    Rule("Mistral", model_types=("mistral", "mixtral", "mistral3"), name=r"mistral|mixtral|ministral|devstral",
         tools=("mistral",), tools_need_template=True,
         source="tool_calling.md 'Mistral Models (mistral)'"),
    Rule("Qwen3", model_types=("qwen3", "qwen3_moe", "qwen3_next"), tools=("hermes",), reasoning=("qwen3",),
         tools_need_template=True, reasoning_needs="<think>",
         source="tool_calling.md 'Qwen Models' (Hermes-style tool use: hermes)",
         reasoning_source="reasoning_outputs.md (Qwen3 series: qwen3)"),
    Rule("Qwen2.5", model_types=("qwen2", "qwen2_moe"), tools=("hermes",), tools_need_template=True,
         source="tool_calling.md 'Qwen Models' (Qwen2.5: hermes)"),
    Rule("Llama 3.1+", model_types=("llama",), tools=("llama3_json",), tools_need_template=True,
         source="tool_calling.md 'Llama Models (llama3_json)': all Llama 3.1, 3.2 and 4 models"),
)

# A template that uses `tools` in one of these formats, when no rule named a parser.
TEMPLATE_FORMATS: tuple[tuple[str, str, str], ...] = (
    ("<tool_call>", "hermes", "the template writes Hermes-style <tool_call> blocks (tool_calling.md: hermes)"),
    ("[TOOL_CALLS]", "mistral", "the template writes Mistral [TOOL_CALLS] (tool_calling.md: mistral)"),
    ("<|python_tag|>", "llama3_json", "the template is Llama 3.1-style (<|python_tag|>; tool_calling.md: llama3_json)"),
)

TOOLS_IN_TEMPLATE = re.compile(r"\btools\b")


def template_uses_tools(template: str | None) -> bool:
    """Whether a chat template renders the request's ``tools`` (the jinja variable)."""
    if not template:
        return False
    blocks = re.findall(r"\{[{%](.*?)[%}]\}", template, flags=re.S)
    return any(TOOLS_IN_TEMPLATE.search(b) for b in blocks)


# --------------------------------------------------------------------------- the choice

@dataclass
class ParserChoice:
    tool_call_parser: str | None
    reasoning_parser: str | None
    tool_why: str
    reasoning_why: str
    family: str | None
    template_tools: bool
    vllm_version: str
    registry_source: str
    notes: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        out: list[str] = []
        if self.tool_call_parser:
            out += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.reasoning_parser:
            out += ["--reasoning-parser", self.reasoning_parser]
        return out

    def document(self) -> dict[str, Any]:
        return {"tool_call_parser": self.tool_call_parser, "reasoning_parser": self.reasoning_parser,
                "tool_call_parser_why": self.tool_why, "reasoning_parser_why": self.reasoning_why,
                "family": self.family, "template_uses_tools": self.template_tools,
                "vllm_version": self.vllm_version, "registry": self.registry_source}


def _matches(rule: Rule, model_type: str | None, name: str) -> bool:
    if model_type and model_type in rule.model_types:
        return True
    return bool(rule.name and re.search(rule.name, name, flags=re.I))


def find_rule(model_type: str | None, architectures: list[str] | None, name: str | None) -> Rule | None:
    """The first rule for this model (name rules are tried on the model's name)."""
    name = name or ""
    mt = model_type
    if not mt and architectures:                      # GGUF or odd configs: guess from the class
        arch = architectures[0].lower()
        mt = next((t for r in RULES for t in r.model_types if arch.startswith(t.replace("_", ""))), None)
    for rule in RULES:
        if _matches(rule, mt, name):
            return rule
    return None


def _first_registered(candidates: tuple[str, ...], registered: list[str]) -> str | None:
    return next((c for c in candidates if c in registered), None)


def _tool_choice(rule: Rule | None, template: str | None, uses_tools: bool,
                 registry: ParserRegistry) -> tuple[str | None, str]:
    where = f"vLLM {registry.version} ({registry.source})"
    marker = next((m for m in TEMPLATE_FORMATS if template and m[0] in template), None) if uses_tools else None
    if rule and rule.tools:
        if rule.tools_need_template and template is None:
            return None, f"{rule.family}: no chat template of its own, so none that renders `tools`"
        if rule.tools_need_template and not uses_tools:
            return None, (f"{rule.family}: its chat template does not use `tools`, so the model was not "
                          f"given tool calls to make")
        if rule.tools_need_template and marker and marker[1] not in rule.tools and marker[1] in registry.tool_parsers:
            # A fine-tune's template says how it writes tool calls better than its architecture
            # (a Llama-architecture model with a Hermes-style template writes <tool_call>).
            return marker[1], f"{marker[2]}, which wins over the {rule.family} default"
        name = _first_registered(rule.tools, registry.tool_parsers)
        if name is None:
            return None, f"{rule.family} needs the {'/'.join(rule.tools)} parser, which {where} does not register"
        return name, f"{rule.family} ({rule.source})" + (f"; {rule.note}" if rule.note else "")
    if marker:
        _, parser, why = marker
        if parser in registry.tool_parsers:
            return parser, why
        return None, f"{why}, but {where} does not register {parser}"
    if uses_tools:
        return None, ("the chat template uses `tools` but in no format vmm knows a vLLM parser for "
                      "(pass --tool-parser NAME)")
    family = f"{rule.family}: " if rule else ""
    if template is None:
        return None, f"{family}no chat template of its own, so none that renders `tools`"
    return None, f"{family}no tool-call format known for this model and its chat template does not use `tools`"


def _reasoning_choice(rule: Rule | None, template: str | None,
                      registry: ParserRegistry) -> tuple[str | None, str]:
    if not rule or not rule.reasoning:
        return None, "not a reasoning model vmm knows"
    if rule.reasoning_needs and (not template or rule.reasoning_needs not in template):
        return None, f"{rule.family}: the chat template has no {rule.reasoning_needs} (not a thinking variant)"
    name = _first_registered(rule.reasoning, registry.reasoning_parsers)
    if name is None:
        return None, (f"{rule.family} needs the {'/'.join(rule.reasoning)} reasoning parser, which vLLM "
                      f"{registry.version} ({registry.source}) does not register")
    return name, f"{rule.family} ({rule.reasoning_source})" + (f"; {rule.note}" if rule.note else "")


def _override(value: str | None, registered: list[str], flag: str, version: str) -> str | None:
    if value is None or value.lower() == NONE:
        return None
    if value not in registered:
        raise UsageError(f"unknown {flag}", f"{value} (vLLM {version} registers: {', '.join(registered)})",
                         f"pick one of those, or `{flag} none`")
    return value


HF_PARSER = "hf"


def response_template_fields(tokenizer_config: dict[str, Any] | None) -> set[str]:
    """The semantic fields of the tokenizer configuration's ``response_template`` (vLLM 0.34.0
    vllm/parser/response_template.py ``resolve_response_template`` reads it from the tokenizer's
    init kwargs; ``load_response_template`` needs a non-empty ``fields`` dict)."""
    spec = (tokenizer_config or {}).get("response_template")
    fields = spec.get("fields") if isinstance(spec, dict) else None
    return set(fields) if isinstance(fields, dict) else set()


def _hf_choice(fields: set[str], field_name: str, registered: list[str]) -> tuple[str | None, str]:
    # vLLM 0.34's "hf" tool / reasoning parser (ResponseTemplateToolParser /
    # ResponseTemplateReasoningParser) reads the checkpoint's own response_template: it wins
    # over the family rules wherever the target vLLM registers it.
    if field_name in fields and HF_PARSER in registered:
        return HF_PARSER, f"the tokenizer configuration's response_template declares {field_name!r}"
    return None, ""


def _pick(override: str | None, flag: str, registered: list[str], version: str,
          hf: tuple[str | None, str], by_rule) -> tuple[str | None, str]:
    """The operator's ``flag`` value, else the ``hf`` parser a response_template asks for, else
    the family rule's choice (``by_rule()``): (parser or None, why)."""
    if override is not None:
        chosen = _override(override, registered, flag, version)
        return chosen, f"{flag} {chosen or NONE}"
    if hf[0]:
        return hf
    return by_rule()


def choose(model_type: str | None, architectures: list[str] | None, name: str | None, template: str | None,
           registry: ParserRegistry, tool_parser: str | None = None,
           reasoning_parser: str | None = None, response_template: set[str] | None = None) -> ParserChoice:
    """The parsers for a model; ``tool_parser`` / ``reasoning_parser`` are the operator's
    overrides (a registered NAME or ``none``); ``response_template`` the fields of the
    tokenizer configuration's response_template. :class:`UsageError` for an unknown NAME."""
    rule = find_rule(model_type, architectures, name)
    uses_tools = template_uses_tools(template)
    hf_tool, hf_tool_why = _hf_choice(response_template or set(), "tool_calls", registry.tool_parsers)
    hf_reasoning, hf_reasoning_why = _hf_choice(response_template or set(), "thinking", registry.reasoning_parsers)
    tool, tool_why = _pick(tool_parser, "--tool-parser", registry.tool_parsers, registry.version,
                           (hf_tool, hf_tool_why), lambda: _tool_choice(rule, template, uses_tools, registry))
    reasoning, reasoning_why = _pick(reasoning_parser, "--reasoning-parser", registry.reasoning_parsers,
                                     registry.version, (hf_reasoning, hf_reasoning_why),
                                     lambda: _reasoning_choice(rule, template, registry))
    return ParserChoice(tool, reasoning, tool_why, reasoning_why, rule.family if rule else None, uses_tools,
                        registry.version, registry.source, list(registry.notes))


def choose_for_model(model_dir: Path, name: str | None, model_type: str | None,
                     architectures: list[str] | None, vllm_version: str | None = None,
                     cache_dir: Path | None = None, tool_parser: str | None = None,
                     reasoning_parser: str | None = None, quant: str | None = None) -> ParserChoice:
    """:func:`choose` with the model's own chat template and the target vLLM's registry."""
    from vmm.core.errors import VmmError
    from vmm.core.model import templates

    registry = choose_registry(vllm_version, cache_dir)
    template = None
    try:
        resolved = templates.resolve_template(Path(model_dir), name, quant)
        if resolved.source != "family":          # vmm's own defaults carry no tool format
            template = resolved.template
    except VmmError:
        template = None
    fields: set[str] = set()
    if (Path(model_dir) / "tokenizer_config.json").is_file():
        from vmm.core.model.config import load_json_file

        try:
            fields = response_template_fields(load_json_file(Path(model_dir) / "tokenizer_config.json"))
        except VmmError:
            fields = set()
    return choose(model_type, architectures, name, template, registry, tool_parser, reasoning_parser, fields)
