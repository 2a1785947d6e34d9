"""Settings from the environment and the CLI (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seg_service.api.cli import build_parser, settings_from_args, threads_per_worker
from seg_service.api.settings import Settings


def test_from_env_parses_every_kind_of_field():
    s = Settings.from_env(
        {
            "SEG_MODEL_DIR": "/models",
            "SEG_DEFAULT_MODEL": "street",
            "SEG_THREADS": "3",
            "SEG_MAX_UPLOAD_BYTES": "1000",
            "SEG_API_KEY": "k",
            "SEG_CORS_ORIGINS": "http://a, http://b,",
            "SEG_MAX_VIDEO_SECONDS": "2.5",
        }
    )
    assert s.model_dir == Path("/models") and s.default_model == "street" and s.threads == 3
    assert s.max_upload_bytes == 1000 and s.api_key == "k"
    assert s.cors_origins == ("http://a", "http://b") and s.max_video_seconds == 2.5
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    "env", [{"SEG_MAX_IN_FLIGHT": "0"}, {"SEG_THREADS": "many"}, {"SEG_MAX_UPLOAD_BYTES": "-1"}]
)
def test_bad_values_are_one_line_errors(env):
    with pytest.raises(ValueError) as e:
        Settings.from_env(env)
    assert "\n" not in str(e.value)


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("SEG_DEFAULT_MODEL", "street")
    monkeypatch.setenv("SEG_MAX_IN_FLIGHT", "7")
    args = build_parser().parse_args(["--max-in-flight", "3", "--cors-origins", "http://x"])
    s = settings_from_args(args)
    assert (s.default_model, s.max_in_flight, s.cors_origins) == ("street", 3, ("http://x",))


def test_threads_are_divided_among_workers():
    assert threads_per_worker(16, 4) == 4
    assert threads_per_worker(3, 4) == 1
    assert threads_per_worker(8, 1) == 8
