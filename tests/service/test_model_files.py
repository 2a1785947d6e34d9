"""Model files: every way a file with a valid checksum can still be wrong is refused at load (strict
description fields, bounded op fields, channel inference, a dry run), one bad file never stops the
others from serving, the loader checks size and file type before reading, and the default model is
chosen as docs/service.md says (issue 19, items 7, 8, 10; issue 22, the default model)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from seg_service.format import MAX_MODEL_FILE_BYTES
from seg_service.runtime import ModelFormatError, load_model

from .helpers import SMALL_IMAGE, ServerProcess, start_server
from .hostile import BAD_MODEL_EDITS, read_parts, sparse_file, tampered_model


@pytest.fixture(scope="module")
def bad_model_dir(packed_model_dir: Path, tmp_path_factory) -> Path:
    """The good `person` model, and one tampered copy of `street` per entry of BAD_MODEL_EDITS."""
    out = tmp_path_factory.mktemp("bad_models")
    shutil.copy(packed_model_dir / "person.gnpk", out / "person.gnpk")
    for name, edit in BAD_MODEL_EDITS.items():
        tampered_model(packed_model_dir / "street.gnpk", out / f"{name}.gnpk", edit)
    return out


@pytest.mark.parametrize("case", sorted(BAD_MODEL_EDITS))
def test_tampered_model_is_refused_at_load(bad_model_dir: Path, case: str) -> None:
    with pytest.raises(ModelFormatError) as info:
        load_model(bad_model_dir / f"{case}.gnpk")
    message = str(info.value)
    assert "\n" not in message.strip() and f"{case}.gnpk" in message


def test_untampered_copy_loads(packed_model_dir: Path, tmp_path: Path) -> None:
    """The tampering helper itself keeps a file valid when it changes nothing (so the refusals
    above come from the edits)."""
    path = tampered_model(packed_model_dir / "street.gnpk", tmp_path / "same.gnpk", lambda m, g, t: None)
    model = load_model(path)
    rgb = np.full((40, 50, 3), 100, np.uint8)
    assert model.predict(rgb).shape == (40, 50)


def test_server_starts_with_every_bad_file_and_serves_the_good_one(
    bad_model_dir: Path, tmp_path: Path
) -> None:
    server = start_server(bad_model_dir, tmp_path / "server.log")
    try:
        ready = httpx.get(server.url + "/ready").json()
        assert ready["models"] == ["person"]
        refused = {item.split(": ", 1)[0] for item in ready["refused"]}
        assert refused == {f"{case}.gnpk" for case in BAD_MODEL_EDITS}
        assert str(bad_model_dir) not in httpx.get(server.url + "/ready").text  # no server paths
        assert httpx.get(server.url + "/models").status_code == 200
        r = httpx.post(
            server.url + "/segment", files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())}, timeout=120
        )
        assert r.status_code == 200 and r.headers["x-model"] == "person"
    finally:
        server.stop()


def test_fifo_and_oversized_files_are_refused_without_reading(packed_model_dir: Path, tmp_path: Path) -> None:
    """A FIFO named *.gnpk used to hang start-up for good; a 2 GiB sparse file cost 2 GB of memory."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(packed_model_dir / "person.gnpk", folder / "person.gnpk")
    os.mkfifo(folder / "pipe.gnpk")
    sparse_file(folder / "huge.gnpk", 2 * 1024**3)
    server = start_server(folder, tmp_path / "server.log")
    try:
        refused = dict(item.split(": ", 1) for item in httpx.get(server.url + "/ready").json()["refused"])
        assert set(refused) == {"pipe.gnpk", "huge.gnpk"}
        assert "not a regular file" in refused["pipe.gnpk"]
        assert str(MAX_MODEL_FILE_BYTES) in refused["huge.gnpk"]
        peak_kib = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:")
            )
        )
        assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB: the sparse file was read"
    finally:
        server.stop()


# ---- the default model (issue 22) -------------------------------------------------------------


def renamed_copy(src: Path, dst: Path, name: str) -> Path:
    def rename(model: dict, graph: dict, tensors: dict) -> None:
        model["name"] = name

    return tampered_model(src, dst, rename)


def test_a_folder_of_one_model_serves_it_as_the_default(packed_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(packed_model_dir / "street.gnpk", folder / "street.gnpk")
    server = start_server(folder, tmp_path / "server.log")
    try:
        assert httpx.get(server.url + "/ready").json()["default_model"] == "street"
        r = httpx.post(
            server.url + "/segment", files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())}, timeout=120
        )
        assert r.status_code == 200 and r.headers["x-model"] == "street"
    finally:
        server.stop()


def run_until_exit(folder: Path, log: Path, *args: str) -> tuple[int, str]:
    server = ServerProcess(folder, log, *args).launch()
    try:
        code = server.proc.wait(timeout=120)
    finally:
        server.stop()
    return code, server.log()


def test_several_models_and_no_default_refuse_to_start(packed_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    shutil.copy(packed_model_dir / "street.gnpk", folder / "street.gnpk")
    renamed_copy(packed_model_dir / "street.gnpk", folder / "roads.gnpk", "roads")
    code, log = run_until_exit(folder, tmp_path / "server.log")
    assert code != 0
    lines = [line for line in log.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "--default-model" in lines[0], log
    assert "Traceback" not in log
    code, log = run_until_exit(folder, tmp_path / "server2.log", "--default-model", "person")
    assert code != 0 and "default model 'person' is not loaded" in log and "Traceback" not in log


def wait_for_health(server: ServerProcess) -> None:
    for _ in range(900):
        assert server.alive(), server.log()
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"no /health answer:\n{server.log()[-2000:]}")


def test_no_model_starts_but_is_not_ready(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    server = ServerProcess(folder, tmp_path / "server.log").launch()
    try:
        wait_for_health(server)
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and "no model" in ready.json()["reason"]
        r = httpx.post(
            server.url + "/segment", files={"file": ("x.jpg", SMALL_IMAGE.read_bytes())}, timeout=60
        )
        assert r.status_code == 503
    finally:
        server.stop()


def test_exporter_refuses_a_name_the_service_could_not_serve(packed_model_dir: Path, tmp_path: Path) -> None:
    """The exporter and the loader share the description checks (format.py)."""
    from seg_service.format import write_model

    model, graph, tensors, _ = read_parts(packed_model_dir / "person.gnpk")
    model["name"] = "Ünïcode name"
    with pytest.raises(ModelFormatError, match="name"):
        write_model(tmp_path / "x.gnpk", model, graph, tensors)
