"""Where things live on disk, resolved once from the flags. No folder is scanned here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A1111's upscaler model folders under the models dir, in the order its upscaler list shows them.
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
GFPGAN_FOLDER = "GFPGAN"
CODEFORMER_FOLDER = "Codeformer"
TEXT_ENCODER_FOLDER = "text_encoder"  # Forge's models/text_encoder
# A1111's ``--<name>-models-path`` flags: each adds a folder to the models folder of that name.
MODEL_FOLDER_FLAGS = {"esrgan": "ESRGAN", "realesrgan": "RealESRGAN", "swinir": "SwinIR", "dat": "DAT",
                      "hat": "HAT", "scunet": "ScuNET", "gfpgan": GFPGAN_FOLDER, "codeformer": CODEFORMER_FOLDER}


@dataclass(frozen=True)
class AppPaths:
    """Every folder Atelier reads or writes; all absolute."""

    project_root: Path
    data_dir: Path
    models_dir: Path
    checkpoint_dirs: tuple[Path, ...]
    lora_dirs: tuple[Path, ...]
    embedding_dirs: tuple[Path, ...]
    vae_dirs: tuple[Path, ...]
    outputs_dir: Path
    cache_dir: Path
    config_file: Path
    upscaler_dirs: tuple[Path, ...] = ()  # models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ScuNET (+ flags' folders)
    gfpgan_dirs: tuple[Path, ...] = ()  # models/GFPGAN (+ --gfpgan-models-path)
    codeformer_dirs: tuple[Path, ...] = ()  # models/Codeformer (+ --codeformer-models-path)
    extra_model_dirs: tuple[tuple[str, Path], ...] = ()  # (models folder, folder a flag adds), --controlnet-dir ...

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        """The folders of one kind of model (A1111's folder name under models/, any case): models/<kind>
        first, then the folder a flag adds for it."""
        found = [self.models_dir / kind]
        found += [folder for name, folder in self.extra_model_dirs if name.lower() == kind.lower()
                  and folder not in found]
        return tuple(found)

    @property
    def text_encoder_dirs(self) -> tuple[Path, ...]:
        """models/text_encoder (Forge's folder: clip_l, clip_g, t5xxl, LLM encoders) and --text-encoder-dir."""
        return self.model_dirs(TEXT_ENCODER_FOLDER)

    @property
    def tokenizers_dir(self) -> Path:
        """models/text_encoder/tokenizers: T5 and LLM tokenizers, one folder per repository they come from."""
        return self.models_dir / TEXT_ENCODER_FOLDER / "tokenizers"

    @property
    def config_cache(self) -> Path:
        """Patched config folders for single-file checkpoints."""
        return self.cache_dir / "model-configs"

    @property
    def styles_file(self) -> Path:
        """A1111's styles.csv, in the data dir."""
        return self.data_dir / "styles.csv"

    @property
    def builtin_extensions_dir(self) -> Path:
        """Extensions shipped with Atelier."""
        return self.project_root / "extensions"

    @property
    def user_extensions_dir(self) -> Path:
        """Users' extensions (the same folder as the built-ins when the data dir is the project)."""
        return self.data_dir / "extensions"

    @property
    def extension_state_file(self) -> Path:
        """Which extensions the user switched off."""
        return self.data_dir / "extensions.yaml"

    @property
    def extension_settings_dir(self) -> Path:
        return self.data_dir / "extension-settings"

    @property
    def hash_cache(self) -> Path:
        return self.cache_dir / "hashes.json"

    @property
    def taesd_dir(self) -> Path:
        """models/VAE-taesd (A1111's folder): the tiny autoencoders the TAESD live preview decodes with."""
        return self.models_dir / "VAE-taesd"

    @property
    def realesrgan_dir(self) -> Path:
        """models/RealESRGAN, listed on its own by /sdapi/v1/realesrgan-models."""
        return self.models_dir / "RealESRGAN"

    @property
    def inputs_dir(self) -> Path:
        """inputs/: where users put images for the Extras tab's batch from a folder."""
        return self.data_dir / "inputs"

    @property
    def default_checkpoint_dir(self) -> Path:
        """models/Stable-diffusion: where downloads go and where the UI tells users to put files."""
        return self.checkpoint_dirs[0]


def _folders(defaults: list[Path], extra: Path | None) -> tuple[Path, ...]:
    """The default folders, then the one a flag names (once)."""
    if extra is not None:
        resolved = extra.expanduser().resolve()
        if resolved not in defaults:
            defaults.append(resolved)
    return tuple(defaults)


def resolve_paths(data_dir: Path | None = None, models_dir: Path | None = None,
                  ckpt_dir: Path | None = None, project_root: Path = PROJECT_ROOT, *,
                  lora_dir: Path | None = None, embeddings_dir: Path | None = None,
                  vae_dir: Path | None = None, model_folders: Mapping[str, Path] | None = None) -> AppPaths:
    """A1111's layout under the data dir: models/Stable-diffusion, models/Lora, models/VAE,
    embeddings/ (and models/embeddings), outputs/, config.yaml. ``model_folders``: extra folders by
    the models folder they add to (``{"ESRGAN": path}``, from ``--esrgan-models-path``)."""
    data = (data_dir or project_root).expanduser().resolve()
    models = (models_dir.expanduser().resolve() if models_dir else data / "models")
    extra = dict(model_folders or {})

    def folders(*names: str) -> tuple[Path, ...]:
        found: list[Path] = []
        for name in names:
            found += [p for p in _folders([models / name], extra.get(name)) if p not in found]
        return tuple(found)

    return AppPaths(
        project_root=project_root,
        data_dir=data,
        models_dir=models,
        checkpoint_dirs=_folders([models / "Stable-diffusion"], ckpt_dir),
        lora_dirs=_folders([models / "Lora"], lora_dir),
        embedding_dirs=_folders([data / "embeddings", models / "embeddings"], embeddings_dir),
        vae_dirs=_folders([models / "VAE"], vae_dir),
        outputs_dir=data / "outputs",
        cache_dir=data / "cache",
        config_file=data / "config.yaml",
        upscaler_dirs=folders(*UPSCALER_FOLDERS),
        gfpgan_dirs=folders(GFPGAN_FOLDER),
        codeformer_dirs=folders(CODEFORMER_FOLDER),
        extra_model_dirs=tuple((name, Path(folder).expanduser().resolve()) for name, folder in extra.items()),
    )
