"""Peer models a user would pick instead of ours, scored and timed through our own metric.

Each peer runs in its own Python environment (its dependencies may clash with ours, as mediapipe's
numpy and OpenCV builds do), in a subprocess that speaks files and JSON: ``mediapipe_runner.py`` is a
self-contained script for that environment; ``compare.py`` drives it from ours.
"""
