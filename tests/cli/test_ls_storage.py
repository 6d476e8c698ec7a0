"""vmm ls extensions of the storage work: --sort, uses, totals, --updates."""

from __future__ import annotations

import dataclasses
import time

from conftest import assert_error_line, contract_keys, run_vmm
from hubserver import HubServer
from storage_helpers import COMMIT, blob, make_model

from vmm.core.store import dedup, manifests

CONTRACT = contract_keys("ls", after="each model:")


def _root_with_usage(root):
    now = time.time()
    make_model(root, "org/big", {"w.bin": blob("big", 300_000)}, last_used=now - 3600)
    make_model(root, "org/small", {"w.bin": blob("small", 1_000)}, last_used=now - 60)
    make_model(root, "org/mid", {"w.bin": blob("mid", 50_000)})
    make_model(root, "hand", {"w.bin": blob("hand", 10_000), "config.json": b"{}"}, managed=False)


def test_ls_sort_size_and_used(root):
    _root_with_usage(root)
    by_size = [m["name"] for m in run_vmm("ls", "--sort", "size", "--json").json()["models"]]
    assert by_size == ["org/big", "org/mid", "hand", "org/small"]
    by_used = [m["name"] for m in run_vmm("ls", "--sort", "used", "--json").json()["models"]]
    assert by_used[:2] == ["org/small", "org/big"]
    assert set(by_used[2:]) == {"org/mid", "hand"}
    by_name = [m["name"] for m in run_vmm("ls", "--json").json()["models"]]
    assert by_name == ["hand", "org/big", "org/mid", "org/small"]
    assert_error_line(run_vmm("ls", "--sort", "colour"), 2, "unknown sort order", "name, size, used")


def test_ls_shows_usage_counts_after_inspect_and_the_table_sorts_by_use(root):
    from builders import make_model as make_real

    make_real(root, "org/real")
    make_real(root, "org/other")
    for _ in range(2):
        assert run_vmm("inspect", "org/real").exit_code == 0
    doc = run_vmm("ls", "--json", "--sort", "used").json()
    first = doc["models"][0]
    assert first["name"] == "org/real" and first["uses"] == 2 and first["use_counts"] == {"inspect": 2}
    assert first["last_used"] is not None
    table = run_vmm("ls", "--sort", "used").stdout.splitlines()
    assert table[0].split()[-2:] == ["USES", "MANAGED"]
    assert table[1].startswith("org/real") and table[1].split()[-2:] == ["2", "yes"]


def test_ls_totals_count_hardlinked_files_once(root):
    shared = blob("shared", 200_000)
    make_model(root, "org/a", {"w.bin": shared})
    make_model(root, "org/b", {"w.bin": shared})
    before = run_vmm("ls", "--json").json()
    assert set(before["models"][0]) >= CONTRACT
    assert before["totals"]["shared_bytes"] == 0
    assert before["totals"]["free_bytes"] > 0
    dedup.dedup(root)
    after = run_vmm("ls", "--json").json()["totals"]
    assert after["apparent_bytes"] == before["totals"]["apparent_bytes"]
    assert after["shared_bytes"] == len(shared)
    assert after["total_bytes"] == before["totals"]["total_bytes"] - len(shared)
    last = run_vmm("ls").stdout.splitlines()[-1]
    assert last.startswith("total ") and "in 2 models" in last and "shared by hardlinks" in last
    assert last.endswith("free on the filesystem")


def test_ls_shows_pins(root):
    make_model(root, "org/a", {"w.bin": b"x"})
    assert run_vmm("pin", "org/a").exit_code == 0
    row = run_vmm("ls").stdout.splitlines()[1]
    assert row.endswith("yes, pinned")
    assert run_vmm("ls", "--json").json()["models"][0]["pinned"] is True


# --------------------------------------------------------------------------- --updates

def _managed_at(root, repo, commit):
    model = make_model(root, repo, {"w.bin": b"x"})
    manifests.update(model, lambda m: dataclasses.replace(m, commit=commit))
    return model


def test_ls_updates_asks_the_hub_once_per_managed_model(root, hub, monkeypatch):
    same = hub.add_repo("org/same", {"w.bin": b"x"})
    old = hub.add_repo("org/moved", {"w.bin": b"x"})
    new = hub.add_repo("org/moved", {"w.bin": b"y"})
    hub.add_repo("org/broken", {"w.bin": b"x"})
    hub.metadata_override["/api/models/org/broken/revision/main"] = b"<html>not json"
    _managed_at(root, "org/same", same)
    _managed_at(root, "org/moved", old)
    _managed_at(root, "org/gone", COMMIT)         # not on the Hub: 404
    _managed_at(root, "org/broken", COMMIT)
    make_model(root, "hand", {"config.json": b"{}"}, managed=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub.requests.clear()
    run = run_vmm("ls", "--updates", "--json")
    assert run.exit_code == 0, run.stderr
    rows = {m["name"]: m["update"] for m in run.json()["models"]}
    assert rows["org/same"]["update_available"] is False
    assert rows["org/moved"]["update_available"] is True and rows["org/moved"]["remote_commit"] == new
    assert rows["org/gone"]["update_available"] is None and "404" in rows["org/gone"]["error"]
    assert rows["org/broken"]["error"]
    assert rows["hand"] is None
    asked = [r for r in hub.requests if "/revision/" in r.path]
    assert len(asked) == 4
    assert all(r.headers.get("Authorization") == "Bearer hf_test_token" for r in asked)
    assert "org/gone" in run.stderr and "update check failed" in run.stderr
    table = run_vmm("ls", "--updates").stdout
    moved_row = next(ln for ln in table.splitlines() if ln.startswith("org/moved"))
    assert moved_row.endswith(f"yes ({old[:7]} -> {new[:7]})")
    # Without --updates the documents keep their keys: no `update`.
    assert all("update" not in m for m in run_vmm("ls", "--json").json()["models"])


def test_ls_updates_offline_is_refused(root, monkeypatch):
    make_model(root, "org/same", {"w.bin": b"x"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_error_line(run_vmm("ls", "--updates"), 2, "HF_HUB_OFFLINE")


def test_ls_updates_with_the_hub_unreachable_reports_each_model(root):
    make_model(root, "org/same", {"w.bin": b"x"})
    run = run_vmm("ls", "--updates", "--json")
    assert run.exit_code == 0
    assert "cannot reach the Hub" in run.json()["models"][0]["update"]["error"]


def test_ls_updates_against_the_local_hub_server(root, monkeypatch):
    with HubServer() as hub:
        first = hub.add_repo("org/tiny", {"config.json": b"{}", "w.bin": b"v1"})
        pinned_sha = hub.add_repo("org/fixed", {"config.json": b"{}"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        tiny = make_model(root, "org/tiny", {"w.bin": b"v1"})
        from vmm.core.store import manifests

        manifest = manifests.read_manifest(tiny)
        manifest.commit = first
        manifests.write_manifest(tiny, manifest)
        fixed = make_model(root, "org/fixed", {"config.json": b"{}"})
        manifest = manifests.read_manifest(fixed)
        manifest.revision = manifest.commit = pinned_sha
        manifests.write_manifest(fixed, manifest)
        rows = {m["name"]: m["update"] for m in run_vmm("ls", "--updates", "--json").json()["models"]}
        assert rows["org/tiny"]["update_available"] is False and rows["org/tiny"]["remote_commit"] == first
        second = hub.add_repo("org/tiny", {"config.json": b"{}", "w.bin": b"v2"})
        rows = {m["name"]: m["update"] for m in run_vmm("ls", "--updates", "--json").json()["models"]}
    assert second != first
    assert rows["org/tiny"]["update_available"] is True and rows["org/tiny"]["remote_commit"] == second
    assert rows["org/fixed"]["update_available"] is False and rows["org/fixed"]["revision"] == pinned_sha
