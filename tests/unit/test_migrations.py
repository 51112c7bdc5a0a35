"""Old presets load through the migration chain (cml/preset/migrations.py): the frozen preset of every old version
(tests/data/presets/), the plan it makes, and `cml check` on a run folder whose preset.toml is of an old version."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from cml.errors import InputError
from cml.preset.load import load_preset
from cml.preset.migrations import MIGRATIONS, migrate
from cml.preset.models import PRESET_VERSION, CopyMachineTarget, DirectTarget, Preset
from tests.conftest import SD1_TE, tokenizer_dir

DATA = Path(__file__).resolve().parent.parent / "data" / "presets"


def frozen(version: int, folder: Path) -> Path:
    """The frozen preset of ``version``, with its folder placeholder filled in, beside deterministic inputs."""
    p = folder / f"v{version}.toml"
    p.write_text((DATA / f"v{version}.toml").read_text().replace("@DIR@", str(folder)))
    sd = {SD1_TE: np.zeros((4, 4), np.float16), "model.diffusion_model.input_blocks.0.0.weight": np.arange(16, dtype=np.float16).reshape(4, 4)}
    sd |= {"model.diffusion_model.out.2.weight": np.ones((4, 4), np.float16), "first_stage_model.decoder.conv_in.weight": np.ones((2, 2), np.float16)}
    save_file(sd, str(folder / "model.safetensors"))
    y, x = np.mgrid[0:96, 0:96].astype(np.float32)
    Image.fromarray((np.stack([x / 96, y / 96, 1 - x / 96 * 0.5], -1) * 255).astype(np.uint8), "RGB").save(folder / "a.png")
    return p


def test_every_old_version_has_a_frozen_preset_and_a_step():
    assert sorted(MIGRATIONS) == list(range(1, PRESET_VERSION))
    assert all((DATA / f"v{v}.toml").is_file() for v in MIGRATIONS)
    assert Preset.model_fields["version"].default == PRESET_VERSION


def test_a_version_1_preset_loads_as_version_2(tmp_path):
    notes: list[str] = []
    preset, _ = load_preset(frozen(1, tmp_path), notes=notes)
    t = preset.targets
    assert isinstance(t["grayscale"], CopyMachineTarget) and t["grayscale"].symmetric
    assert isinstance(t["sepia"], DirectTarget) and (t["sepia"].steps, t["sepia"].multiplier, t["sepia"].timesteps) == (6, 0.5, (100, 900))
    assert isinstance(t["inv"], DirectTarget) and t["inv"].steps == 4 and t["inv"].train.steps is None  # its own train.steps
    assert preset.baseline is False  # v1's baseline was the retired early-loss method check
    assert any("baseline (the early-loss method check) is retired" in n for n in notes)
    assert any("[direct]'s keys are now each direct target's own" in n for n in notes)
    assert all(n.startswith(f"{tmp_path / 'v1.toml'}: version 1 -> 2: ") for n in notes)


def test_a_version_1_preset_plans_the_stages_version_1_planned(tmp_path):
    """The fingerprints cml 0.1 gave these stages (tests/data/presets/v1-fingerprints.json, made by commit 51a03e8 from
    these very inputs) are the ones the migrated preset gives: its run folders stay up to date. Two by design:
    the baseline stage is retired, and a direct target with its own train.steps is fingerprinted anew (v1 also
    counted the unused [direct].steps)."""
    from cml.inputs import load_inputs
    from cml.stages import build_plan

    preset, digest = load_preset(frozen(1, tmp_path), ['device="cpu"', f'tokenizer_cache_dir="{tokenizer_dir()}"'])
    plan = build_plan(preset, digest, load_inputs(preset), None)
    old = json.loads((DATA / "v1-fingerprints.json").read_text())
    now = {s.name: s.fingerprint for s in plan.stages}
    assert set(old) - set(now) == {"baseline-grayscale"} and set(now) <= set(old)
    assert {k for k in now if now[k] != old[k]} == {"direct-inv"}


@pytest.mark.parametrize(("version", "message"), [(3, "made by a newer cml"), ("2", "is not a preset version"), (0, "is not a preset version")])
def test_a_version_cml_cannot_read_is_one_line(version, message):
    with pytest.raises(InputError, match=message):
        migrate({"version": version}, "p.toml")
