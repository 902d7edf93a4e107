"""What a job uses besides its checkpoint: LoRAs from its prompt tags, embeddings named in its
prompts, and its VAE; found, checked before queuing, loaded on the worker, and named in the infotext.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modules.errors import AddonLoadError, AddonNotFoundError, FieldError, ValidationError
from modules.extra_networks import extract_networks
from modules.params import VAE_AUTOMATIC, VAE_NONE, GenerationRequest
from modules.services.addons import AddonFile, AddonRegistry
from modules.services.network_cards import NetworkCards

if TYPE_CHECKING:  # the engine modules import torch: only the worker's calls need them, imported there
    from modules.engine.embeddings import Embedding
    from modules.engine.loader import LoadedModel
    from modules.engine.lora import LoraUse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPrompts:
    """A request's prompts without their LoRA tags (what gets encoded), and the LoRAs they named."""

    prompt: str
    negative_prompt: str
    hires_prompt: str
    hires_negative_prompt: str
    loras: tuple[LoraUse, ...] = ()
    lora_hashes: str | None = None  # the infotext's "Lora hashes"
    ignored_tags: tuple[str, ...] = ()

    def texts(self) -> list[str]:
        return [self.prompt, self.negative_prompt, self.hires_prompt, self.hires_negative_prompt]


@dataclass(frozen=True)
class JobEmbeddings:
    by_name: Mapping[str, Embedding] = field(default_factory=lambda: MappingProxyType({}))
    ti_hashes: str | None = None  # the infotext's "TI hashes"


def _hash_list(pairs: Iterable[tuple[str, str]]) -> str | None:
    text = ", ".join(f"{name}: {digest}" for name, digest in pairs)
    return text or None


def _mentions(name: str, texts: Iterable[str]) -> bool:
    """Whether ``name`` appears as a whole word (case-insensitive), as the encoder will match it."""
    words = r"\s+".join(re.escape(part) for part in name.split())
    pattern = re.compile(rf"(?<![\w]){words}(?![\w])", re.IGNORECASE)
    return any(pattern.search(text) for text in texts)


class AddonLibrary:
    """The LoRA, embedding and VAE folders, and the embeddings loaded so far (by file and mtime)."""

    def __init__(self, loras: AddonRegistry, embeddings: AddonRegistry, vaes: AddonRegistry) -> None:
        self.loras = loras
        self.embeddings = embeddings
        self.vaes = vaes
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[int, Embedding | AddonLoadError]] = {}
        self.cards = NetworkCards()  # what the extra-networks browser shows of these files

    # --- before queuing ------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        """Every LoRA tag names a LoRA that exists and the VAE exists; ValidationError otherwise."""
        errors: list[FieldError] = []
        hires = request.hires
        texts = {"prompt": request.prompt, "negative_prompt": request.negative_prompt,
                 "hr_prompt": hires.prompt if hires else "", "hr_negative_prompt": hires.negative_prompt if hires else ""}
        for field_name, text in texts.items():  # each unknown LoRA named where its tag is
            for tag in extract_networks(text, field_name).loras:
                if self.loras.find(tag.name) is None:
                    names = [i.name for i in self.loras.all()][:50]
                    errors.append(FieldError(field_name, str(AddonNotFoundError(self.loras.kind.value, tag.name,
                                                                                    names))))
        if request.vae is not None and request.vae not in (VAE_AUTOMATIC, VAE_NONE) and self.vaes.find(request.vae) is None:
            names = ", ".join([VAE_AUTOMATIC, VAE_NONE, *(v.name for v in self.vaes.all())])
            errors.append(FieldError("sd_vae", f"unknown VAE {request.vae!r}; valid: {names}"))
        if errors:
            raise ValidationError(errors)

    # --- on the worker -------------------------------------------------------------------------

    def prompts(self, request: GenerationRequest, hashes: bool = True) -> JobPrompts:
        """The request's prompts without tags, and the LoRAs to apply (raises for a missing one)."""
        hires = request.hires
        texts = [request.prompt, request.negative_prompt, hires.prompt if hires else "",
                 hires.negative_prompt if hires else ""]
        cleaned, tags, ignored = [], {}, []
        for text in texts:
            found = extract_networks(text)
            cleaned.append(found.text)
            ignored += found.ignored
            for tag in found.loras:
                tags[tag.name] = tag
        from modules.engine.lora import LoraUse

        uses, pairs = [], []
        for tag in tags.values():
            item = self.loras.require(tag.name)
            uses.append(LoraUse(name=tag.name, path=item.path, unet_weight=tag.unet_weight, te_weight=tag.te_weight))
            if hashes:
                pairs.append((tag.name, self.loras.short_hash(item)))
        return JobPrompts(*cleaned, loras=tuple(uses), lora_hashes=_hash_list(pairs), ignored_tags=tuple(ignored))

    def _embedding(self, item: AddonFile) -> Embedding | AddonLoadError:
        mtime = item.path.stat().st_mtime_ns
        with self._lock:
            cached = self._loaded.get(str(item.path))
        if cached is not None and cached[0] == mtime:
            return cached[1]
        from modules.engine.embeddings import load_embedding

        try:
            loaded: Embedding | AddonLoadError = load_embedding(item.path)
        except AddonLoadError as exc:
            log.warning("%s", exc)
            loaded = exc
        with self._lock:
            self._loaded[str(item.path)] = (mtime, loaded)
        return loaded

    def embeddings_for(self, model: LoadedModel | None, texts: Iterable[str], hashes: bool = True) -> JobEmbeddings:
        """The embeddings the texts mention that fit the model (longest names win in the encoder);
        without a model, every readable one they mention (what the token counter needs)."""
        from modules.engine.embeddings import fits

        texts = [t for t in texts if t]
        chosen: dict[str, Embedding] = {}
        pairs = []
        for item in self.embeddings.all():
            if item.stem in chosen or not _mentions(item.stem, texts):
                continue
            embedding = self._embedding(item)
            if isinstance(embedding, AddonLoadError):
                continue
            if model is None or fits(embedding, model.pipeline, model.arch):
                chosen[embedding.name] = embedding
                if hashes:
                    pairs.append((embedding.name, self.embeddings.short_hash(item)))
        return JobEmbeddings(MappingProxyType(chosen), _hash_list(pairs))

    def listing(self, model: LoadedModel | None) -> dict[str, Any]:
        """A1111's /embeddings reply: loaded (fit the current model) and skipped, by name."""
        from modules.engine.embeddings import fits

        loaded: dict[str, Any] = {}
        skipped: dict[str, Any] = {}
        for item in self.embeddings.all():
            embedding = self._embedding(item)
            if isinstance(embedding, AddonLoadError):
                continue
            entry = {"step": embedding.step, "sd_checkpoint": None, "sd_checkpoint_name": embedding.checkpoint_name,
                     "shape": embedding.shape, "vectors": embedding.vector_count}
            usable = model is None or fits(embedding, model.pipeline, model.arch)
            (loaded if usable else skipped)[embedding.name] = entry
        return {"loaded": loaded, "skipped": skipped}

    def lora_metadata(self, item: AddonFile) -> dict[str, str]:
        """The training metadata a LoRA file carries (kohya's ``ss_*`` keys), read from its header."""
        from modules.engine.lora import read_lora_metadata

        return read_lora_metadata(item.path)

    def vae_file(self, choice: str, checkpoint_stem: str) -> AddonFile | None:
        """The external VAE a choice means: None for the checkpoint's own. "Automatic" takes a VAE
        named like the checkpoint (``name.safetensors``, ``name.vae.pt``) when there is one."""
        if choice == VAE_NONE:
            return None
        if choice == VAE_AUTOMATIC:
            for item in self.vaes.all():
                stem = item.stem.removesuffix(".vae")
                if stem == checkpoint_stem:
                    return item
            return None
        return self.vaes.require(choice)
