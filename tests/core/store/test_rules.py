"""One copy of each store rule: the trash marker, the model-file walker, gc/ls agreement."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import run_vmm
from storage_helpers import blob, make_model

from vmm.core.store import local, paths

DAY = 86400.0


def test_trash_names_are_never_models_and_a_model_may_contain_the_marker(root):
    trash = paths.trash_path(root, "org--gone", "1-2")
    assert paths.is_trash(trash.name) and trash.name.startswith(".")
    trash.mkdir(parents=True)
    (trash / "w.bin").write_bytes(b"x")
    # A Hub repo may be named like the marker: it is still a model.
    odd = make_model(root, "org/odd.rm-v2", {"w.bin": blob("odd", 1000)})
    assert not paths.is_trash(odd.name)
    assert [d.name for d in local.model_dirs(root)] == [odd.name]
    listed = run_vmm("ls", "--json").json()["models"]
    assert [m["name"] for m in listed] == ["org/odd.rm-v2"]
    assert sorted(p.name for p in root.glob(paths.trash_glob("org--gone"))) == [trash.name]


def test_walker_skips_hidden_top_level_dirs_unless_asked(tmp_path):
    d = tmp_path / "m"
    (d / ".cache" / "huggingface").mkdir(parents=True)
    (d / ".vmm" / "partial").mkdir(parents=True)
    (d / "sub").mkdir()
    (d / "w.bin").write_bytes(b"1")
    (d / ".gitattributes").write_bytes(b"2")
    (d / "sub" / ".hidden-in-sub").write_bytes(b"3")
    (d / ".cache" / "huggingface" / "x.metadata").write_bytes(b"4")
    (d / ".vmm" / "partial" / "w.bin.part").write_bytes(b"5")
    os.symlink("/etc", d / "link")
    model = sorted(rel for rel, _ in local.walk_model_entries(d))
    assert model == [".gitattributes", "link", "sub/.hidden-in-sub", "w.bin"]
    everything = sorted(rel for rel, _ in local.walk_model_entries(d, include_hidden=True))
    assert everything == sorted(model + [".cache/huggingface/x.metadata", ".vmm/partial/w.bin.part"])


def test_ls_and_gc_report_the_same_size_for_a_model_with_hidden_dirs(root):
    now = time.time()
    model = make_model(root, "org/old", {"w.bin": blob("old", 100_000), "sub/t.json": b"{}"},
                       last_used=now - 40 * DAY)
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "w.bin.metadata").write_bytes(b"m" * 5000)
    (model / ".git").mkdir()
    (model / ".git" / "packed").write_bytes(b"g" * 7000)
    (paths.partial_dir(model)).mkdir(parents=True)
    (paths.partial_dir(model) / "w.bin.part").write_bytes(b"p" * 3000)
    ls_size = run_vmm("ls", "--json").json()["models"][0]["size_bytes"]
    plan = run_vmm("gc", "--unused-for", "30d", "--dry-run", "--json").json()
    assert ls_size == 100_002
    assert plan["removed"][0]["size_bytes"] == ls_size
    # What the removal frees counts the hidden dirs and vmm's metadata too.
    assert plan["removed"][0]["bytes_freed"] > ls_size + 15_000
    done = run_vmm("gc", "--unused-for", "30d", "--yes", "--json").json()
    assert done["removed"][0]["size_bytes"] == ls_size and not model.exists()


def test_gc_json_last_used_is_iso_like_ls_with_epoch_beside(root):
    when = time.time() - 40 * DAY
    make_model(root, "org/old", {"w.bin": blob("old", 1000)}, last_used=when)
    ls_used = run_vmm("ls", "--json").json()["models"][0]["last_used"]
    removed = run_vmm("gc", "--unused-for", "30d", "--dry-run", "--json").json()["removed"][0]
    assert removed["last_used"] == ls_used
    assert ls_used.endswith("Z") and "T" in ls_used
    assert abs(removed["last_used_epoch"] - when) < 1e-3


def _private_stdlib_uses(source: str) -> list[str]:
    """``module._name`` for every stdlib module the source imports (dunders aside)."""
    import ast
    import sys

    tree = ast.parse(source)
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] in sys.stdlib_module_names}
    return [f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
            and node.attr.startswith("_") and not node.attr.startswith("__")]


def test_vmm_uses_no_private_stdlib_names():
    """Private stdlib names (``tempfile._get_candidate_names`` once made vmm's temporary names)
    change between Python versions: no module of vmm touches one. The check bites on a sample."""
    assert _private_stdlib_uses("import tempfile\nnames = tempfile._get_candidate_names()\n") == [
        "tempfile._get_candidate_names"]
    package = Path(local.__file__).parents[2]
    found = {str(p.relative_to(package)): uses for p in package.rglob("*.py")
             if (uses := _private_stdlib_uses(p.read_text()))}
    assert found == {}


def test_list_root_is_the_listing_with_totals_and_injected_updates(root):
    import pytest

    from vmm.core.errors import UsageError
    from vmm.core.store import catalog

    make_model(root, "org/a", {"w.bin": blob("a", 3000)})
    make_model(root, "hand", {"w.bin": blob("h", 1000)}, managed=False)
    listing = catalog.list_root(root, "size")
    assert [m.name for m in listing.models] == ["org/a", "hand"]
    assert listing.totals.models == 2 and listing.totals.apparent_bytes == 4000
    assert listing.warnings == []

    class Row:
        def __init__(self, name):
            self.name, self.error = name, "boom"

    asked = []
    checked = catalog.list_root(root, "name", lambda r, models: asked.extend(models) or [Row("org/a")])
    assert [m.name for m in asked] == ["org/a"]          # managed models only
    by_name = {m.name: m for m in checked.models}
    assert by_name["org/a"].update.error == "boom" and by_name["hand"].update is None
    assert checked.warnings == ["org/a: update check failed: boom"]
    with pytest.raises(UsageError):
        catalog.list_root(root, "colour")
