"""Developer tools, apart from the pipeline: benchmarks (bench.py, bench_gpu.py) and the offline GPU bundle (bundle.py).

They write into the git checkout (bench/, .gpu-bundle/), so they run only from one.
"""

from __future__ import annotations

from pathlib import Path

from cml.paths import checkout_root


def root() -> Path:
    r = checkout_root()
    if r is None:
        raise SystemExit("cml's developer tools run from a git clone of cml (they write bench/ and .gpu-bundle/ there)")
    return r
