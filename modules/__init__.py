"""Atelier: a self-hosted text-to-image studio."""

__version__ = "0.1.0"
