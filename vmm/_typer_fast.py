"""Keep pydantic out of simple commands: a start-up cost typer 0.29 adds.

typer 0.29 (typer/_coercion.py, ``build_runtime_param``) builds a pydantic ``TypeAdapter``
for every parameter it coerces, so any command with a ``str`` or ``Path`` option imports
pydantic and pydantic-core: ~140 ms on this box, more than all of ``vmm ls`` otherwise
costs (measured with ``python -X importtime``; see docs/benchmarks.md). ``str`` and
``Path`` parameters without path checks need no validation beyond ``Path(value)``; this
module gives them a plain coercion and leaves every other parameter to typer.

It reaches into typer's internals, so: pyproject.toml pins typer to the range it was tested
on (0.29.x), :func:`install` checks the signatures it relies on and does nothing when one
differs (typer then behaves as shipped, only slower), and tests/cli/test_startup.py asserts
that it applied and that ``vmm ls`` imports no pydantic. Measured worth: docs/benchmarks.md.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

_SIMPLE = (str, Path, bool)


def _simple_type(annotation: Any) -> type | None:
    if annotation in _SIMPLE:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in _SIMPLE:
            return args[0]
    return None


def _signatures_match(original: Any, base: Any, resolve: Any) -> bool:
    """typer 0.29's shapes: ``build_runtime_param(descriptor)``, ``RuntimeParam(parameter_info,
    annotation)``, ``RuntimeParam._coerce_value(self, value, param, ctx)``,
    ``resolve_type_descriptor(annotation, parameter_info)``."""
    try:
        shapes = [list(inspect.signature(f).parameters) for f in
                  (original, base, getattr(base, "_coerce_value"), resolve)]
    except (TypeError, ValueError, AttributeError):
        return False
    return shapes == [["descriptor"], ["parameter_info", "annotation"], ["self", "value", "param", "ctx"],
                      ["annotation", "parameter_info"]]


def installed() -> bool:
    """Whether typer's parameter building is vmm's (``install`` applied)."""
    try:
        from typer import core
    except ImportError:
        return False
    return bool(getattr(getattr(core, "build_runtime_param", None), "_vmm_fast", False))


def install() -> bool:
    """Patch typer when its internals have the shapes this was written for; True when applied."""
    try:
        from typer import _coercion, core
    except ImportError:
        return False
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    resolve = getattr(_coercion, "resolve_type_descriptor", None)
    if original is None or base is None or getattr(original, "_vmm_fast", False):
        return False
    if not _signatures_match(original, base, resolve):
        return False

    class SimpleRuntimeParam(base):  # type: ignore[misc, valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            target = _simple_type(self.annotation)
            if isinstance(value, target):
                return value
            if target is Path:
                return Path(value)
            if target is str:
                return str(value)
            # A bool given as text ("yes", "0"): typer's own rules.
            return original(_coercion.resolve_type_descriptor(self.annotation, self.parameter_info)
                            )._coerce_value(value, param, ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        plain_path = not any(getattr(info, attr, False) for attr in
                             ("exists", "resolve_path", "allow_dash", "path_type"))
        custom = getattr(info, "parser", None) or getattr(info, "click_type", None)
        if (getattr(descriptor, "file_annotation", None) is None and not custom and plain_path
                and _simple_type(descriptor.annotation) is not None):
            return SimpleRuntimeParam(annotation=descriptor.annotation, parameter_info=info)
        return original(descriptor)

    build_runtime_param._vmm_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True
