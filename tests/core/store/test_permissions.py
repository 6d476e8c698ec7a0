"""Files vmm writes honour the umask: a models root several users share stays readable."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import run_vmm
from storage_helpers import blob, make_model

from vmm.core import fsutil
from vmm.core.store import locking, manifests, paths


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_is_read_without_changing_it(umask):
    assert fsutil.current_umask() == umask
    assert fsutil.current_umask() == umask
    assert fsutil.file_mode() == 0o666 & ~umask


def test_metadata_pins_locks_and_atomic_files_follow_the_umask(umask, root):
    want = 0o666 & ~umask         # 0644 under 022, 0664 under 002, 0600 under 077
    model = make_model(root, "org/m", {"w.bin": blob("m", 1000)})
    assert run_vmm("pin", "org/m").exit_code == 0
    assert run_vmm("inspect", "org/m").exit_code in (0, 5)     # records a use: manifest rewritten
    with locking.model_lock(root, "org--m", "pull"):
        pass
    state = root / ".vmm" / "servers" / "x.json"
    fsutil.atomic_write_json(state, {"pid": 1})
    for path in (paths.manifest_path(model), paths.pin_path(root, "org--m"),
                 paths.lock_path(root, "org--m"), paths.manifest_lock_path(model), state):
        assert _mode(path) == want, (path, oct(_mode(path)))
    assert manifests.read_manifest(model).use_counts.get("inspect") == 1
    # Directories vmm makes follow it too (group-writable under 002).
    assert _mode(root / ".vmm" / "locks") == 0o777 & ~umask
    # No temporary names left.
    assert not list(root.rglob("*.tmp"))


def test_a_new_lock_under_umask_002_is_group_writable_so_other_members_can_lock(root):
    old = os.umask(0o002)
    try:
        with locking.model_lock(root, "org--m", "serve", shared=True):
            pass
    finally:
        os.umask(old)
    assert _mode(paths.lock_path(root, "org--m")) & stat.S_IWGRP
