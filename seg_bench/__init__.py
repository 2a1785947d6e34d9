"""Benchmarks and report making beside the library: ``seg-bench`` (bench.py: layers, model, all,
postprocess; layers.py: one binary conv against PyTorch and OpenVINO) and the docs/results.md
tables and figures (``python -m seg_bench.results``). Installed with the ``bench`` extra.

Imports nothing on its own: ``seg_bench.memory_probe`` measures a process that must not have
imported torch.
"""
