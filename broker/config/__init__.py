"""Configuration: YAML loaded once into frozen, validated settings."""

from broker.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
