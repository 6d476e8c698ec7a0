"""Every environment variable is read in vmm/core/settings.py and documented in docs/environment.md."""

from __future__ import annotations

import re

from conftest import REPO

from vmm.core import settings

READS = re.compile(r"os\.environ|os\.getenv|getenv\(|environ\[|from os import environ")
NAMED = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']|os\.getenv\(\s*["']([A-Z0-9_]+)["']""")


def test_no_module_but_settings_reads_the_environment():
    offenders = []
    for path in sorted((REPO / "vmm").rglob("*.py")):
        if path == REPO / "vmm" / "core" / "settings.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if READS.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "read it through vmm/core/settings.py:\n" + "\n".join(offenders)


def test_the_check_bites():
    assert READS.search('raw = os.environ.get("CUDA_VISIBLE_DEVICES")')
    assert READS.search('x = os.getenv("X")')


def test_every_variable_settings_reads_is_in_its_table_and_documented():
    source = (REPO / "vmm" / "core" / "settings.py").read_text(encoding="utf-8")
    read = {a or b for a, b in NAMED.findall(source)}
    flags = set(re.findall(r"""_flag\(\s*["']([A-Z0-9_]+)["']""", source))
    assert "HF_TOKEN" in read and "VMM_DEBUG" in flags          # the patterns still find reads
    doc = (REPO / "docs" / "environment.md").read_text(encoding="utf-8")
    for name in read | flags:
        assert name in settings.ENVIRONMENT, f"{name} is read but not in settings.ENVIRONMENT"
        assert f"`{name}`" in doc, f"{name} is read but not documented in docs/environment.md"
