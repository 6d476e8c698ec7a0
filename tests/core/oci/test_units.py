"""Pure pieces of the OCI support: references, the artifact format, auth files, challenges."""

from __future__ import annotations

import base64
import json

import pytest

from vmm.core.errors import IntegrityError, UsageError
from vmm.core.oci import artifact as art
from vmm.core.oci import auth, reference


def test_reference_parses_tags_digests_ports_and_refuses_an_implicit_registry():
    ref = reference.parse("oci://127.0.0.1:5000/models/qwen:v1")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("127.0.0.1:5000", "models/qwen", "v1", None)
    assert ref.reference == "v1" and ref.hostname == "127.0.0.1"
    dig = "sha256:" + "a" * 64
    ref = reference.parse(f"registry.example.com/a/b@{dig}")
    assert ref.reference == dig and ref.tag is None
    assert reference.parse("localhost/x").reference == "latest"
    for bad in ("qwen/qwen2", "docker://r.io/x", "r.io/UPPER", "r.io/x:bad tag", "r.io/x@sha256:abc", "r.io"):
        with pytest.raises(UsageError):
            reference.parse(bad)


def test_plain_http_only_for_loopback_or_named_insecure(monkeypatch):
    assert reference.scheme_for(reference.parse("127.0.0.1:5000/x")) == "http"
    assert reference.scheme_for(reference.parse("localhost:5000/x")) == "http"
    assert reference.scheme_for(reference.parse("registry.lan:5000/x")) == "https"
    assert reference.scheme_for(reference.parse("registry.lan:5000/x"), insecure=True) == "http"
    monkeypatch.setenv("VMM_INSECURE_REGISTRIES", "other.lan, registry.lan:5000")
    assert reference.scheme_for(reference.parse("registry.lan:5000/x")) == "http"
    assert reference.scheme_for(reference.parse("registry.lan:6000/x")) == "https"


def _files():
    return [art.LayerFile("model.safetensors", 10, "sha256:" + "1" * 64, art.WEIGHT_RAW, "f" * 40),
            art.LayerFile("config.json", 3, "sha256:" + "2" * 64, art.WEIGHT_CONFIG_RAW)]


def test_artifact_is_modelpack_one_raw_layer_per_file_and_round_trips():
    a = art.build("org/m", "main", "c" * 40, None, _files(), "safetensors", "2026-12-06T00:00:00Z")
    doc = json.loads(a.manifest)
    assert doc["mediaType"] == art.OCI_MANIFEST and doc["artifactType"] == art.ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == art.CONFIG_TYPE
    assert [layer["annotations"][art.ANN_FILEPATH] for layer in doc["layers"]] == ["config.json", "model.safetensors"]
    assert all(layer["annotations"][art.ANN_TITLE] == layer["annotations"][art.ANN_FILEPATH] for layer in doc["layers"])
    assert json.loads(a.config)["modelfs"]["diffIds"] == [layer["digest"] for layer in doc["layers"]]
    assert doc["annotations"][art.ANN_HUB_ID] == "org/m" and doc["annotations"][art.ANN_HUB_COMMIT] == "c" * 40
    # Deterministic: the same model gives the same digest.
    assert art.build("org/m", "main", "c" * 40, None, list(reversed(_files())), "safetensors",
                     "2026-12-06T00:00:00Z").manifest_digest == a.manifest_digest
    back = art.parse(a.manifest, "here")
    assert back.repo_id == "org/m" and back.commit == "c" * 40
    assert {(f.path, f.digest, f.git_sha1) for f in back.files} == {(f.path, f.digest, f.git_sha1) for f in _files()}


def test_media_types_by_file_kind():
    assert art.media_type_for("model-00001-of-00002.safetensors") == art.WEIGHT_RAW
    assert art.media_type_for("x/model.Q4_K_M.gguf") == art.WEIGHT_RAW
    assert art.media_type_for("tokenizer.json") == art.WEIGHT_CONFIG_RAW
    assert art.media_type_for("README.md") == art.DOC_RAW
    assert art.media_type_for("LICENSE") == art.DOC_RAW
    assert art.media_type_for("modeling_x.py") == art.CODE_RAW


def test_non_model_manifests_are_usage_errors_and_unsafe_paths_integrity_errors():
    image = {"schemaVersion": 2, "mediaType": art.OCI_MANIFEST,
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64, "size": 1}]}
    with pytest.raises(UsageError, match="not a model artifact"):
        art.parse(json.dumps(image).encode(), "x")
    with pytest.raises(UsageError, match="image index"):
        art.parse(json.dumps({"schemaVersion": 2, "mediaType": art.OCI_INDEX, "manifests": []}).encode(), "x")
    tarred = json.loads(art.build("org/m", None, None, None, _files(), None, None).manifest)
    tarred["layers"][0]["mediaType"] = "application/vnd.cncf.model.weight.v1.tar"
    with pytest.raises(UsageError, match="raw"):
        art.parse(json.dumps(tarred).encode(), "x")
    evil = json.loads(art.build("org/m", None, None, None, _files(), None, None).manifest)
    evil["layers"][0]["annotations"][art.ANN_FILEPATH] = "../../etc/passwd"
    with pytest.raises(IntegrityError, match="escape"):
        art.parse(json.dumps(evil).encode(), "x")
    with pytest.raises(IntegrityError):
        art.parse(b"{not json", "x")


def test_credentials_from_podman_then_docker_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert auth.credentials("r.lan:5000") is None
    docker = tmp_path / "home" / ".docker" / "config.json"
    docker.parent.mkdir(parents=True)
    docker.write_text(json.dumps({"auths": {"https://r.lan:5000/v1/": {"auth": base64.b64encode(b"dock:pw").decode()}}}))
    assert auth.credentials("r.lan:5000") == ("dock", "pw")
    assert auth.credentials("other.lan") is None
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(
        json.dumps({"auths": {"r.lan:5000": {"auth": base64.b64encode(b"pod:man:colon").decode()}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert auth.credentials("r.lan:5000") == ("pod", "man:colon")
    explicit = tmp_path / "auth.json"
    explicit.write_text(json.dumps({"auths": {"r.lan:5000": {"auth": base64.b64encode(b"first:1").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert auth.credentials("R.LAN:5000") == ("first", "1")


def test_challenge_parsing_and_where_credentials_may_go():
    scheme, params = auth.parse_challenge('Bearer realm="https://auth.example.com/token",service="reg",'
                                          'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example.com/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    assert auth.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert auth.may_send_credentials("https://auth.example.com/token", "reg.example.com")
    assert auth.may_send_credentials("http://127.0.0.1:5000/token", "127.0.0.1")
    assert not auth.may_send_credentials("http://evil.example.com/token", "reg.example.com")
