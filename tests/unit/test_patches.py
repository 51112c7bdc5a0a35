"""cml/sd_process/patches.py's guards: a patch whose target changed does not apply, with one warning naming why.
(Against the real sd-scripts, every patch applies: tests/sdscripts/test_patches.py.)"""

import pytest

from cml.sd_process import patches
from cml.sd_process.patches import BY_NAME, PATCHES, Patch, check

GUARDED = [p for p in PATCHES if p.fingerprints]


@pytest.mark.parametrize("patch", GUARDED, ids=lambda p: p.name)
def test_a_changed_source_is_refused(patch):
    why = check(patch, source="def f(self):\n    return 1\n", signature=patch.signature or "(self)")
    assert why is not None and "source changed" in why


@pytest.mark.parametrize("patch", [p for p in PATCHES if p.signature], ids=lambda p: p.name)
def test_a_changed_signature_is_refused(patch):
    why = check(patch, source="", signature="(self, x, extra)")
    assert why is not None and "signature" in why


def test_a_missing_target_is_refused():
    why = check(Patch("x", "no_such_module_cml:f", "nothing"))
    assert why is not None and "is not there" in why


def test_the_source_a_patch_was_written_from_is_accepted():
    src = "def step(self, closure=None):\n    pass\n"
    p = Patch("t", "m:f", "t", "(self, closure=None)", (patches.fingerprint(src),))
    assert check(p, source=src, signature="(self, closure=None)") is None


def test_a_patch_that_does_not_apply_warns_once_and_stays_out(monkeypatch, capsys):
    monkeypatch.setitem(BY_NAME, "t-off", Patch("t-off", "no_such_module_cml:f", "the t speed-up"))
    monkeypatch.setattr(patches, "_warned", set())
    assert patches.applies("t-off") is False and patches.applies("t-off") is False
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("cml: warning: patch t-off does not apply (") and err[0].endswith("the t speed-up is off")


def test_every_patch_is_named_once():
    assert len(BY_NAME) == len(PATCHES)
