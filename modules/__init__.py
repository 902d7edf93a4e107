"""Atelier: a self-hosted text-to-image studio."""

__version__ = "0.1.0"
VERSION_TEXT = f"Atelier {__version__}"  # as the infotext's Version and the API's info name it
