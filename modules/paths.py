"""Where things live on disk, resolved once from the flags. No folder is scanned here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AppPaths:
    """Every folder Atelier reads or writes; all absolute."""

    project_root: Path
    data_dir: Path
    models_dir: Path
    checkpoint_dirs: tuple[Path, ...]
    outputs_dir: Path
    cache_dir: Path
    config_file: Path

    @property
    def config_cache(self) -> Path:
        """Patched config folders for single-file checkpoints."""
        return self.cache_dir / "model-configs"

    @property
    def styles_file(self) -> Path:
        """A1111's styles.csv, in the data dir."""
        return self.data_dir / "styles.csv"

    @property
    def hash_cache(self) -> Path:
        return self.cache_dir / "hashes.json"

    @property
    def default_checkpoint_dir(self) -> Path:
        """models/Stable-diffusion: where downloads go and where the UI tells users to put files."""
        return self.checkpoint_dirs[0]


def resolve_paths(data_dir: Path | None = None, models_dir: Path | None = None,
                  ckpt_dir: Path | None = None, project_root: Path = PROJECT_ROOT) -> AppPaths:
    """A1111's layout under the data dir: models/Stable-diffusion, outputs/, config.yaml."""
    data = (data_dir or project_root).expanduser().resolve()
    models = (models_dir.expanduser().resolve() if models_dir else data / "models")
    ckpt_dirs = [models / "Stable-diffusion"]
    if ckpt_dir is not None:
        extra = ckpt_dir.expanduser().resolve()
        if extra not in ckpt_dirs:
            ckpt_dirs.append(extra)
    return AppPaths(
        project_root=project_root,
        data_dir=data,
        models_dir=models,
        checkpoint_dirs=tuple(ckpt_dirs),
        outputs_dir=data / "outputs",
        cache_dir=data / "cache",
        config_file=data / "config.yaml",
    )
