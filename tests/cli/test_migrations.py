"""Old presets through the CLI: show-config writes the current version; cml check on an old run folder."""

import tomllib

from cml.preset.models import PRESET_VERSION
from tests.conftest import run_cml, tokenizer_dir
from tests.unit.test_migrations import frozen


def test_show_config_writes_the_current_version_and_reads_back(tmp_path):
    r = run_cml("show-config", str(frozen(1, tmp_path)))
    assert r.returncode == 0, r.stderr
    data = tomllib.loads(r.stdout)
    assert data["version"] == PRESET_VERSION and "direct" not in data and "method" not in data
    (tmp_path / "v2.toml").write_text(r.stdout)
    again = run_cml("show-config", str(tmp_path / "v2.toml"))
    assert again.returncode == 0 and again.stdout == r.stdout


def test_check_works_on_a_run_folder_whose_preset_is_of_version_1(tmp_path, fake_sd):
    """A run made now, then its preset.toml replaced by the version 1 text of the same run (as cml 0.1 left it): the
    check still finds every LoRA made from the settings the folder's preset holds."""
    import tomli_w

    p = frozen(1, tmp_path)
    data = tomllib.loads(p.read_text())
    del data["targets"]["inv"]  # the documented direct-inv case aside
    data |= {"device": "cpu", "tokenizer_cache_dir": str(tokenizer_dir())}
    data["check"]["sampling_steps"] = 2
    text = tomli_w.dumps(data)  # still version 1: no version key, method and [direct] at the top
    p.write_text(text)
    r = run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "v1-run"
    assert tomllib.loads((run / "preset.toml").read_text())["version"] == PRESET_VERSION
    (run / "preset.toml").write_text(text)  # the folder as cml 0.1 left it
    c = run_cml("check", str(run), "--sd-scripts", fake_sd, "-q")
    assert c.returncode == 0, c.stderr
    assert "version 1 -> 2" in c.stderr and (run / "report.md").is_file()
