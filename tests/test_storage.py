"""Stores: unsafe keys refused, symlinks that escape a local root refused, and a model bundle loaded from a bucket."""

from __future__ import annotations

import json

import pytest
from conftest import esc50_clip

from earshot.errors import StorageError
from earshot.pipeline.storage import LocalStore, S3Store, open_store, safe_key


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a//b", "./a", "C:evil", "a\x00b",
                                 "", "a/.", ".."])
def test_unsafe_keys_rejected(key, tmp_path):
    with pytest.raises(StorageError) as e:
        safe_key(key)
    assert e.value.reason == "unsafe_key"
    with pytest.raises(StorageError):
        LocalStore(tmp_path).put_atomic(key, b"x")
    assert list(tmp_path.parent.glob("x")) == [] and not (tmp_path.parent / "evil").exists()


def test_local_store_keys_and_symlink_escape(tmp_path):
    store = LocalStore(tmp_path / "root", create=True)
    key = "dir with space/été 深い.wav.json"
    store.put_atomic(key, b"{}")
    assert [o.key for o in store.list()] == [key]
    assert store.get(key) == b"{}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    for key in ("link/x.json", "link/new folder/x.json"):  # also through folders not created yet
        with pytest.raises(StorageError):
            store.put_atomic(key, b"{}")
    assert not list(outside.iterdir())
    assert isinstance(open_store("s3://b/some/prefix"), S3Store)
    assert open_store("s3://b/some/prefix").prefix == "some/prefix/"


def test_model_bundle_loads_from_s3(tagger, s3, tmp_path, monkeypatch):
    """A bundle uploaded to a bucket prefix serves like a local one; a changed card is fetched again."""
    import earshot

    monkeypatch.setenv("EARSHOT_HOME", str(tmp_path / "home"))
    c = s3.client()
    card = dict(tagger.card, name="remote-tagger")
    for f in tagger.bundle.path.glob("*.onnx"):  # every graph of the bundle, as `aws s3 sync` would copy them
        c.put_object(Bucket="earshot", Key=f"models/tagger/{f.name}", Body=f.read_bytes())
    c.put_object(Bucket="earshot", Key="models/tagger/card.json", Body=json.dumps(card).encode())
    clip = esc50_clip("dog")
    remote = earshot.load("s3://earshot/models/tagger")
    assert set(remote.graphs) == set(tagger.graphs)
    p, ref = remote.predict(clip, top_k=3), tagger.predict(clip, top_k=3)
    assert p.model == "remote-tagger" and p.labels == ref.labels and p.probabilities == ref.probabilities
    c.put_object(Bucket="earshot", Key="models/tagger/card.json",
                 Body=json.dumps(dict(card, name="remote-tagger-2")).encode())
    assert earshot.load("s3://earshot/models/tagger").name == "remote-tagger-2"
    with pytest.raises(earshot.StorageError) as e:
        earshot.load("s3://earshot/models/nothing-here")
    assert e.value.reason == "not_found"
