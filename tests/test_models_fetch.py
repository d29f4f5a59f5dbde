"""fetch-weights and checkpoint resolution, offline: file:// URLs and a refused network, never the internet."""
import hashlib
import urllib.error
import urllib.request

import pytest
import yaml

from sam_histo.config import ConfigError
from sam_histo.models import fetch
from sam_histo.models.weights import MissingWeightsError


def _manifest(tmp_path, url, sha=None, size=None):
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"artifacts": {"toy_ckpt": {
        "kind": "sam2_checkpoint", "aliases": ["toy"], "url": url, "filename": "toy.pt",
        "license": "Apache-2.0", "size_bytes": size, "sha256": sha}}}))
    return path


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SAM_HISTO_OFFLINE", raising=False)


def test_real_manifest_lists_the_known_artifacts(capsys):
    man = fetch.load_manifest()
    for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
                 "plip", "quiltnet_b32", "conch", "biomedclip"):
        assert name in man and man[name]["license"] and man[name]["source"]
    for entry in man.values():
        assert entry.get("sha256") is None or len(entry["sha256"]) == 64
    assert fetch.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_large" in out and "CC-BY-NC-ND-4.0" in out


def test_download_from_file_url_verifies_and_caches(tmp_path, online):
    payload = b"pretend checkpoint" * 100
    src = tmp_path / "src.pt"
    src.write_bytes(payload)
    man = _manifest(tmp_path, src.as_uri(), hashlib.sha256(payload).hexdigest(), len(payload))
    got = fetch.fetch("toy", cache=str(tmp_path / "cache"), manifest=man)
    assert got == tmp_path / "cache" / "sam2" / "toy.pt" and got.read_bytes() == payload
    src.unlink()  # the second call must use the cache, not the URL
    assert fetch.fetch("toy_ckpt", cache=str(tmp_path / "cache"), manifest=man) == got
    assert fetch.resolve_checkpoint("toy", cache=str(tmp_path / "cache"), manifest=man) == got


def test_a_download_that_does_not_verify_is_an_error(tmp_path, online):
    src = tmp_path / "src.pt"
    src.write_bytes(b"abc")
    man = _manifest(tmp_path, src.as_uri(), "0" * 64)
    with pytest.raises(fetch.FetchError, match="sha256 .* differs"):
        fetch.fetch("toy", cache=str(tmp_path / "cache"), manifest=man)
    assert not (tmp_path / "cache" / "sam2" / "toy.pt").exists()


def test_offline_fails_at_once_with_the_url_and_the_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: called.append(a))
    man = _manifest(tmp_path, "https://example.invalid/toy.pt")
    rc = fetch.main(["toy", "--cache", str(tmp_path / "c"), "--manifest", str(man)])
    err = capsys.readouterr().err
    assert rc == 1 and not called
    assert "https://example.invalid/toy.pt" in err and str(tmp_path / "c" / "sam2" / "toy.pt") in err


def test_unreachable_server_fails_with_the_manual_route(tmp_path, online, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    man = _manifest(tmp_path, "https://example.invalid/toy.pt")
    with pytest.raises(fetch.FetchError, match="put it at .*toy.pt"):
        fetch.fetch("toy", cache=str(tmp_path / "c"), manifest=man, timeout=0.1)


def test_resolve_checkpoint_paths_names_and_errors(tmp_path):
    file = tmp_path / "mine.safetensors"
    file.write_bytes(b"x")
    assert fetch.resolve_checkpoint(str(file)) == file
    with pytest.raises(MissingWeightsError) as err:
        fetch.resolve_checkpoint("hiera_t", cache=str(tmp_path / "empty"))
    text = str(err.value)
    assert "sam2.1_hiera_tiny.pt" in text and "fetch-weights sam2.1_hiera_tiny" in text
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in text
    with pytest.raises(MissingWeightsError, match="fetch-weights NAME"):
        fetch.resolve_checkpoint(str(tmp_path / "gone.pt"))
    with pytest.raises(ConfigError, match="neither a file nor a known name"):
        fetch.resolve_checkpoint("hiera_q")
    with pytest.raises(ConfigError, match="not a SAM2 checkpoint"):
        fetch.resolve_checkpoint("plip")
