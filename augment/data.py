"""``augment.data.ManifestDataset``, where users import it from (it lives in augment.outputs.data)."""

from .outputs.data import ManifestDataset

__all__ = ["ManifestDataset"]
