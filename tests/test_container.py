"""The Containerfile, read statically (no container engine here; docs/container.md).

What it must hold: a non-root USER (the uid the pull Job's fsGroup names), ENTRYPOINT vmm,
every `pip install` hash-checked, the wheel it expects named from pyproject's name and the
package's version, and a lock that pins every runtime dependency with hashes.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from packaging.requirements import Requirement

import vmm
from conftest import REPO
from vmm.core.serving import kubernetes

try:
    import tomllib
except ModuleNotFoundError:         # Python 3.10: tomli where it is installed
    tomllib = pytest.importorskip("tomli")

CONTAINERFILE = REPO / "Containerfile"
LOCK = REPO / "container" / "requirements.txt"
BUILD_LOCK = REPO / "container" / "build-requirements.txt"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def problems(text: str) -> list[str]:
    """What makes a Containerfile unfit: the rules of issue 22."""
    found = []
    steps = instructions(text)
    users = [args for op, args in steps if op == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        found.append("the final USER is root")
    entry = [args for op, args in steps if op == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["vmm"]:
        found.append('ENTRYPOINT is not ["vmm"]')
    for op, args in steps:
        if op == "RUN":
            for command in re.split(r"&&|;|\|\|", args):
                words = shlex.split(command)
                if "pip" in words and "install" in words and "--require-hashes" not in words:
                    found.append(f"pip install without --require-hashes: {command.strip()}")
    return found


def build_args(text: str) -> dict[str, str]:
    return dict(args.split("=", 1) for op, args in instructions(text) if op == "ARG" and "=" in args)


def locked(path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `pip --require-hashes` requirements file."""
    text = path.read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, *hashes = line.split()
        name, version = spec.split("==")
        out[name] = (version, [h.removeprefix("--hash=sha256:") for h in hashes])
    return out


def test_the_containerfile_is_non_root_hash_checked_and_runs_vmm():
    text = CONTAINERFILE.read_text()
    assert problems(text) == []
    user = [args for op, args in instructions(text) if op == "USER"][-1]
    assert user == f"{kubernetes.VMM_IMAGE_UID}:{kubernetes.VMM_IMAGE_UID}"     # the pull Job's fsGroup
    assert sum("--require-hashes" in args for op, args in instructions(text) if op == "RUN") == 2


@pytest.mark.parametrize("bad,why", [
    ("FROM python:3.12-slim\nRUN pip install vllm-model-manager\nUSER 10001\nENTRYPOINT [\"vmm\"]\n",
     "pip install without --require-hashes"),
    ("FROM python:3.12-slim\nRUN apt-get update && \\\n    pip install -r r.txt\nUSER 10001\nENTRYPOINT [\"vmm\"]\n",
     "pip install without --require-hashes"),
    ("FROM python:3.12-slim\nRUN pip install --require-hashes -r r.txt\nUSER root\nENTRYPOINT [\"vmm\"]\n",
     "the final USER is root"),
    ("FROM python:3.12-slim\nRUN pip install --require-hashes -r r.txt\nENTRYPOINT [\"vmm\"]\n",
     "the final USER is root"),
    ("FROM python:3.12-slim\nRUN pip install --require-hashes -r r.txt\nUSER 1000\nENTRYPOINT [\"python\"]\n",
     'ENTRYPOINT is not ["vmm"]'),
])
def test_the_containerfile_check_can_fail(bad, why):
    assert any(p.startswith(why) for p in problems(bad)), problems(bad)


def test_the_wheel_it_installs_is_the_one_pyproject_builds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == vmm.DISTRIBUTION == "vllm-model-manager"
    assert project["dynamic"] == ["version"]
    text = CONTAINERFILE.read_text()
    assert build_args(text)["VMM_VERSION"] == vmm.__version__
    wheel = re.sub(r"[-.]", "_", project["name"]) + "-${VMM_VERSION}-py3-none-any.whl"
    assert wheel in text
    assert vmm.IMAGE in text                          # the build command shown names the default image


def test_the_lock_pins_every_runtime_dependency_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = locked(LOCK)
    for dep in project["project"]["dependencies"]:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not in container/requirements.txt: run scripts/lock-container"
        version, hashes = pins[name]
        assert req.specifier.contains(version), f"{name}=={version} does not satisfy {req.specifier}"
    assert all(len(h) == 64 and re.fullmatch(r"[0-9a-f]+", h) for _, hs in pins.values() for h in hs)
    assert all(hs for _, hs in pins.values())
    build = locked(BUILD_LOCK)
    for dep in project["build-system"]["requires"]:
        req = Requirement(dep)
        assert req.specifier.contains(build[req.name][0]) and build[req.name][1]


def test_the_base_image_is_the_python_the_lock_was_made_for():
    base = build_args(CONTAINERFILE.read_text())["PYTHON_IMAGE"]
    lock_script = (REPO / "scripts" / "lock-container").read_text()
    python = re.search(r'PYTHON_VERSION = "([\d.]+)"', lock_script)[1]
    assert base.startswith(f"python:{python}-")
    assert f"CPython {python}" in LOCK.read_text()
