"""The preset reference (cml/preset/reference.py) is generated from the models' field docstrings, and docs/presets.md
is what it generates now."""

from cml.preset.models import TrainOverrides, TrainSettings
from cml.preset.reference import SECTIONS, reference
from tests.conftest import ROOT


def test_docs_presets_md_is_the_generated_reference():
    assert (ROOT / "docs" / "presets.md").read_text() == reference() + "\n", "run: cml presets --reference > docs/presets.md"


def test_every_documented_key_has_a_docstring():
    missing = [f"{title}: {name}" for title, model, _ in SECTIONS for name, f in model.model_fields.items() if not (f.description or "").strip()]
    assert missing == []


def test_the_overrides_take_exactly_the_train_keys():
    assert list(TrainOverrides.model_fields) == list(TrainSettings.model_fields)
    for name, f in TrainOverrides.model_fields.items():
        assert f.default is None, name
