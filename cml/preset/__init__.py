"""The preset: what a run is asked to do. Models (models.py), loading and overrides (load.py), shipped presets (shipped.py)."""

from cml.preset.load import load_preset
from cml.preset.models import Preset, Target, TrainSettings
from cml.preset.shipped import find_preset, shipped_presets

__all__ = ["Preset", "Target", "TrainSettings", "find_preset", "load_preset", "shipped_presets"]
