"""Rendering chat templates: the sandbox transformers uses, bounded in time, memory and output.

Templates come from any repository on the Hub, so rendering one is running untrusted code in
jinja's sandbox. The sandbox stops attribute escapes but not a loop of 10**10 steps, a
``'x' * 10**12`` or a macro recursing without end. :func:`render_sample` therefore compiles
and renders in a child Python process (``python -I``, this interpreter) that:

- stops itself after :data:`RENDER_TIME_LIMIT_S` seconds of rendering (``setitimer``, which
  interrupts any loop the template runs), with ``RLIMIT_CPU`` as a backstop for one long C
  call and a wall-clock kill by the parent as the last resort;
- runs under ``RLIMIT_AS`` (:data:`RENDER_MEMORY_LIMIT_BYTES`): a huge string is a
  ``MemoryError`` in the child, never in vmm;
- streams the output (``Template.generate``) and stops past :data:`RENDER_OUTPUT_LIMIT_CHARS`.

A template over a limit is a :class:`TemplateProblem` of kind ``limit``. The child costs one
interpreter start (0.1-0.2 s, docs/benchmarks.md); rendering a real template takes
milliseconds. :func:`render_sample_here` is the same rendering in this process, unbounded,
for the child and for trusted templates.

Rendering mirrors transformers' ``_compile_jinja_template`` (5.24.0,
``utils/chat_template_utils.py``): ``ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True, extensions=[<generation tag>, loopcontrols])``, a ``tojson`` filter that
does not HTML-escape, and the globals ``raise_exception``, ``strftime_now``, ``dict`` and a
``namespace`` that refuses underscore attributes. Special tokens are passed as variables
(``bos_token``, ``eos_token``, ...), as ``apply_chat_template`` passes
``special_tokens_map``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RENDER_TIME_LIMIT_S = 2.0                   # rendering the sample (both attempts) in the child
RENDER_OUTPUT_LIMIT_CHARS = 1 << 20         # the sample renders to about 1 KB with any real template
RENDER_MEMORY_LIMIT_BYTES = 1 << 30         # address space of the child (Python + jinja2 use ~40 MB)
MAX_TEMPLATE_CHARS = 1 << 20                # the largest real chat templates are tens of KB
CHILD_START_ALLOWANCE_S = 20.0              # interpreter start on a loaded host, before the render clock


# --------------------------------------------------------------------------- sample conversation

DEFAULT_SYSTEM = (
    "You are Captain Mara Vex, the sharp-tongued captain of the airship Kestrel. Stay in "
    "character: speak in short, salty sentences, never mention being an AI, and remember "
    "what your crew told you earlier."
)
SAMPLE_TURNS: tuple[tuple[str, str], ...] = (
    ("user", "Captain, a storm is closing in from the east. What are your orders?"),
    ("assistant", "Reef the sails and lash down the cargo, Tomas. We ride it out above the clouds."),
    ("user", "Aye. And what of the stowaway we found in the hold this morning?"),
)


def sample_messages(system: str | None = None) -> list[dict[str, str]]:
    """System (a role-play character card), user, assistant, user."""
    return [{"role": "system", "content": DEFAULT_SYSTEM if system is None else system},
            *({"role": r, "content": c} for r, c in SAMPLE_TURNS)]


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system text prepended to the first user turn (for templates without a system role)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}" if system else message["content"]
            break
    return rest


# --------------------------------------------------------------------------- rendering

class TemplateProblem(Exception):
    """A template that does not compile, raises, or exceeds a limit; ``line`` is the template
    line when known; ``kind`` is ``syntax``, ``raise``, ``error`` or ``limit``."""

    def __init__(self, message: str, line: int | None, kind: str) -> None:
        super().__init__(message)
        self.message, self.line, self.kind = message, line, kind

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.message}"


class _OverLimit(BaseException):
    """Raised inside the child to stop a render; a BaseException so no handler swallows it."""


def _environment():
    """The sandbox transformers renders chat templates in (5.24.0 ``_cached_compile_jinja_template``)."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # transformers' AssistantTracker: ``{% generation %}...{% endgeneration %}`` marks
        # assistant text; outside its mask tracking it renders the body unchanged.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for key in attrs:
                TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            TemplateNamespace._check_name(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check_name(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {key!r}.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (jinja rewrites tracebacks to it)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def compile_template(text: str):
    """Compile in the sandbox; :class:`TemplateProblem` on a syntax error."""
    import jinja2

    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"jinja syntax error: {exc.message}", exc.lineno, "syntax") from exc


def _variables(messages: list[dict[str, str]], tokens: dict[str, str | None], add_generation_prompt: bool,
               tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    special = {k: v for k, v in tokens.items() if v is not None}
    return {"messages": messages, "tools": tools, "documents": None,
            "add_generation_prompt": add_generation_prompt, **special}


def render_messages(compiled: Any, messages: list[dict[str, str]], tokens: dict[str, str | None],
                    add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None,
                    output_limit: int | None = None) -> str:
    """Render like ``apply_chat_template(tokenize=False)`` (``tools``: OpenAI-style function
    schemas, as a request's ``tools``); :class:`TemplateProblem` when it raises.

    The output is streamed (``Template.generate``); past ``output_limit`` characters the
    render stops with :class:`_OverLimit`. Unbounded in time and memory: untrusted templates
    go through :func:`render_sample` (a bounded child)."""
    import jinja2

    pieces: list[str] = []
    total = 0
    try:
        for piece in compiled.generate(**_variables(messages, tokens, add_generation_prompt, tools)):
            total += len(piece)
            if output_limit is not None and total > output_limit:
                raise _OverLimit(f"the sample renders to more than {output_limit} characters")
            pieces.append(piece)
    except jinja2.TemplateError as exc:
        message = getattr(exc, "message", None) or str(exc)
        verb = "failed" if isinstance(exc, jinja2.UndefinedError) else "raised"
        raise TemplateProblem(f"template {verb}: {message}", _template_line(exc), "raise") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError) as exc:
        raise TemplateProblem(f"template failed: {type(exc).__name__}: {exc}", _template_line(exc),
                              "error") from exc
    return "".join(pieces)


@dataclass
class Rendering:
    rendered: str
    messages: list[dict[str, str]]   # what was rendered (after folding)
    system_folded: bool
    fold_reason: str | None          # "raised: ..." or "dropped"


def render_sample_here(text: str, tokens: dict[str, str | None], system: str | None = None,
                       output_limit: int | None = None) -> Rendering:
    """Render the sample conversation in this process, unbounded in time and memory; fold the
    system text into the first user turn when the template refuses a system role or drops its
    text. :class:`TemplateProblem` when even the plain (folded) conversation fails."""
    compiled = compile_template(text)
    messages = sample_messages(system)
    system_text = messages[0]["content"]
    try:
        rendered = render_messages(compiled, messages, tokens, output_limit=output_limit)
    except TemplateProblem as exc:
        reason = f"the template refused the system role ({exc.describe()})"
    else:
        if system_text in rendered:
            return Rendering(rendered, messages, False, None)
        reason = "the template dropped the system message"
    folded = fold_system(messages)
    rendered = render_messages(compiled, folded, tokens, output_limit=output_limit)
    return Rendering(rendered, folded, True, reason)


# --------------------------------------------------------------------------- the bounded child

_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from vmm.core.model.template_render import child_main; child_main()"


def render_sample(text: str, tokens: dict[str, str | None], system: str | None = None) -> Rendering:
    """:func:`render_sample_here` in a child process under the time, memory and output limits;
    :class:`TemplateProblem` (kind ``limit``) when the template exceeds one."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template of {len(text)} characters is over the {MAX_TEMPLATE_CHARS} limit",
                              None, "limit")
    request = json.dumps({"text": text, "tokens": tokens, "system": system}).encode()
    package_root = str(Path(__file__).resolve().parents[3])
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, package_root], input=request,
                              capture_output=True, timeout=RENDER_TIME_LIMIT_S + CHILD_START_ALLOWANCE_S)
    except subprocess.TimeoutExpired:
        raise _over_time() from None
    except OSError as exc:
        raise TemplateProblem(f"cannot start the renderer ({sys.executable}: {exc.strerror or exc})",
                              None, "error") from None
    return _answer(proc)


def _over_time() -> TemplateProblem:
    return TemplateProblem(f"rendering the sample took longer than {RENDER_TIME_LIMIT_S:g} s "
                           "(a loop without end?)", None, "limit")


def _answer(proc: subprocess.CompletedProcess) -> Rendering:
    """The child's JSON answer as a Rendering, or the problem it reported or died of."""
    import signal

    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "rendering" in doc:
        return Rendering(**doc["rendering"])
    if isinstance(doc, dict) and "problem" in doc:
        problem = doc["problem"]
        raise TemplateProblem(problem["message"], problem.get("line"), problem["kind"])
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise _over_time()
    if proc.returncode < 0:
        raise TemplateProblem(f"rendering crashed the renderer (signal {-proc.returncode}: "
                              f"{signal.Signals(-proc.returncode).name})", None, "limit")
    tail = " | ".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-2:])
    raise TemplateProblem(f"the renderer failed (exit {proc.returncode}: {tail or 'no output'})", None, "error")


def _set_limits() -> None:
    import resource
    import signal

    def out_of_time(_signum, _frame):
        raise _OverLimit(f"rendering the sample took longer than {RENDER_TIME_LIMIT_S:g} s (a loop without end?)")

    for limit, value in ((resource.RLIMIT_AS, RENDER_MEMORY_LIMIT_BYTES),
                         (resource.RLIMIT_CPU, int(RENDER_TIME_LIMIT_S) + 3)):
        soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(limit, (value, hard))
        except (ValueError, OSError):
            pass     # a host that refuses: the wall-clock kill in the parent still bounds it
    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, RENDER_TIME_LIMIT_S)


def child_main() -> None:
    """The child: read ``{text, tokens, system}`` on stdin, answer one JSON document on stdout."""
    import jinja2.sandbox  # noqa: F401 - imported before the clock starts

    request = json.loads(sys.stdin.buffer.read())
    _set_limits()
    try:
        rendering = render_sample_here(request["text"], request["tokens"], request["system"],
                                       RENDER_OUTPUT_LIMIT_CHARS)
        answer: dict[str, Any] = {"rendering": asdict(rendering)}
    except TemplateProblem as exc:
        answer = {"problem": {"message": exc.message, "line": exc.line, "kind": exc.kind}}
    except _OverLimit as exc:
        answer = {"problem": {"message": str(exc), "line": None, "kind": "limit"}}
    except MemoryError:
        answer = {"problem": {"message": f"rendering the sample needs more than "
                                         f"{RENDER_MEMORY_LIMIT_BYTES >> 20} MiB of memory", "line": None,
                              "kind": "limit"}}
    except RecursionError:
        answer = {"problem": {"message": "the template nests or recurses too deeply", "line": None,
                              "kind": "limit"}}
    import signal

    signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
