"""Developer tools that run inside sd-scripts' Python: the operation counter and the step profiler (make bench)."""
