from pathlib import Path

import pytest

from vmm.core.errors import IntegrityError, UsageError
from vmm.core.names import get_model_path_from_name, parse_model_name, safe_repo_path


def test_hub_id_maps_to_double_dash_dir(tmp_path):
    assert get_model_path_from_name("Qwen/Qwen2-7B", tmp_path) == tmp_path / "Qwen--Qwen2-7B"


def test_default_root_is_models(monkeypatch):
    monkeypatch.delenv("VMM_ROOT", raising=False)
    assert get_model_path_from_name("a/b") == Path("/models/a--b")


def test_dir_name_form_is_accepted():
    assert parse_model_name("Qwen--Qwen2-7B").repo_id == "Qwen/Qwen2-7B"


@pytest.mark.parametrize("name,repo,rev,quant", [
    ("org/m@main", "org/m", "main", None),
    ("org/m:Q4_K_M", "org/m", None, "Q4_K_M"),
    ("org/m:Q4_K_M@v1.0", "org/m", "v1.0", "Q4_K_M"),
    ("org/m@refs/pr/1:Q8_0", "org/m", "refs/pr/1", "Q8_0"),
    ("gpt2", "gpt2", None, None),
])
def test_revision_and_quant_are_parsed(name, repo, rev, quant):
    ref = parse_model_name(name)
    assert (ref.repo_id, ref.revision, ref.quant) == (repo, rev, quant)


@pytest.mark.parametrize("bad", [
    "", "..", "../etc", "org/..", "/abs/path", "org//name", "org/name/extra", "a\x00b/c",
    "org/na\nme", "org\\name", "C:/x", "org/-", "~/x", "a--b--c", "org/na..me", "org/name@",
    "org/name@../../x", "org/name:", "org/name:Q4/../x", ".hidden/x", "org/ná",
])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(UsageError) as info:
        parse_model_name(bad)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a\\b", ".vmm/manifest.json", "", "a//b"])
def test_repo_paths_never_escape_the_model_dir(tmp_path, bad):
    with pytest.raises(IntegrityError):
        safe_repo_path(tmp_path, bad)


def test_nested_repo_paths_are_fine(tmp_path):
    assert safe_repo_path(tmp_path, "original/params.json") == tmp_path / "original" / "params.json"
