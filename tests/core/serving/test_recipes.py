"""vmm's dry-run plan against the vLLM recipes on the recipes' own models and hardware
(tests/data/recipes.json: vllm-project/recipes, commit and path per entry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmm.core.serving import recipes

DATA = Path(__file__).resolve().parents[2] / "data"
TABLE = recipes.load(DATA / "recipes.json")
ENTRIES = TABLE["entries"]


def _id(entry):
    return f"{entry['model']}@{entry['gpus']}"


def test_every_entry_names_its_recipe_file_and_commit():
    assert len(ENTRIES) >= 10
    for entry in ENTRIES:
        assert entry["recipe"]["repo"] == "vllm-project/recipes"
        assert len(entry["recipe"]["commit"]) == 40 and entry["recipe"]["path"].startswith("models/")
        assert (DATA / "real_configs" / entry["config"]).is_file()


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_the_plan_is_one_of_the_recipes_layouts_on_all_its_gpus(entry):
    got = recipes.compare(entry, DATA / "real_configs")
    if got.plan is None:
        # the one gap: a mirrored config without its MTP key cannot be asked for MTP
        assert entry["speculative"] and not recipes.mtp_in_config(entry, DATA / "real_configs"), got.error
        assert "no MTP layers" in got.error
        entry = dict(entry, speculative=None)
        got = recipes.compare(entry, DATA / "real_configs")
    count = int(entry["gpus"].split("x")[0])
    plan = got.plan
    assert plan.tensor_parallel_size * plan.data_parallel_size == count
    assert got.layout in entry["layouts"], (got.layout, entry["layouts"])
    assert plan.max_model_len >= entry["context_length"]
    assert plan.max_concurrency and plan.max_concurrency >= 1


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["speculative"]], ids=_id)
def test_speculative_decoding_as_the_recipe_types_it(entry):
    got = recipes.compare(entry, DATA / "real_configs")
    if got.plan is None:
        pytest.skip("config mirror lacks the MTP key (see the layout test)")
    want = entry["speculative"]
    have = got.plan.speculative_config
    assert have["num_speculative_tokens"] == want["num_speculative_tokens"]
    if want["method"] == "eagle3":
        assert (have["method"], have["model"]) == ("eagle3", want["model"])
    else:
        # vLLM 0.32/0.34 replace the per-architecture names (qwen3_next_mtp) with "mtp"
        assert have["method"] == "mtp"


def test_an_older_vllm_budget_caps_what_034_serves_whole():
    entry = next(e for e in ENTRIES if e["gpus"] == "8xH20")
    old = recipes.compare(entry, DATA / "real_configs", vllm_version="0.33.0").plan
    new = recipes.compare(entry, DATA / "real_configs", vllm_version="0.34.0").plan
    assert old.gpu_memory_utilization == 0.92 and new.gpu_memory_utilization is None
    assert old.max_model_len < entry["context_length"] <= new.max_model_len


def test_the_docs_table_is_current():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "recipes_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
