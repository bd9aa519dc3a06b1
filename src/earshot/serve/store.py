"""Model store: registry models plus bundle folders in a models directory, each loaded once and cached."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from earshot import models
from earshot.bundle import MODEL_FILE, is_bundle, read_bundle
from earshot.errors import ModelError

if TYPE_CHECKING:
    from earshot.classifier import Classifier

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# One classifier per (name, bundle version, load options) per process, shared by every app in it.
_CACHE: dict[tuple[str, str, str], Classifier] = {}
_CACHE_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}


def valid_name(name: str) -> bool:
    """A model name safe to use as a folder name (no separators, no leading dot)."""
    return bool(NAME_RE.match(name)) and ".." not in name


def _summary(card: dict) -> dict:
    labels = card.get("labels") or []
    return {
        "labels": len(labels),
        "sample_rate": card.get("sample_rate"),
        "window_seconds": card.get("window_seconds"),
        "multi_label": card.get("multi_label"),
        "metrics": card.get("metrics"),
    }


class ModelStore:
    """Lists registry models and bundle folders (rescanned on each call, so new bundles show up at once)."""

    def __init__(self, models_dir: Path, default: str = models.DEFAULT_MODEL, load_options: dict | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.load_options = dict(load_options or {})
        self._opts_key = json.dumps(self.load_options, sort_keys=True)
        self.extra: dict[str, Path] = {}  # bundles named on the command line, outside models_dir
        self._registry: dict[str, Path] = {}  # registry models' bundle folders, once pulled
        self.default = default
        p = Path(default).expanduser()
        if is_bundle(p):  # `earshot serve --model ./bundle`
            name = read_bundle(p).card.get("name") or p.name
            name = name if valid_name(name) else p.name
            self.extra[name] = p.resolve()
            self.default = name

    def bundles(self) -> dict[str, Path]:
        """Bundle folders by name: those in `models_dir` plus those given explicitly."""
        found: dict[str, Path] = {}
        if self.models_dir.is_dir():
            for child in sorted(self.models_dir.iterdir()):
                if self._folder(child.name) is not None:
                    found[child.name] = child
        found.update(self.extra)
        return found

    def _folder(self, name: str) -> Path | None:
        """The bundle folder `name` in `models_dir`, or None (not a folder name, hidden, or not a bundle)."""
        folder = self.models_dir / name
        return folder if valid_name(name) and not name.startswith(".") and is_bundle(folder) else None

    def list(self) -> list[dict]:
        """One summary dict per model: name, description, source (registry|bundle), card summary."""
        out: dict[str, dict] = {}
        for m in models.list_models():
            out[m["name"]] = {
                **m,
                "source": "registry" if m.get("kind", "pretrained") == "pretrained" else "bundle",
            }
        for name, path in self.bundles().items():
            try:
                card = read_bundle(path).card
            except ModelError:
                continue
            entry = out.setdefault(name, {"name": name, "source": "bundle"})
            entry.setdefault("description", card.get("description") or f"custom classifier ({name})")
            entry.update({k: v for k, v in _summary(card).items() if v is not None})
            entry["created"] = card.get("created")
        for entry in out.values():
            entry["default"] = entry["name"] == self.default
            entry["loaded"] = any(k[0] == entry["name"] for k in _CACHE)
        return list(out.values())

    def names(self) -> set[str]:
        """Every model name taken: registry models, bundles in the earshot home and in `models_dir`."""
        return {m["name"] for m in models.list_models()} | set(self.bundles())

    def resolve(self, name: str | None) -> tuple[str, Path | None]:
        """(name, bundle folder) for a requested name; the folder is None for a model `earshot.models` resolves.

        Raises ModelError(reason=not_found) for an unknown name.
        """
        name = name or self.default
        if name in self.extra:
            return name, self.extra[name]
        if (folder := self._folder(name)) is not None:  # as `bundles` finds it, without listing the folder
            return name, folder
        if name in models.REGISTRY or name in {m["name"] for m in models.list_models()}:
            return name, None
        raise ModelError(f"unknown model {name!r}", source=name, reason="not_found")

    def get(self, name: str | None = None) -> Classifier:
        """The cached Classifier for a model name, loading it on first use (blocking: call off the loop).

        A registry model is pulled (its bundle built) on first use, as `earshot.load` does.
        """
        name, bundle = self.resolve(name)
        if bundle is None:  # a registry model: pulled (checked, built) once here
            bundle = self._registry.get(name)
            if bundle is None or not is_bundle(bundle):
                bundle = self._registry[name] = models.resolve(name)
        try:  # a rebuilt graph is a new version
            st = (bundle / MODEL_FILE).stat()
            version = f"{st.st_mtime_ns}-{st.st_size}"
        except OSError:
            version = ""
        key = (name, version, self._opts_key)
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
            lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
        with lock:
            if key not in _CACHE:
                import earshot

                clf = earshot.load(bundle, **self.load_options).warm()
                with _CACHE_LOCK:
                    for old in [k for k in _CACHE if k[0] == name and k[2] == key[2]]:
                        del _CACHE[old]
                    _CACHE[key] = clf
            return _CACHE[key]

    def card(self, name: str) -> dict:
        """The model card: read from the bundle folder, or from the loaded classifier for registry names."""
        name, path = self.resolve(name)
        if path is not None:
            return dict(read_bundle(path).card)
        return dict(self.get(name).card)

    def loaded(self) -> list[str]:
        """Names of the models loaded in this process."""
        return sorted({k[0] for k in _CACHE})
