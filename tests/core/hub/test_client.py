"""The Hub client: malformed answers are exit 4 with one line; vmm's own bugs are exit 1."""

from __future__ import annotations

import json

import pytest
from conftest import assert_error_line, run_vmm

from vmm.core.hub import client, pull

FILES = {"config.json": b"{}", "model.safetensors": b"\0" * 1000}
INFO = "/api/models/org/tiny/revision/main"
SHA = "a" * 40
GOOD_LFS = {"sha256": "b" * 64, "size": 1000, "pointerSize": 130}


def _sib(**fields):
    return {"rfilename": "model.safetensors", "size": 1000, "blobId": "c" * 40, "lfs": GOOD_LFS, **fields}


MALFORMED = {
    "not JSON": b"{not json",
    "nested 100,000 deep": b'{"sha": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "a list, not an object": json.dumps([{"sha": SHA}]).encode(),
    "no sha": json.dumps({"siblings": []}).encode(),
    "sha a number": json.dumps({"sha": 5, "siblings": []}).encode(),
    "sha not a commit": json.dumps({"sha": "main", "siblings": []}).encode(),
    "siblings not a list": json.dumps({"sha": SHA, "siblings": {"a": 1}}).encode(),
    "entry not an object": json.dumps({"sha": SHA, "siblings": ["config.json"]}).encode(),
    "entry without path": json.dumps({"sha": SHA, "siblings": [{"size": 3}]}).encode(),
    "entry without size": json.dumps({"sha": SHA, "siblings": [{"rfilename": "a"}]}).encode(),
    "size a string": json.dumps({"sha": SHA, "siblings": [_sib(size="1000")]}).encode(),
    "size negative": json.dumps({"sha": SHA, "siblings": [_sib(size=-1)]}).encode(),
    "lfs not an object": json.dumps({"sha": SHA, "siblings": [_sib(lfs="yes")]}).encode(),
    "lfs sha not a string": json.dumps({"sha": SHA, "siblings": [_sib(lfs={"sha256": 12})]}).encode(),
    "lfs without sha": json.dumps({"sha": SHA, "siblings": [_sib(lfs={"size": 1000})]}).encode(),
    "blob id not a string": json.dumps({"sha": SHA, "siblings": [_sib(blobId=[1])]}).encode(),
}


@pytest.fixture
def hub(hub):
    """The shared local Hub (conftest.py) holding one small repo."""
    hub.add_repo("org/tiny", FILES)
    return hub


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_each_malformed_answer_is_one_line_exit_4_without_retries(hub, root, shape):
    hub.metadata_override[INFO] = MALFORMED[shape]
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 4, "malformed answer", hub.url)
    assert len([r for r in hub.requests if r.path.startswith(INFO)]) == 1   # not retried
    assert not (root / "org--tiny" / "model.safetensors").exists()


def test_a_good_answer_with_every_optional_field_missing_is_accepted(hub, root):
    # No blobId, no lfs: a file known by its size only (still pulled).
    hub.metadata_override[INFO] = json.dumps(
        {"sha": SHA, "siblings": [{"rfilename": "config.json", "size": 2}]}).encode()
    snap = client.fetch_snapshot("org/tiny")
    assert snap.commit == SHA and snap.files == [client.RemoteFile("config.json", 2, None, None)]


@pytest.mark.parametrize("error", [ValueError, KeyError, TypeError, AttributeError])
def test_a_bug_in_vmm_while_reading_the_answer_is_exit_1_not_a_hub_error(hub, root, monkeypatch, error):
    def buggy(entry, index):
        raise error("vmm's own mistake")

    monkeypatch.setattr(client, "_file_of", buggy)
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 1, "internal error", error.__name__)
    assert len([r for r in hub.requests if r.path.startswith(INFO)]) == 1


def test_a_bug_in_vmm_after_the_answer_is_exit_1(hub, root, monkeypatch):
    def buggy(*args, **kwargs):
        raise KeyError("selection bug")

    monkeypatch.setattr(pull, "select_files", buggy)
    assert_error_line(run_vmm("pull", "org/tiny"), 1, "internal error", "KeyError")


def test_ls_updates_reports_a_malformed_answer_in_the_models_row(hub, root):
    assert run_vmm("pull", "org/tiny").exit_code == 0
    hub.metadata_override[INFO] = json.dumps({"sha": 7}).encode()
    run = run_vmm("ls", "--updates", "--json")
    assert run.exit_code == 0, run.stderr
    row = run.json()["models"][0]["update"]
    assert row["update_available"] is None and "malformed answer" in row["error"]
