"""The OCI commands' bad input: one error line, exit 2 (no registry needed)."""

from __future__ import annotations

import json

import builders as b
from conftest import assert_error_line, run_vmm


def _managed(root):
    return b.make_model(root, "acme/tiny", cfg=b.TINY_LLAMA)


def test_hub_and_oci_options_do_not_mix(root):
    assert_error_line(run_vmm("pull", "oci://127.0.0.1:9/x:1", "--include", "*.json"), 2, "--include")
    assert_error_line(run_vmm("pull", "oci://127.0.0.1:9/x:1", "--offline"), 2, "--offline")
    assert_error_line(run_vmm("pull", "acme/tiny", "--name", "a/b"), 2, "oci://")
    assert_error_line(run_vmm("pull", "acme/tiny", "--insecure"), 2, "oci://")


def test_push_refuses_digests_unmanaged_models_and_bad_workers(root):
    _managed(root)
    b.make_hand_made_dir(root, "my-finetune")
    digest = "sha256:" + "a" * 64
    assert_error_line(run_vmm("push", "acme/tiny", f"127.0.0.1:9/x@{digest}"), 2, "tag, not a digest")
    assert_error_line(run_vmm("push", "my-finetune", "127.0.0.1:9/x:1"), 2, "not a managed model")
    assert_error_line(run_vmm("push", "acme/tiny", "127.0.0.1:9/x:1", "--workers", "0"), 2, "--workers")
    assert_error_line(run_vmm("push", "acme/tiny", "no-registry/x"), 2, "registry host")


def test_export_refuses_a_non_empty_dir_and_bad_tags_and_import_options(root, tmp_path):
    _managed(root)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert_error_line(run_vmm("export", "acme/tiny", full), 2, "not an empty directory")
    assert_error_line(run_vmm("export", "acme/tiny", tmp_path / "new", "--tag", "bad tag"), 2, "bad tag")
    layout = tmp_path / "layout"
    assert run_vmm("export", "acme/tiny", layout).exit_code == 0
    assert_error_line(run_vmm("import", layout, "--move"), 2, "--move")
    assert_error_line(run_vmm("import", layout, "--tag", "nope"), 2, "--tag")
    assert_error_line(run_vmm("import", tmp_path / "full", "--tag", "x"), 2, "--tag is for OCI layouts")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(dict(index["manifests"][0], annotations={"org.opencontainers.image.ref.name": "two"}))
    (layout / "index.json").write_text(json.dumps(index))
    assert_error_line(run_vmm("import", layout, "--root", tmp_path / "other"), 2, "2 matching images")
    assert run_vmm("import", layout, "--tag", "two", "--root", tmp_path / "other").exit_code == 0


def test_push_and_export_refuse_a_model_whose_file_changed(root, tmp_path):
    model = _managed(root)
    with open(model / "config.json", "a") as handle:
        handle.write(" ")
    assert_error_line(run_vmm("export", "acme/tiny", tmp_path / "out"), 5, "config.json")
