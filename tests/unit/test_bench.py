"""The benchmarks' own logic: the step profiler, the runs and recipes they ask cml for, the reports they write."""

import json

import pytest

from cml.preset import load_preset, shipped_presets


def test_the_step_profiler_writes_time_per_step_of_its_window_only(tmp_path):
    torch = pytest.importorskip("torch")
    from cml.sd_process.dev.profiler import StepProfiler

    steps = 4
    prof = StepProfiler(str(tmp_path / "p.json"), steps)
    lin = torch.nn.Linear(32, 32)
    for _ in range(StepProfiler.SKIP + StepProfiler.WARMUP + steps - 1):  # the last recorded step ran
        prof.step()
        lin(torch.randn(8, 32)).sum().backward()
    assert not (tmp_path / "p.json").exists()  # the window ends at the next step's start
    prof.step()
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["steps"] == steps and out["wall_ms_per_step"] > 0 and out["host_op_ms_per_step"] > 0
    assert out["device_ms_per_step"] == 0 and out["device_busy"] == 0  # a CPU: no device time
    assert 5 <= out["host_events_per_step"] < 200  # a linear layer's forward and backward, not the warm-up's steps too
    assert any("addmm" in t["op"] or "mm" in t["op"] for t in out["top_host"]) and out["host_other_ms_per_step"] > 0
    assert not any(t["op"].startswith("ProfilerStep") for t in out["top_host"])  # the step is not an operation


def test_every_gpu_bench_run_is_a_valid_preset(tmp_path):
    from cml.dev.bench_gpu import DEFAULT_RUNS, RUNS, write_preset

    assert set(DEFAULT_RUNS) == set(RUNS)
    for name, settings in RUNS.items():
        settings = dict(settings)
        preset = settings.pop("preset", "grayscale")
        path = write_preset(tmp_path, name, {"base_model": "m.safetensors", "source": "a.png", **settings}, preset)
        loaded, _ = load_preset(path)
        assert loaded.name == name


def test_every_recipe_of_the_bench_is_a_valid_setting_of_the_demo():
    from cml.dev.bench import RECIPES

    for label, sets in RECIPES.items():
        preset, _ = load_preset(shipped_presets()["demo"], [f"{k}={json.dumps(v)}" for k, v in sets.items()])
        assert preset.train.resolution == 64, label


def test_the_bench_report_names_each_part():
    from cml.dev.bench import markdown

    figures = {"copy_ssim_min": 0.82, "sat_plus_1": 0.15, "sat_minus_1": 1.4, "luma_plus_1": 0.83, "luma_minus_1": 0.78}
    r = {
        "machine": {"platform": "p", "cpus": 2, "python": "3.11"},
        "versions": {"torch": "t", "sd_scripts": "48d368fa55", "cml": "0.1.0"},
        "setup": {"sd-scripts": {"first line": 5.0}, "cml": {"first line": 4.0}, "cml_start_s": {"first": 9.0, "cached": 1.5}, "bench_s": 60.0},
        "recipes": {"batch 4": {"sets": {"train.batch_size": 4}, "seconds": 200.0, "train_s": 150.0, **figures}, "bench_s": 900.0},
    }
    md = markdown(r)
    assert "**1.50 s** with the base model's sha256 and the device probe cached" in md
    assert "| batch 4 | train.batch_size=4 | 0.820 | 0.150x | 1.400x | 0.830 | 0.780 | 150 | 200 |" in md


def test_gpu_bench_parts_keep_the_runs_of_earlier_parts_on_the_same_device_only(tmp_path):
    from cml.dev.bench_gpu import earlier_runs

    h100 = {"name": "NVIDIA H100", "torch": "2.11.0"}
    (tmp_path / "results-gpu.json").write_text(json.dumps({"device": h100, "runs": {"sd15": {"finished": True}}}))
    assert earlier_runs(tmp_path / "results-gpu.json", dict(h100)) == {"sd15": {"finished": True}}
    assert earlier_runs(tmp_path / "results-gpu.json", {"name": "NVIDIA H200", "torch": "2.11.0"}) == {}
    assert earlier_runs(tmp_path / "missing.json", h100) == {}


def test_bench_results_of_an_older_format_are_dropped_not_rendered(tmp_path, monkeypatch):
    from cml.dev import bench

    setup = {"sd-scripts": {"first line": 5.0}, "cml": {"first line": 4.0}}
    old = {"overhead": {"cml_s": 1.0, "direct_s": 1.0, "ratio": 1.0}, "merge_modes": {}, "setup": setup}
    (tmp_path / "results.json").write_text(json.dumps(old))
    monkeypatch.setattr(bench, "Bench", lambda work, reps: type("B", (), {"sd": type("S", (), {"commit": "x"})()})())
    monkeypatch.setattr(bench, "versions", lambda sd: {"cml": "0", "torch": "t", "sd_scripts": "x"})
    monkeypatch.setattr(
        bench, "part_cuts", lambda b, steps: {"sd-scripts": {"s_per_step": 1.0}, "cml": {"s_per_step": 0.5}, "steps": 3, "ratio_cml_sd_scripts": 0.5}
    )
    assert bench.main(["--only", "cuts", "--out", str(tmp_path)]) == 0
    kept = json.loads((tmp_path / "results.json").read_text())
    assert "overhead" not in kept and "merge_modes" not in kept and kept["setup"] == setup  # a current part is kept
    assert "ratio **0.500**" in (tmp_path / "results.md").read_text()
