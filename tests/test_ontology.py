"""What a label means and which labels a user keeps: the AudioSet ontology, `links`, `--classes` / `--exclude`."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import soundfile as sf
from apiserver import server_process
from conftest import DATA, esc50_clip

from earshot import ontology, ranking
from earshot.errors import LabelError
from earshot.events import EventTracker
from earshot.labels import audioset

STREET_MUSIC = DATA / "urbansound8k_subset" / "audio" / "fold1" / "108041-9-0-11.wav"


def earshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "earshot.cli", *args], capture_output=True, timeout=300,
                          env=os.environ.copy())


@pytest.fixture(scope="module")
def clips(tmp_path_factory, tagger):
    """A real dog clip (ESC-50) mixed over real street music (UrbanSound8K), and music → dog → music in sequence."""
    root = tmp_path_factory.mktemp("mixtures")
    dog = tagger.decode(esc50_clip("dog", 0))
    music = tagger.decode(STREET_MUSIC)
    n = max(len(dog), len(music))
    mix = np.pad(dog, (0, n - len(dog))) + 0.7 * np.pad(music, (0, n - len(music)))
    sf.write(root / "dog_and_music.wav", mix, tagger.sample_rate)
    sf.write(root / "music_dog_music.flac", 0.8 * np.concatenate([music, dog, music]), tagger.sample_rate)
    return {"mix": root / "dog_and_music.wav", "seq": root / "music_dog_music.flac", "dog_start": len(music) / 32000,
            "dog_end": (len(music) + len(dog)) / 32000}


def ids_of(tagger, names):
    return [tagger.label_ids[tagger.labels.index(n)] for n in names]


def test_ontology_shape():
    o = ontology.load()
    assert len(o) == 632
    assert sorted(o.name(r) for r in o.roots) == sorted(
        ["Human sounds", "Animal", "Music", "Natural sounds", "Sounds of things", "Source-ambiguous sounds",
         "Channel, environment and background"])
    dog = o.id("Dog")
    assert dog == "/m/0bt9lr"
    assert "/m/0jbk" in o.ancestors(dog)
    assert [o.name(i) for i in o.lineage("Bark")] == ["Dog", "Domestic animals, pets", "Animal"]
    assert [o.name(i) for i in o.parents("Growling")] == ["Dog", "Cat", "Roaring cats (lions, tigers)",
                                                         "Canidae, dogs, wolves"]
    music = o.subtree("Music")
    assert o.id("Guitar") in music and o.id("Music") in music and dog not in music
    assert o.id("Music") not in o.descendants("Music") and o.id("Electric guitar") in o.descendants("Music")
    assert o.lookup("  animal ") is o.lookup("/m/0jbk") is o.lookup("ANIMAL")
    assert o.lookup("rooster").name == "Chicken, rooster" and o.lookup("wild_animals").name == "Wild animals"
    assert o.lookup("Anmal") is None and "Anmal" not in o
    assert o.link("Dog") == "http://en.wikipedia.org/wiki/Dog"
    assert o.link("Human sounds") == "https://en.wikipedia.org/w/index.php?search=Human+sounds"
    assert o.description("Bark").startswith("Principal communication sound produced by dogs")
    names, mids = audioset()
    assert all(m in o.nodes and o.nodes[m].name == n for n, m in zip(names, mids))


def test_ontology_ships_as_package_data_with_its_licence():
    from importlib import resources

    res = resources.files("earshot.resources")
    assert len(json.loads(res.joinpath("audioset_ontology.json").read_text())) == 632
    assert "CC BY-SA 4.0" in res.joinpath("ONTOLOGY_LICENSE.txt").read_text()


def test_ontology_is_lazy_and_torch_free():
    code = ("import sys, earshot, earshot.classifier, earshot.cli; assert 'earshot.ontology' not in sys.modules; "
            "from earshot import ontology; assert len(ontology.load()) == 632; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_ranking_mask_is_applied_in_one_place():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1], dtype=np.float32)
    allowed = np.array([False, True, False, True, True])
    labels, probs, ids = ranking.ranked(scores, list("abcde"), list("ABCDE"), 2, allowed=allowed)
    assert (labels, probs, ids) == (["b", "d"], [0.8, 0.6], ["B", "D"])
    assert ranking.ranked(scores, list("abcde"), list("ABCDE"), 5, threshold=0.5, allowed=allowed)[0] == ["b", "d"]
    assert list(ranking.top(scores, 2)) == [0, 1]
    rows = np.tile(scores, (3, 1))
    tracker = EventTracker(list("abcde"), list("ABCDE"), [0.5] * 5, allowed=allowed)
    assert sorted(e.label for e in tracker.events(rows, [0, 1, 2], [1, 2, 3])) == ["b", "d"]
    single = EventTracker(list("abcde"), list("ABCDE"), [0.5] * 5, multi_label=False, allowed=allowed)
    assert [e.label for e in single.events(rows, [0, 1, 2], [1, 2, 3])] == ["b"]


def test_links_descriptions_and_parents_on_a_real_dog(tagger):
    plain = tagger.predict(esc50_clip("dog", 0), top_k=5)
    assert not {"links", "descriptions", "parents"} & set(plain.to_dict())
    p = tagger.predict(esc50_clip("dog", 0), top_k=5, links=True)
    assert p.labels == plain.labels and p.probabilities == plain.probabilities
    d = json.loads(json.dumps(p.to_dict()))
    assert len(d["links"]) == len(d["descriptions"]) == len(d["parents"]) == len(d["labels"]) == 5
    assert {"Dog", "Bark"} & set(d["labels"][:3])
    assert d["links"][0].startswith("http://en.wikipedia.org/wiki/")
    assert all(link.startswith(("http://", "https://")) for link in d["links"])
    assert all(isinstance(t, str) and len(t) > 20 for t in d["descriptions"])
    for label, parents in zip(d["labels"], d["parents"]):
        if label in ("Dog", "Bark"):
            assert parents[-1] == "Animal" and "Domestic animals, pets" in parents
    t = tagger.timeline(esc50_clip("dog", 0), links=True)
    assert t.links and len(t.links) == len(t.labels) and t.parents is not None


def test_classes_and_exclude_keep_and_drop_subtrees(tagger, clips):
    animal, music = ontology.subtree("Animal"), ontology.subtree("Music")
    plain = tagger.predict(clips["mix"], top_k=10)
    assert {"Dog", "Music"} <= set(plain.labels), plain.labels  # the mixture holds both, or this test proves nothing
    kept = tagger.predict(clips["mix"], top_k=10, classes=["Animal"])
    assert len(kept.labels) == 10 and "Dog" in kept.labels
    assert all(i in animal for i in kept.labels_info), kept.labels
    dropped = tagger.predict(clips["mix"], top_k=10, exclude=["animal"])
    assert "Music" in dropped.labels and not any(i in animal for i in dropped.labels_info), dropped.labels
    both = tagger.predict(clips["mix"], top_k=5, classes=["/m/0jbk", "Music"])
    assert {"Dog", "Music"} <= set(both.labels)
    assert all(i in animal or i in music for i in both.labels_info)
    narrowed = tagger.predict(clips["mix"], top_k=10, classes=["Animal"], exclude=["Dog"])
    assert "Animal" in narrowed.labels
    assert not any(i in ontology.subtree("Dog") for i in narrowed.labels_info), narrowed.labels


def test_timeline_segments_and_events_follow_the_filter(tagger, clips):
    animal = ontology.subtree("Animal")
    plain = tagger.timeline(clips["seq"], window=1.0, hop=0.5)
    assert {"Music", "Dog"} <= {e.label for e in plain.events}, plain.events
    assert any(i not in animal for s in plain.segments for i in ids_of(tagger, s.labels))
    kept = tagger.predict(clips["seq"], timeline=True, window=1.0, hop=0.5, classes=["Animal"])
    assert kept.events and all(e.label_id in animal for e in kept.events), kept.events
    assert all(clips["dog_start"] - 1 <= e.start and e.end <= clips["dog_end"] + 1 for e in kept.events)
    assert "Dog" in {e.label for e in kept.events}
    assert len(kept.segments) == len(plain.segments)
    assert all(i in animal for s in kept.segments for i in ids_of(tagger, s.labels))
    assert kept.labels and all(i in animal for i in kept.labels_info)
    dropped = tagger.timeline(clips["seq"], window=1.0, hop=0.5, exclude=["Animal"])
    assert "Music" in {e.label for e in dropped.events}
    assert not any(e.label_id in animal for e in dropped.events)


def test_custom_labels_without_ids_match_by_name(tagger):
    mask = ontology.label_mask(["dog", "rooster", "crying_baby"], [None] * 3, ["Dog", "crying baby"])
    assert mask.tolist() == [True, False, True]
    assert ontology.label_mask(["dog", "rooster"], [None] * 2, exclude=["ROOSTER"]).tolist() == [True, False]
    assert ontology.label_mask(["dog"], [None]) is None
    with pytest.raises(LabelError) as e:
        ontology.label_mask(["dog", "rooster"], [None] * 2, ["Animal"], model="esc10")
    assert e.value.reason == "no_label" and "esc10" in str(e.value)
    custom = copy.copy(tagger)  # the tagger's network under a card without ontology ids
    custom.label_ids, custom._masks = [None] * len(tagger.labels), {}
    p = custom.predict(esc50_clip("dog", 0), top_k=5, links=True, classes=["dog", "Bark", "Animal"])
    assert p.labels and set(p.labels) <= {"Dog", "Bark", "Animal"}
    assert p.links == [None] * len(p.labels) and p.descriptions == [None] * len(p.labels)
    assert p.parents == [[]] * len(p.labels)


def test_unknown_class_is_a_typed_error_with_suggestions(tagger):
    with pytest.raises(LabelError) as e:
        tagger.predict(esc50_clip("dog", 0), classes=["Anmal"])
    assert e.value.reason == "unknown_label" and "Animal" in e.value.suggestions
    assert e.value.to_dict()["suggestions"] == e.value.suggestions and "did you mean 'Animal'" in str(e.value)
    with pytest.raises(LabelError):
        next(tagger.predict_many([esc50_clip("dog", 0)], exclude=["Musik"]))
    assert "Domestic animals, pets" in ontology.load().suggest("domestic")


def test_cli_links_and_classes_round_trip(clips):
    out = earshot("predict", str(clips["mix"]), "--links", "--classes", "Animal", "-k", "5")
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    animal = ontology.subtree("Animal")
    assert len(p["labels"]) == 5 and "Dog" in p["labels"]
    assert all(i in animal for i in p["labels_info"]), p["labels"]
    assert len(p["links"]) == len(p["descriptions"]) == len(p["parents"]) == 5
    assert p["links"][0].startswith("http") and all(p["descriptions"])
    out = earshot("predict", str(clips["mix"]), "--exclude", "Animal", "--exclude", "Speech", "-k", "5", "-f", "csv",
                  "--links")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout.decode())))
    assert len(rows) == 5 and all(r["link"].startswith("http") for r in rows)
    assert not any(r["label_id"] in animal or r["label_id"] in ontology.subtree("Speech") for r in rows), rows
    assert "Music" in [r["label"] for r in rows]


def test_cli_unknown_class_exits_2_with_suggestions():
    out = earshot("predict", str(esc50_clip("dog", 0)), "--classes", "Anmal")
    assert out.returncode == 2
    assert b"did you mean 'Animal'" in out.stderr and out.stdout == b""


def test_models_labels_filter_and_tree():
    out = earshot("models", "labels", "--filter", "Dog", "--tree")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "[Animal]" and "  [Domestic animals, pets]" in lines and "    Dog  /m/0bt9lr" in lines
    assert not any("Music" in line for line in lines)
    rows = json.loads(earshot("models", "labels", "--filter", "Guitar", "-f", "json").stdout)
    assert rows[0] == {"label": "Guitar", "label_id": "/m/0342h",
                       "parents": ["Plucked string instrument", "Musical instrument", "Music"]}
    assert all("Music" in r["parents"] for r in rows)


def test_rest_predict_takes_links_and_class_filters(tmp_path):
    """`/v1/predict?links=true&classes=Animal` answers like the CLI: links, descriptions, parents, filtered labels;
    an unknown class is a 400 with suggestions. A real server process on 127.0.0.1."""
    animal = ontology.load().subtree("Animal")
    body = esc50_clip("dog").read_bytes()
    with server_process(tmp_path) as (base, _), httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/predict?links=true&classes=Animal&top_k=3", content=body)
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["labels"] and all(i in animal for i in p["labels_info"])
        assert len(p["links"]) == len(p["labels"]) and all(u.startswith("http") for u in p["links"])
        assert all(p["descriptions"]) and all("Animal" in chain for chain in p["parents"] if chain)
        r = client.post("/v1/predict?exclude=Animal&top_k=5", content=body)
        assert r.status_code == 200 and not set(r.json()["labels_info"]) & animal
        r = client.post("/v1/predict?classes=Dgo", content=body)
        assert r.status_code == 400 and r.json()["error"]["reason"] == "unknown_label"
