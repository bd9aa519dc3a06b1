"""The AudioSet ontology: what a label means and where it sits.

The 632 classes of Google's AudioSet ontology (CC BY-SA 4.0, shipped trimmed as package data; see
`resources/ONTOLOGY_LICENSE.txt`) with their descriptions, citation links, parents and subtrees; a Prediction's
`links`, `descriptions` and `parents`; and the class mask behind `--classes` / `--exclude`, which keeps or drops
whole subtrees of a model's labels. The ontology is a graph, not a tree: some classes have several parents
(Growling is under Dog, Cat and Canidae), so `ancestors` and `descendants` follow every edge.

Classes are named by id (`/m/0jbk`) or by name, case-insensitively (`animal`); each comma-separated part of a
name also names its class where no other class claims it (`rooster` → "Chicken, rooster"). The file is read
on first use and cached; importing this module reads nothing and never imports torch.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

from earshot.errors import LabelError

if TYPE_CHECKING:
    import numpy as np

    from earshot.prediction import Prediction

SEARCH_URL = "https://en.wikipedia.org/w/index.php?search={}"
"""Where `link` points for a class without a citation: a Wikipedia search for its name."""


@dataclass(frozen=True)
class Node:
    """One ontology class, as the ontology file gives it."""

    id: str
    name: str
    description: str
    citation_uri: str
    child_ids: tuple[str, ...]
    restrictions: tuple[str, ...]

    @property
    def abstract(self) -> bool:
        """A grouping class that no clip was labelled with directly."""
        return "abstract" in self.restrictions


def normalize(name: str) -> str:
    """The form names are compared in: case-folded, `_` read as a space, runs of spaces collapsed."""
    return " ".join(name.replace("_", " ").split()).casefold()


class Ontology:
    """The class graph: lookup by id or name, parents, ancestors, subtrees, descriptions and links."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[str, Node] = {n.id: n for n in nodes}
        parents: dict[str, list[str]] = {i: [] for i in self.nodes}
        for n in self.nodes.values():
            for c in n.child_ids:
                if c in parents:
                    parents[c].append(n.id)
        self._parents = {k: tuple(v) for k, v in parents.items()}
        self.roots: tuple[str, ...] = tuple(i for i, p in self._parents.items() if not p)
        self._names = {normalize(n.name): n.id for n in self.nodes.values()}
        parts: dict[str, set[str]] = {}
        for n in self.nodes.values():
            if "," in n.name and "(" not in n.name:
                for part in n.name.split(","):
                    key = normalize(part)
                    if key and key != "etc." and key not in self._names:
                        parts.setdefault(key, set()).add(n.id)
        self._aliases = {k: next(iter(v)) for k, v in parts.items() if len(v) == 1}
        self._subtrees: dict[str, frozenset[str]] = {}

    @classmethod
    def from_json(cls, text: str) -> Ontology:
        return cls(Node(d["id"], d["name"], d.get("description", ""), d.get("citation_uri", ""),
                        tuple(d.get("child_ids", ())), tuple(d.get("restrictions", ())))
                   for d in json.loads(text))

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(key) is not None

    def lookup(self, key: str) -> Node | None:
        """The class an id or a name (case-insensitive, or an unclaimed part of a comma name) names, else None."""
        key = key.strip()
        if key in self.nodes:
            return self.nodes[key]
        norm = normalize(key)
        found = self._names.get(norm) or self._aliases.get(norm)
        return self.nodes[found] if found else None

    def node(self, key: str) -> Node:
        """`lookup`, raising LabelError (with close names as suggestions) for an unknown id or name."""
        found = self.lookup(key)
        if found is None:
            raise LabelError(f"{key!r} is not an AudioSet ontology class", suggestions=self.suggest(key))
        return found

    def id(self, key: str) -> str:
        return self.node(key).id

    def name(self, key: str) -> str:
        return self.node(key).name

    def suggest(self, key: str, extra: Iterable[str] = (), n: int = 5) -> list[str]:
        """Names close to `key` among the ontology's class names and `extra` names (a model's labels)."""
        return suggest(key, [*extra, *(x.name for x in self.nodes.values())], n)

    def parents(self, key: str) -> list[str]:
        """Ids of the classes directly above, in ontology order (empty for the seven roots)."""
        return list(self._parents[self.id(key)])

    def children(self, key: str) -> list[str]:
        return [c for c in self.node(key).child_ids if c in self.nodes]

    def ancestors(self, key: str) -> list[str]:
        """Ids of every class above, nearest first (breadth-first over all parents)."""
        seen: dict[str, None] = {}
        frontier = list(self._parents[self.id(key)])
        while frontier:
            nxt = []
            for p in frontier:
                if p not in seen:
                    seen[p] = None
                    nxt.extend(self._parents[p])
            frontier = nxt
        return list(seen)

    def lineage(self, key: str) -> list[str]:
        """Ids of one chain of classes up to a root, nearest first, through each class's first parent in the
        ontology: Bark → Dog, Domestic animals, pets, Animal. What a page shows as a label's context."""
        chain: list[str] = []
        here = self.id(key)
        while self._parents[here] and self._parents[here][0] not in chain:
            here = self._parents[here][0]
            chain.append(here)
        return chain

    def subtree(self, key: str) -> frozenset[str]:
        """Ids of a class and every class below it (cached)."""
        root = self.id(key)
        got = self._subtrees.get(root)
        if got is None:
            seen, stack = {root}, [root]
            while stack:
                for c in self.nodes[stack.pop()].child_ids:
                    if c in self.nodes and c not in seen:
                        seen.add(c)
                        stack.append(c)
            got = self._subtrees[root] = frozenset(seen)
        return got

    def descendants(self, key: str) -> frozenset[str]:
        """Ids of every class below a class (itself excluded)."""
        return self.subtree(key) - {self.id(key)}

    def description(self, key: str) -> str:
        return self.node(key).description

    def link(self, key: str) -> str:
        """The class's citation URI (mostly Wikipedia, some WordNet), else a Wikipedia search for its name."""
        n = self.node(key)
        return n.citation_uri or SEARCH_URL.format(quote_plus(n.name))


@cache
def load() -> Ontology:
    """The AudioSet ontology shipped with earshot, read once."""
    return Ontology.from_json(resources.files("earshot.resources").joinpath("audioset_ontology.json").read_text())


def lookup(key: str) -> Node | None:
    return load().lookup(key)


def node(key: str) -> Node:
    return load().node(key)


def parents(key: str) -> list[str]:
    return load().parents(key)


def ancestors(key: str) -> list[str]:
    return load().ancestors(key)


def lineage(key: str) -> list[str]:
    return load().lineage(key)


def subtree(key: str) -> frozenset[str]:
    return load().subtree(key)


def descendants(key: str) -> frozenset[str]:
    return load().descendants(key)


def description(key: str) -> str:
    return load().description(key)


def link(key: str) -> str:
    return load().link(key)


def suggest(key: str, names: Iterable[str], n: int = 5) -> list[str]:
    """Up to `n` of `names` close to `key`: names containing it as whole words first, then difflib's matches."""
    by_norm: dict[str, str] = {}
    for name in names:
        by_norm.setdefault(normalize(name), name)
    norm = normalize(key)
    words = sorted((k for k in by_norm if len(norm) >= 3 and f" {norm} " in f" {k.replace(',', ' ')} "), key=len)
    close = difflib.get_close_matches(norm, list(by_norm), n=n, cutoff=0.75 if words else 0.6)
    return [by_norm[k] for k in dict.fromkeys([*words, *close])][:n]


def describe(label_ids: Sequence[str | None]) -> tuple[list[str | None], list[str | None], list[list[str]]]:
    """(links, descriptions, parents) parallel to `label_ids`: `parents` are a label's lineage as names, nearest
    first; an id that is missing or not in the ontology (custom models) gets None, None and []."""
    onto = load()
    links: list[str | None] = []
    descriptions: list[str | None] = []
    lineages: list[list[str]] = []
    for i in label_ids:
        if i is None or i not in onto.nodes:
            links.append(None)
            descriptions.append(None)
            lineages.append([])
        else:
            links.append(onto.link(i))
            descriptions.append(onto.description(i))
            lineages.append([onto.nodes[p].name for p in onto.lineage(i)])
    return links, descriptions, lineages


def annotate(pred: Prediction) -> Prediction:
    """Set a Prediction's `links`, `descriptions` and `parents` from its `labels_info` (in place; returned)."""
    pred.links, pred.descriptions, pred.parents = describe(pred.labels_info)
    return pred


def label_mask(labels: Sequence[str], label_ids: Sequence[str | None], classes: Iterable[str] | None = None,
               exclude: Iterable[str] | None = None, *, model: str | None = None) -> np.ndarray | None:
    """Which of a model's labels a user's class filter keeps (bool per label), or None when there is no filter.

    Each value of `classes` and `exclude` is an ontology class (id or name) standing for its whole subtree,
    matched against `label_ids`, or a label name of the model matched directly (models without ontology ids).
    With `classes` a label is kept when some value covers it, else every label is; a label covered by a value
    of `exclude` is dropped. Raises LabelError for a value that is neither (with close names as suggestions),
    and for a `classes` value that covers no label of the model.
    """
    import numpy as np

    classes = [c for c in (classes or ()) if c and c.strip()]
    exclude = [c for c in (exclude or ()) if c and c.strip()]
    if not classes and not exclude:
        return None
    names = [normalize(x) for x in labels]
    ids = list(label_ids)

    def covered(value: str) -> np.ndarray:
        found = load().lookup(value)
        norm = normalize(value)
        hit = np.array([n == norm or i == value.strip() for n, i in zip(names, ids)], dtype=bool)
        if found is not None:
            under = load().subtree(found.id)
            hit |= np.array([i is not None and i in under for i in ids], dtype=bool)
        elif not hit.any():
            raise LabelError(f"{value!r} is neither an AudioSet ontology class nor a label of "
                             f"{model or 'the model'}", suggestions=load().suggest(value, labels))
        return hit

    keep = np.zeros(len(names), dtype=bool) if classes else np.ones(len(names), dtype=bool)
    for value in classes:
        hit = covered(value)
        if not hit.any():
            raise LabelError(f"{value!r} covers no label of {model or 'the model'}", reason="no_label",
                             suggestions=suggest(value, labels))
        keep |= hit
    for value in exclude:
        keep &= ~covered(value)
    return keep
