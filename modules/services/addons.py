"""LoRA, embedding and VAE files: discovering them and naming them as A1111 does.

Each kind has its folders (models/Lora, embeddings/ and models/embeddings, models/VAE, plus the
``--lora-dir`` / ``--embeddings-dir`` / ``--vae-dir`` flags). Names follow A1111: a LoRA or an
embedding is called by its file stem (what users type in prompts), a VAE by its file name (what
``sd_vae`` and the infotext's ``VAE`` hold). Hashes follow A1111 too: a LoRA's is the first 12 hex
digits of its "addnet" hash (its .safetensors tensor bytes), an embedding's the first 12 of its
sha256, a VAE's the first 10. Nothing is loaded here; the engine reads the files when used.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.errors import AddonNotFoundError
from modules.services.hashing import HashCache

log = logging.getLogger(__name__)


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
        with self._lock:
            self._items = tuple(items)
        log.info("Found %d %s file(s)", len(items), self.kind.value)
        return self._items

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
