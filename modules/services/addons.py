"""LoRA, embedding and VAE files: discovering them and naming them as A1111 does.

Each kind has its folders (models/Lora, embeddings/ and models/embeddings, models/VAE, plus the
``--lora-dir`` / ``--embeddings-dir`` / ``--vae-dir`` flags). Names follow A1111: a LoRA or an
embedding is called by its file stem (what users type in prompts), a VAE by its file name (what
``sd_vae`` and the infotext's ``VAE`` hold). Hashes follow A1111 too: a LoRA's is the first 12 hex
digits of its "addnet" hash (its .safetensors tensor bytes), an embedding's the first 12 of its
sha256, a VAE's the first 10. Nothing is loaded here; the engine reads the files when used.

A LoRA also answers to its alias, as in A1111: the ``ss_output_name`` its safetensors header holds
(the name it was trained under), else its name. An alias that two files share, that is another
file's name, or that reads "none" is ambiguous: A1111 then looks such a word up by file name only,
and so does :meth:`AddonRegistry.find`.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.errors import AddonNotFoundError
from modules.services.hashing import HashCache
from modules.services.network_metadata import read_safetensors_metadata

log = logging.getLogger(__name__)

FORBIDDEN_ALIASES = frozenset({"none"})  # never an alias (A1111's forbidden_network_aliases)


class AddonKind(enum.Enum):
    LORA = "LoRA"
    EMBEDDING = "embedding"
    VAE = "VAE"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return {
            AddonKind.LORA: (".safetensors", ".pt", ".ckpt"),
            AddonKind.EMBEDDING: (".safetensors", ".pt", ".bin"),
            AddonKind.VAE: (".safetensors", ".pt", ".ckpt", ".bin"),
        }[self]

    @property
    def hash_length(self) -> int:
        return 10 if self is AddonKind.VAE else 12


def _is_diffusers_vae(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("diffusion_pytorch_model.*"))


@dataclass(frozen=True)
class AddonFile:
    """One LoRA, embedding or VAE on disk."""

    kind: AddonKind
    path: Path
    relative: str  # path inside its folder, with '/'; shown in lists

    @property
    def name(self) -> str:
        """What users write: the stem for LoRAs and embeddings, the file name for VAEs."""
        return self.path.name if self.kind is AddonKind.VAE else self.stem

    @property
    def stem(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def matches(self, query: str) -> bool:
        q = query.strip()
        return q.lower() in (self.name.lower(), self.stem.lower(), self.relative.lower(), self.path.name.lower())


class AddonRegistry:
    """The files of one kind in its folders; rescanned on :meth:`refresh`."""

    def __init__(self, kind: AddonKind, folders: tuple[Path, ...], hashes: HashCache) -> None:
        self.kind = kind
        self.folders = folders
        self._hashes = hashes
        self._lock = threading.Lock()
        self._items: tuple[AddonFile, ...] | None = None
        self._metadata: dict[Path, dict[str, str]] = {}  # LoRAs: each file's safetensors metadata
        self._aliases: dict[str, AddonFile] = {}  # LoRAs: unambiguous alias -> file

    def _scan(self, root: Path) -> list[AddonFile]:
        found: list[AddonFile] = []
        pending = [root] if root.is_dir() else []
        while pending:
            folder = pending.pop()
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if self.kind is AddonKind.VAE and _is_diffusers_vae(entry):
                        found.append(AddonFile(self.kind, entry, entry.relative_to(root).as_posix()))
                    else:
                        pending.append(entry)
                elif entry.suffix.lower() in self.kind.suffixes:
                    found.append(AddonFile(self.kind, entry, entry.relative_to(root).as_posix()))
        return found

    def refresh(self) -> tuple[AddonFile, ...]:
        items = [item for root in self.folders for item in self._scan(root)]
        items.sort(key=lambda i: i.relative.lower())
        metadata = {i.path: read_safetensors_metadata(i.path) for i in items} if self.kind is AddonKind.LORA else {}
        aliases = _unambiguous_aliases(items, metadata)
        with self._lock:
            self._items = tuple(items)
            self._metadata = metadata
            self._aliases = aliases
        log.info("Found %d %s file(s)", len(items), self.kind.value)
        return self._items

    def metadata(self, item: AddonFile) -> dict[str, str]:
        """A LoRA's safetensors metadata as read at the last scan ({} for other kinds and files)."""
        self.all()
        with self._lock:
            return dict(self._metadata.get(item.path, {}))

    def alias(self, item: AddonFile) -> str:
        """A1111's alias: the LoRA's ``ss_output_name``, else its name."""
        return self.metadata(item).get("ss_output_name") or item.name

    def preferred_name(self, item: AddonFile) -> str:
        """What a card writes into the prompt (A1111's "Alias from file"): the alias, or the name
        when the alias is ambiguous."""
        alias = self.alias(item)
        with self._lock:
            return alias if self._aliases.get(alias) == item else item.name

    def all(self) -> tuple[AddonFile, ...]:
        with self._lock:
            items = self._items
        return items if items is not None else self.refresh()

    def find(self, query: str) -> AddonFile | None:
        """By exact name first, then case-insensitively by name, stem, relative path or file name."""
        items = self.all()
        for item in items:
            if item.name == query.strip():
                return item
        with self._lock:
            by_alias = self._aliases.get(query.strip())
        if by_alias is not None:
            return by_alias
        return next((item for item in items if item.matches(query)), None)

    def require(self, query: str) -> AddonFile:
        found = self.find(query)
        if found is None:
            raise AddonNotFoundError(self.kind.value, query, [i.name for i in self.all()][:50])
        return found

    def short_hash(self, item: AddonFile) -> str:
        """A1111's short hash of the file (computed once, then cached on disk)."""
        addnet = self.kind is AddonKind.LORA and item.path.suffix.lower() == ".safetensors"
        return self._hashes.sha256(item.path, addnet=addnet)[: self.kind.hash_length]


def _unambiguous_aliases(items: list[AddonFile], metadata: dict[Path, dict[str, str]]) -> dict[str, AddonFile]:
    """Alias -> file for the aliases that name one file only and are no other file's name."""
    names = {item.name for item in items}
    owners: dict[str, list[AddonFile]] = {}
    for item in items:
        alias = metadata.get(item.path, {}).get("ss_output_name")
        if alias and alias != item.name:
            owners.setdefault(alias, []).append(item)
    return {alias: files[0] for alias, files in owners.items()
            if len(files) == 1 and alias not in names and alias.lower() not in FORBIDDEN_ALIASES}
