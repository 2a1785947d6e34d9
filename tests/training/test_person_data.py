"""The person training data: the multi-source folder, copy-paste compositing, strong augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("albumentations")

from seg_training.data import InputError, build_seg_dataset, read_image, read_mask  # noqa: E402
from seg_training.data.copy_paste import CopyPaste  # noqa: E402
from seg_training.data.person_mix import build  # noqa: E402
from seg_training.data.transforms import seed_pipeline, seg_train_transform  # noqa: E402
from seg_training.engine.config import load_config  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
PERSON_CONFIG = Path(__file__).resolve().parents[2] / "seg_training/configs/person.yaml"


def test_masks_follow_one_convention(mix):
    ccp = read_mask(DATA / "ccp/masks/0003.png")
    assert np.array_equal(read_mask(mix / "masks/ccp_0003.png"), (ccp > 0).astype(np.uint8))
    assert np.array_equal(
        read_mask(mix / "masks/portraits_00001.png"), read_mask(DATA / "portraits/masks/00001.png")
    )
    for stem in (p.stem for p in (DATA / "camvid/masks").iterdir()):
        labels = read_mask(DATA / f"camvid/masks/{stem}.png")
        mask = read_mask(mix / f"masks/camvid_{stem}.png")
        assert np.array_equal(mask == 1, labels == 9)  # pedestrians are people
        assert np.array_equal(mask == 255, (labels == 10) | (labels == 11))  # bicyclists and void ignored
    val = (mix / "val.txt").read_text().split()
    assert val == (mix / "val_ccp.txt").read_text().split() + (mix / "val_portraits.txt").read_text().split()
    assert not set(val) & set((mix / "train.txt").read_text().split())
    assert "camvid_val_frame" not in val  # val.txt stays CCP + portraits: the figures quoted so far
    assert np.array_equal(
        read_mask(mix / "masks/camvid_val_frame.png"), read_mask(mix / "masks/camvid_0001TP_006690.png")
    )


def test_scenes_are_people_free_photos_upscaled_once(mix):
    """Imagenette's church photos (a SCENE_CLASSES class) join training as all-background masks of
    SCENE_SIDE; its other classes (tench, parachute: often with people) stay out; the validation
    photos form val_scenes.txt, outside val.txt."""
    from seg_training.data.person_mix import SCENE_SIDE

    church = sorted(p.stem for p in (DATA / "imagenette/train/n03028079").glob("*.jpg"))
    train = (mix / "train.txt").read_text().split()
    scenes = [n for n in train if n.startswith("scenes_")]
    assert scenes == [f"scenes_n03028079_{stem}" for stem in church]
    assert (mix / "val_scenes.txt").read_text().split() == [
        f"scenes_n03028079_{p.stem}" for p in sorted((DATA / "imagenette/val/n03028079").glob("*.jpg"))
    ]
    assert not set((mix / "val_scenes.txt").read_text().split()) & set((mix / "val.txt").read_text().split())
    for name in scenes + (mix / "val_scenes.txt").read_text().split():
        image = read_image(mix / "images" / f"{name}.jpg")
        assert (
            image.shape == (SCENE_SIDE, SCENE_SIDE, 3) and not (mix / "images" / f"{name}.jpg").is_symlink()
        )
        assert np.array_equal(
            read_mask(mix / "masks" / f"{name}.png"), np.zeros((SCENE_SIDE, SCENE_SIDE), np.uint8)
        )
    source = read_image(DATA / f"imagenette/train/n03028079/{church[0]}.jpg").astype(np.float32)
    import cv2

    # the same photo, upscaled: its 96x96 downscale is close to the original (JPEG aside)
    back = cv2.resize(read_image(mix / "images" / f"{scenes[0]}.jpg"), (96, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(back.astype(np.float32) - source).mean() < 6
    assert any(
        n.startswith("scenes_") for n in (mix / "train_tune.txt").read_text().split()
    )  # tuned on them too


def _pair():
    return read_image(DATA / "camvid/images/0001TP_006690.jpg"), np.zeros((360, 480), np.uint8)


def test_copy_paste_pastes_labelled_people(mix):
    portrait = read_mask(DATA / "portraits/masks/00001.png")
    source = (read_image(DATA / "portraits/images/00001.jpg"), portrait)
    image, mask = _pair()
    paste = CopyPaste(1.0, max_objects=1)
    pasted_any = False
    for seed in range(8):
        out_image, out_mask = paste(image, mask, np.random.default_rng(seed), lambda i: source, 2)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert image.sum() == _pair()[0].sum() and not mask.any()  # inputs untouched
        changed = np.any(out_image != image, axis=2)
        if out_mask.any():
            pasted_any = True
            # the person label lands where the picture changed, and nowhere else
            assert changed[out_mask == 1].mean() > 0.9
            assert out_mask[changed].mean() > 0.5
    assert pasted_any
    # the same seed gives the same result; probability 0 leaves the sample alone
    a = paste(image, mask, np.random.default_rng(3), lambda i: source, 2)
    b = paste(image, mask, np.random.default_rng(3), lambda i: source, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    same = CopyPaste(0.0)(image, mask, np.random.default_rng(0), lambda i: source, 2)
    assert same[0] is image and same[1] is mask


def test_person_config_builds_mixed_training_set(mix):
    config = load_config("seg", PERSON_CONFIG, [("data.root", str(mix)), ("data.val_split", "val.txt")])
    train = build_seg_dataset(config["data"], "train")
    assert isinstance(train.mix, CopyPaste)
    image, mask = train[(0, 12345)]
    again = train[(0, 12345)]
    assert image.shape == (3, 224, 224) and mask.shape == (224, 224)
    assert np.array_equal(image.numpy(), again[0].numpy())  # seeded: reproducible across workers and resumes
    assert set(np.unique(mask.numpy())) <= {0, 1, 255}


def test_strong_augmentation_keeps_labels_aligned():
    image = np.zeros((300, 300, 3), np.uint8)
    image[100:200, 100:200] = 255
    mask = np.zeros((300, 300), np.uint8)
    mask[100:200, 100:200] = 1
    t = seg_train_transform(224, 256, (1.0, 1.0), False, 255, augment="strong")
    for seed in range(10):
        seed_pipeline(t, seed)
        out = t(image=image, mask=mask)
        grey = out["image"].numpy().mean(axis=0)
        bright = grey > (np.percentile(grey, 5) + np.percentile(grey, 95)) / 2  # any brightness or contrast
        labelled = out["mask"].numpy() == 1
        # colour changes move intensities but not where the square is
        assert (bright == labelled).mean() > 0.95
    with pytest.raises(ValueError, match="augment"):
        seg_train_transform(224, 256, augment="heavy")


def test_colour_free_augmentation_greys_and_turns_hues_more_often():
    """strong_colour: grey images in about 20 % of the samples (strong: 5 %) and hue turns that move
    a skin-coloured square's hue far (more than 40 degrees) in some of the rest; labels stay put."""
    import cv2

    from seg_training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    image = np.zeros((300, 300, 3), np.uint8)
    image[:] = (90, 140, 60)  # RGB: a green background
    image[100:200, 100:200] = (225, 170, 140)  # RGB: skin
    mask = np.zeros((300, 300), np.uint8)
    mask[100:200, 100:200] = 1

    def rates(augment: str) -> tuple[float, float]:
        t = seg_train_transform(224, 256, (1.0, 1.0), False, 255, augment=augment)
        grey = turned = 0
        for seed in range(200):
            seed_pipeline(t, seed)
            out = t(image=image, mask=mask)
            rgb = out["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
            rgb8 = np.clip(rgb * 255, 0, 255).astype(np.uint8)
            labelled = out["mask"].numpy() == 1
            ys, xs = np.nonzero(labelled)
            centre = rgb8[ys.min() + 10 : ys.max() - 10, xs.min() + 10 : xs.max() - 10]
            # grey: the square's mean colour (noise and JPEG averaged out) has equal channels
            mean = centre.reshape(-1, 3).mean(axis=0)
            if mean.max() - mean.min() < 4:
                grey += 1
                continue
            # the square's hue (OpenCV: 0-180) against skin's, the shorter way round
            hue = np.median(cv2.cvtColor(np.ascontiguousarray(centre), cv2.COLOR_RGB2HSV)[:, :, 0])
            skin = cv2.cvtColor(np.uint8([[[225, 170, 140]]]), cv2.COLOR_RGB2HSV)[0, 0, 0]
            turned += min(abs(int(hue) - int(skin)), 180 - abs(int(hue) - int(skin))) > 20
        return grey / 200, turned / 200

    grey, turned = rates("strong_colour")
    assert 0.12 < grey < 0.3 and 0.04 < turned < 0.2
    grey, turned = rates("strong")
    assert grey < 0.1 and turned < 0.02


def test_peer_comparison_scores_packed_models_by_pooled_person_iou(mix):
    """seg_training.peers.compare's accuracy rows equal an independent count over predict()'s masks;
    MediaPipe's rows come when an environment with it is named (MEDIAPIPE_PYTHON)."""

    from seg_service.runtime import load_model
    from seg_training.peers.compare import accuracy, speed

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    python = os.environ.get("MEDIAPIPE_PYTHON")
    rows = accuracy(str(PERSON_CONFIG), "val.txt", str(mix), [str(weights)], python, threads=2)
    model = load_model(weights)
    inter = union = 0
    for name in (mix / "val.txt").read_text().split():
        truth = read_mask(mix / "masks" / f"{name}.png")
        pred = model.predict(read_image(mix / "images" / f"{name}.jpg")) == 1
        keep = truth != 255
        inter += int((pred & (truth == 1) & keep).sum())
        union += int(((pred | (truth == 1)) & keep).sum())
    assert rows[0]["model"] == "person.gnpk" and rows[0]["images"] == 6
    assert rows[0]["person_iou"] == pytest.approx(inter / union)
    assert len(rows) == (3 if python else 1)
    timed = speed([str(weights)], python, str(DATA / "portraits/images/00002.jpg"), (160, 120), 2, 2, 2)
    assert timed[0]["calls"] == 4 and timed[0]["median_ms"] > 0
    assert ("ratio_to_peer" in timed[0]) == bool(python)
    # on people-free scenes the false-alarm share is the figure: person pixels over all pixels
    scenes = accuracy(str(PERSON_CONFIG), "val_scenes.txt", str(mix), [str(weights)], None, threads=2)
    marked = total = 0
    for name in (mix / "val_scenes.txt").read_text().split():
        pred = model.predict(read_image(mix / "images" / f"{name}.jpg")) == 1
        marked, total = marked + int(pred.sum()), total + pred.size
    assert scenes[0]["false_alarm"] == pytest.approx(marked / total)
    assert scenes[0]["person_iou"] == 0.0 and scenes[0]["images"] == 2


def test_peer_comparison_counts_failing_images_and_draws_the_worst(mix, tmp_path, capsys):
    """Per image: the person IoU of each image with a person (None without one), the median image and
    the count under 0.5, as an independent count says; --sheet draws the first model's worst images,
    lowest IoU first: one line per image, a truth tile and one tile per model."""
    import cv2

    from seg_service.runtime import load_model
    from seg_training.peers.compare import accuracy, main

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    rows = accuracy(str(PERSON_CONFIG), "val.txt", str(mix), [str(weights)] * 2, None, threads=2)
    model = load_model(weights)
    expected = []
    for name in rows[0]["names"]:
        truth = read_mask(mix / "masks" / f"{name}.png")
        pred = model.predict(read_image(mix / "images" / f"{name}.jpg")) == 1
        keep, person = truth != 255, truth == 1
        inter, union = int((pred & person & keep).sum()), int(((pred | person) & keep).sum())
        expected.append(inter / union if (person & keep).any() else None)
    assert rows[0]["names"] == (mix / "val.txt").read_text().split()
    assert rows[0]["image_iou"] == pytest.approx(expected)
    scored = sorted(v for v in expected if v is not None)
    assert rows[0]["images_with_person"] == len(scored) == 6
    assert rows[0]["median_image_iou"] == pytest.approx(float(np.median(scored)))
    assert rows[0]["images_under_half"] == sum(v < 0.5 for v in scored)

    sheet = tmp_path / "worst.png"
    argv = ["accuracy", "--config", str(PERSON_CONFIG), "--split", "val.txt", "--data-root", str(mix)]
    argv += ["--packed", str(weights), "--packed", str(weights), "--sheet", str(sheet), "--worst", "4"]
    assert main(argv) == 0
    assert "under 0.5" in capsys.readouterr().out
    picture = cv2.imread(str(sheet))
    assert picture.shape == (4 * 218, 3 * 200, 3)  # 4 lines of 200 px tiles under 18 px captions
    # the truth tile of the first line is the worst image's mask: its green pixels there
    worst = int(np.argmin([v if v is not None else 2.0 for v in expected]))
    truth = read_mask(mix / "masks" / f"{rows[0]['names'][worst]}.png") == 1
    tile = picture[18:218, :200].astype(int)
    greenish = (tile[:, :, 1] > tile[:, :, 2] + 40) & (tile[:, :, 1] > tile[:, :, 0] + 40)
    h, w = truth.shape
    scale = 200 / max(h, w)
    size = (round(w * scale), round(h * scale))
    shown = cv2.resize(truth.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    region = greenish[: shown.shape[0], : shown.shape[1]]
    assert (region & (shown == 1)).sum() > 0.5 * (shown == 1).sum()
    assert (region & (shown == 0)).sum() < 0.05 * max((shown == 0).sum(), 1)
    # a sheet that cannot be written is refused before any model runs
    assert main(argv[:-4] + ["--sheet", str(tmp_path / "worst.gif")]) == 2
    assert "must be a .png or .jpg" in capsys.readouterr().err


def test_peer_comparison_on_recoloured_photos(mix, capsys):
    """--recolour: every model scores the photos turned grey or hue-turned, as an independent count
    over predict() of the changed photos says; a bad spec stops before any model runs."""
    import cv2

    from seg_service.runtime import load_model
    from seg_training.peers.compare import accuracy, main, recolour_image

    photo = read_image(mix / "images" / f"{(mix / 'val.txt').read_text().split()[0]}.jpg")
    grey = recolour_image(photo, "grey")
    assert grey.shape == photo.shape and (grey[:, :, 0] == grey[:, :, 2]).all()
    assert np.array_equal(grey[:, :, 1], cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
    hsv, turned = (cv2.cvtColor(x, cv2.COLOR_RGB2HSV) for x in (photo, recolour_image(photo, "hue:60")))
    coloured = hsv[:, :, 1] > 60  # hue means little on nearly grey pixels
    shift = (turned[:, :, 0].astype(int) - hsv[:, :, 0].astype(int)) % 180
    assert np.median(shift[coloured]) == 30  # OpenCV's hue runs 0-180

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    rows = accuracy(str(PERSON_CONFIG), "val.txt", str(mix), [str(weights)], None, 2, recolour="grey")
    model = load_model(weights)
    inter = union = 0
    for name in rows[0]["names"]:
        truth = read_mask(mix / "masks" / f"{name}.png")
        pred = model.predict(recolour_image(read_image(mix / "images" / f"{name}.jpg"), "grey")) == 1
        keep = truth != 255
        inter += int((pred & (truth == 1) & keep).sum())
        union += int(((pred | (truth == 1)) & keep).sum())
    assert rows[0]["person_iou"] == pytest.approx(inter / union)
    argv = ["accuracy", "--config", str(PERSON_CONFIG), "--split", "val.txt", "--data-root", str(mix)]
    assert main(argv + ["--packed", str(weights), "--recolour", "sepia"]) == 2
    assert "use 'grey' or 'hue:DEG'" in capsys.readouterr().err


def test_peer_timer_without_mediapipe_says_why_in_one_line():
    """compare speed keeps MediaPipe in one serving process; a python without mediapipe makes it
    stop with the runner's own last error line, not a hang or a traceback of ours."""
    import sys

    from seg_training.peers.compare import MediaPipeTimer

    with pytest.raises(InputError, match="stopped: .*mediapipe"):
        with MediaPipeTimer(sys.executable, str(DATA / "portraits/images/00002.jpg"), (160, 120)) as peer:
            peer.time("general", 2)
    with pytest.raises(InputError, match="cannot run"):
        MediaPipeTimer("/nonexistent/python", str(DATA / "portraits/images/00002.jpg"), (160, 120))


def test_paced_timing_pauses_between_calls_and_times_only_the_calls(capsys):
    """compare speed --pace-ms: each timed call follows a pause, as camera frames do; the pause is
    not in the figure. A bad value is a one-line error."""
    import time

    from seg_training.peers.compare import main, speed

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    image = str(DATA / "portraits/images/00002.jpg")
    start = time.perf_counter()
    paced = speed([str(weights)], None, image, (160, 120), 1, 4, 1, pace_ms=150.0)
    elapsed = time.perf_counter() - start
    assert paced[0]["calls"] == 4
    assert elapsed >= 4 * 0.150  # the pauses happened ...
    assert paced[0]["median_ms"] < 150.0  # ... and are not in the time of a call
    for bad in ("-5", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            main(["speed", "--packed", str(weights), "--pace-ms", bad])
        assert exit_info.value.code == 2
        assert f"--pace-ms: must be a number >= 0, got '{bad}'" in capsys.readouterr().err
    assert (
        main(
            [
                "speed",
                "--packed",
                str(weights),
                "--size",
                "96x64",
                "--rounds",
                "1",
                "--repeats",
                "2",
                "--threads",
                "1",
                "--pace-ms",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "one call every 5 ms + its own time" in out
    from seg_service import kernels

    assert f"our kernels: {kernels.isa()} path" in out  # which code the figures are of
    assert "CPU hand-off: " in out  # and where the host placed the CPUs they ran on


def test_peer_ratio_is_the_median_of_the_rounds_ratios():
    """compare speed's ratio to MediaPipe: per round, ours over the peer's round median."""
    from seg_training.peers.compare import add_peer_ratios

    rows = [
        {"model": "ours.gnpk", "round_medians": [10.0, 30.0, 9.0]},
        {"model": "peer", "round_medians": [8.0, 20.0, 10.0]},
        {"model": "other.gnpk", "round_medians": [4.0, 10.0, 5.0]},
    ]
    add_peer_ratios(rows, "peer")
    assert rows[0]["ratio_to_peer"] == {"peer": "peer", "median": 1.25, "min": 0.9, "max": 1.5}
    assert rows[2]["ratio_to_peer"]["median"] == 0.5
    assert "ratio_to_peer" not in rows[1]
    lone = [{"model": "ours.gnpk", "round_medians": [1.0]}]
    add_peer_ratios(lone, "peer")
    assert "ratio_to_peer" not in lone[0]


def test_unlabelled_people_keeps_upright_regions_away_from_the_subject():
    """Only a reference region that is far from the labelled subject, big enough and upright becomes
    ignore; outline disagreements, flat shadows, specks and labelled pixels stay as they were."""
    from seg_training.data.person_mix import unlabelled_people

    truth = np.zeros((200, 300), np.uint8)
    truth[40:180, 20:70] = 1  # the labelled subject
    reference = np.zeros_like(truth)
    reference[38:182, 18:72] = 1  # the subject, outline slightly off
    reference[60:140, 200:230] = 1  # a bystander: upright, far away
    reference[185:195, 100:190] = 1  # a shadow on the ground: wide and flat
    reference[20:24, 260:263] = 1  # a speck
    reference[50:120, 72:78] = 1  # a bag at her side: within the gap (9 pixels here)
    extra = unlabelled_people(truth, reference, margin=2)
    assert extra[60:140, 200:230].all() and extra[58, 215] and not extra[55, 215]  # grown by 2 pixels
    bystander = np.zeros_like(extra)
    bystander[58:142, 198:232] = True
    assert not (extra & ~bystander).any()
    assert not (extra & (truth != 0)).any()
    with pytest.raises(InputError, match="reference mask"):
        unlabelled_people(truth, reference[:, :200])


@pytest.mark.skipif(
    not (os.environ.get("MEDIAPIPE_PYTHON") and Path(os.environ["MEDIAPIPE_PYTHON"]).is_file()),
    reason="needs MEDIAPIPE_PYTHON, the python of an environment with mediapipe installed",
)
def test_ccp_bystanders_from_mediapipe_become_ignore(tmp_path):
    """With MediaPipe named, only CCP training masks change, only from background to ignore, and
    exactly where unlabelled_people puts MediaPipe's own saved masks."""
    from seg_training.data.person_mix import unlabelled_people

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ccp").symlink_to(DATA / "ccp")
    out = tmp_path / "mix"
    counts = build(shared, out, ["ccp"], mediapipe_python=os.environ["MEDIAPIPE_PYTHON"])
    names = (out / "train.txt").read_text().split()
    # test copy 0005 has a passer-by behind the subject (MediaPipe 0.10.21 finds her)
    assert counts["ccp_bystanders"] >= 1 and (read_mask(out / "masks/ccp_0005.png") == 255).any()
    for i, name in enumerate(names):
        plain = (read_mask(DATA / f"ccp/masks/{name[4:]}.png") > 0).astype(np.uint8)
        reference = read_mask(out / "mediapipe" / "general" / f"{i}.png")
        expected = plain.copy()
        expected[unlabelled_people(plain, reference)] = 255
        assert np.array_equal(read_mask(out / "masks" / f"{name}.png"), expected)
    for name in (out / "val.txt").read_text().split():
        plain = (read_mask(DATA / f"ccp/masks/{name[4:]}.png") > 0).astype(np.uint8)
        assert np.array_equal(read_mask(out / "masks" / f"{name}.png"), plain)


def test_build_refuses_a_missing_mediapipe_python(tmp_path, capsys):
    from seg_training.data.person_mix import main

    with pytest.raises(SystemExit) as stop:
        main(
            [
                "--data",
                str(DATA),
                "--out",
                str(tmp_path / "mix"),
                "--mediapipe-python",
                str(tmp_path / "nope"),
            ]
        )
    assert stop.value.code == 2 and "--mediapipe-python: no such file" in capsys.readouterr().err
    assert not (tmp_path / "mix").exists()


@pytest.mark.skipif(
    not (os.environ.get("MEDIAPIPE_PYTHON") and Path(os.environ["MEDIAPIPE_PYTHON"]).is_file()),
    reason="needs MEDIAPIPE_PYTHON, the python of an environment with mediapipe installed",
)
def test_people_mediapipe_sees_in_scenes_become_ignore(tmp_path):
    """With MediaPipe named, a scene mask is ignore exactly where MediaPipe's saved mask, grown by 4
    pixels, marks a person, and background everywhere else."""
    import cv2

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "imagenette96").symlink_to(DATA / "imagenette")
    out = tmp_path / "mix"
    counts = build(shared, out, ["scenes"], mediapipe_python=os.environ["MEDIAPIPE_PYTHON"])
    names = (out / "train.txt").read_text().split() + (out / "val_scenes.txt").read_text().split()
    assert len(names) == 8 and 0 <= counts["scene_people"] <= 8
    for i, name in enumerate(names):
        reference = read_mask(out / "mediapipe/scenes/general" / f"{i}.png") > 0
        expected = np.where(cv2.dilate(reference.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0, 255, 0)
        assert np.array_equal(read_mask(out / "masks" / f"{name}.png"), expected.astype(np.uint8))


def test_build_names_a_missing_source_folder_and_how_to_leave_it_out(tmp_path, capsys):
    from seg_training.data.person_mix import main

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "ccp").symlink_to(DATA / "ccp")
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(shared), "--out", str(tmp_path / "mix"), "--sources", "ccp,scenes"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "imagenette96" in err and "--sources ccp" in err and len(err.strip().splitlines()) == 1


def test_pseudo_label_trusts_only_the_inside_and_the_far_outside_of_an_outline():
    """pseudo_label: person inside the outline less the band, background beyond it, ignore in the
    2 x band strip between, nothing else; an empty reference is all background."""
    import cv2

    from seg_training.data.person_mix import pseudo_label

    reference = np.zeros((100, 100), np.uint8)
    cv2.circle(reference, (50, 50), 30, 255, -1)
    label = pseudo_label(reference, band=3)
    assert set(np.unique(label)) == {0, 1, 255}
    assert label[50, 50] == 1 and label[50, 50 - 26] == 1  # 4 px inside the edge
    assert label[50, 50 - 30] == 255 and label[50, 50 - 32] == 255  # on the edge, 2 px outside
    assert label[50, 50 - 35] == 0 and label[0, 0] == 0  # 5 px outside, far away
    inside, band = (label == 1).sum(), (label == 255).sum()
    assert 0.8 * np.pi * 26**2 < inside < 1.2 * np.pi * 27**2
    assert 0.8 * 2 * np.pi * 30 * 6 < band < 1.25 * 2 * np.pi * 30 * 7
    assert not pseudo_label(np.zeros((20, 20), np.uint8)).any()


def _everyday_list(path: Path) -> tuple[Path, dict[str, list[str]]]:
    """A checked-photo list naming half of the test copies of each folder and class (tench, parachute)."""
    listed: dict[str, list[str]] = {"train": [], "val": []}
    for folder, take in (("train", 3), ("val", 1)):
        for wnid in ("n01440764", "n03888257"):
            stems = sorted(p.stem for p in (DATA / "imagenette" / folder / wnid).glob("*.jpg"))
            listed[folder] += [f"{wnid}/{stem}" for stem in stems[:take]]
    lines = ["# checked by eye", *(f"{folder} {e}" for folder, es in listed.items() for e in es)]
    path.write_text("\n".join(lines) + "\n")
    return path, listed


def test_checked_photo_lists_are_read_strictly(tmp_path):
    """The shipped list parses, names each photo once, in both folders; a malformed line is an
    InputError naming the file and line."""
    from seg_training.data.person_mix import EVERYDAY_CHECKED, checked_photos

    shipped = checked_photos(EVERYDAY_CHECKED)
    entries = shipped["train"] + shipped["val"]
    assert len(shipped["train"]) >= 200 and len(shipped["val"]) >= 100
    assert len(set(entries)) == len(entries)
    assert all(e.split("/")[0].startswith("n0") for e in entries)
    bad = tmp_path / "bad_everyday_list.txt"
    bad.write_text("# comment\ntrain n03000684/a\ntest n03000684/b\n")
    with pytest.raises(InputError, match=r"bad_everyday_list.txt:3: expected"):
        checked_photos(bad)


@pytest.mark.skipif(
    not (os.environ.get("MEDIAPIPE_PYTHON") and Path(os.environ["MEDIAPIPE_PYTHON"]).is_file()),
    reason="needs MEDIAPIPE_PYTHON, the python of an environment with mediapipe installed",
)
def test_everyday_photos_are_the_checked_ones_labelled_by_mediapipe(tmp_path):
    """With MediaPipe named, the everyday source labels exactly the listed photos, each in the list
    its folder gives, and keeps those where MediaPipe's saved mask covers 5-85 % of the pixels, each
    with pseudo_label of that mask; unlisted photos are not used; a listed photo that is missing is
    an InputError; without MediaPipe the source is left out."""
    from seg_training.data.person_mix import EVERYDAY_SHARE, pseudo_label

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "imagenette96").symlink_to(DATA / "imagenette")
    checked, listed = _everyday_list(tmp_path / "checked.txt")
    assert build(shared, tmp_path / "plain", ["everyday"], everyday_list=checked)["train"] == 0
    out = tmp_path / "mix"
    mediapipe = os.environ["MEDIAPIPE_PYTHON"]
    counts = build(shared, out, ["everyday"], mediapipe_python=mediapipe, everyday_list=checked)
    for folder, split in (("train", "train"), ("val", "val_everyday")):
        files = (out / f"mediapipe/everyday_{folder}/files.txt").read_text().split()
        assert [Path(f).stem for f in files] == [f"everyday_{e.replace('/', '_')}" for e in listed[folder]]
        kept = (out / f"{split}.txt").read_text().split()
        assert counts[split] == len(kept)
        for i, file in enumerate(files):
            name = Path(file).stem
            reference = read_mask(out / f"mediapipe/everyday_{folder}/general" / f"{i}.png")
            share = (reference > 0).mean()
            assert (name in kept) == (EVERYDAY_SHARE[0] <= share <= EVERYDAY_SHARE[1])
            if name in kept:
                assert np.array_equal(read_mask(out / "masks" / f"{name}.png"), pseudo_label(reference))
                assert read_image(out / "images" / f"{name}.jpg").shape == (288, 288, 3)
            else:
                assert not (out / "masks" / f"{name}.png").exists()
    assert counts["train"] >= 2  # a parachutist or an angler in most of the listed photos
    listed_names = {f"everyday_{e.replace('/', '_')}" for es in listed.values() for e in es}
    assert {p.stem for p in (out / "images").glob("everyday_*")} <= listed_names
    checked.write_text(checked.read_text() + "train n03888257/not_there\n")
    with pytest.raises(InputError, match="not_there.jpg: listed in"):
        build(shared, tmp_path / "again", ["everyday"], mediapipe_python=mediapipe, everyday_list=checked)


def test_low_resolution_augmentation_blurs_images_not_masks():
    """data.low_resolution: in about that share of the samples the image loses its fine detail (a
    checkerboard of 2-pixel squares averages out to grey) while the mask stays sharp; 0 adds
    nothing and a share outside [0, 1] is refused."""
    image = np.zeros((256, 256, 3), np.uint8)
    image[(np.add.outer(np.arange(256) // 2, np.arange(256) // 2) % 2) == 1] = 255
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 64:192] = 1

    def blurred_share(low_resolution: float) -> float:
        t = seg_train_transform(224, 256, (1.0, 1.0), False, 255, low_resolution=low_resolution)
        blurred = 0
        for seed in range(100):
            seed_pipeline(t, seed)
            out = t(image=image, mask=mask)
            grey = out["image"].numpy().mean(axis=0)
            blurred += grey.std() < 0.5 * 2.2  # the board's normalised std is about 2.2
            labels = out["mask"].numpy()
            assert set(np.unique(labels)) == {0, 1} and (labels == 1).sum() == 128 * 128
        return blurred / 100

    assert 0.15 < blurred_share(0.3) < 0.45
    assert blurred_share(0.0) == 0
    assert "Downscale" not in str(seg_train_transform(224, 256))
    with pytest.raises(ValueError, match="low_resolution"):
        seg_train_transform(224, 256, low_resolution=1.5)


def _pooled_iou(mix: Path, names: list[str], mask_of) -> float:
    """Person IoU pooled over the named photos of a built mix, counted here from the masks
    ``mask_of(rgb, truth_shape)`` gives (an independent check of compare.accuracy)."""
    inter = union = 0
    for name in names:
        truth = read_mask(mix / "masks" / f"{name}.png")
        pred = mask_of(read_image(mix / "images" / f"{name}.jpg"), truth.shape) == 1
        keep = truth != 255
        inter += int((pred & (truth == 1) & keep).sum())
        union += int(((pred | (truth == 1)) & keep).sum())
    return inter / union


def test_peer_comparison_on_shrunk_photos(mix, capsys):
    """--shrink SIDE: every model scores the photos with the detail of a SIDE-pixel image, as an
    independent count over predict() of the changed photos says; a bad SIDE is argparse's error."""
    from seg_service.runtime import load_model
    from seg_training.peers.compare import accuracy, main, shrink_image

    photo = read_image(mix / "images" / f"{(mix / 'val.txt').read_text().split()[0]}.jpg")
    small = shrink_image(photo, 48)
    assert small.shape == photo.shape and small.dtype == np.uint8
    assert (
        np.abs(np.diff(small.astype(float), axis=1)).mean()
        < 0.6 * np.abs(np.diff(photo.astype(float), axis=1)).mean()
    )
    assert shrink_image(photo, 4 * max(photo.shape)) is photo

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    rows = accuracy(str(PERSON_CONFIG), "val.txt", str(mix), [str(weights)], None, 2, shrink=64)
    model = load_model(weights)
    expected = _pooled_iou(mix, rows[0]["names"], lambda rgb, shape: model.predict(shrink_image(rgb, 64)))
    assert rows[0]["person_iou"] == pytest.approx(expected)
    argv = ["accuracy", "--config", str(PERSON_CONFIG), "--split", "val.txt", "--data-root", str(mix)]
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--packed", str(weights), "--shrink", "0"])
    assert stop.value.code == 2
    assert "argument --shrink: must be at least 1, got 0" in capsys.readouterr().err.strip().splitlines()[-1]


def test_build_without_mediapipe_says_it_left_the_everyday_photos_out(tmp_path, capsys):
    from seg_training.data.person_mix import main

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "imagenette96").symlink_to(DATA / "imagenette")
    assert main(["--data", str(shared), "--out", str(tmp_path / "mix"), "--sources", "scenes,everyday"]) == 0
    out = capsys.readouterr().out
    assert "val_everyday 0" in out and "left out everyday" in out
    assert not any(n.startswith("everyday_") for n in (tmp_path / "mix" / "train.txt").read_text().split())


def test_peer_comparison_at_webcam_frame_size(mix, capsys):
    """--frame WxH: every model sees each photo resized to a camera frame (H x W for portrait
    photos), its mask scored after a nearest resize back to the photo, as an independent count over
    predict() says; a bad size is argparse's error."""
    import cv2

    from seg_service.runtime import load_model, resize_nearest
    from seg_training.peers.compare import accuracy, frame_image, main

    photo = read_image(mix / "images" / f"{(mix / 'val.txt').read_text().split()[0]}.jpg")
    framed = frame_image(photo, (64, 48))
    assert framed.shape == ((64, 48, 3) if photo.shape[0] > photo.shape[1] else (48, 64, 3))
    assert frame_image(framed, (64, 48)) is framed

    weights = Path(__file__).resolve().parents[2] / "weights" / "person.gnpk"
    rows = accuracy(str(PERSON_CONFIG), "val.txt", str(mix), [str(weights)], None, 2, frame=(80, 60))
    model = load_model(weights)

    def framed(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        h, w = (80, 60) if rgb.shape[0] > rgb.shape[1] else (60, 80)
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        return resize_nearest(model.predict(small), *shape[:2])

    assert rows[0]["person_iou"] == pytest.approx(_pooled_iou(mix, rows[0]["names"], framed))
    argv = ["accuracy", "--config", str(PERSON_CONFIG), "--split", "val.txt", "--data-root", str(mix)]
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--packed", str(weights), "--frame", "320"])
    assert stop.value.code == 2
    assert "argument --frame: use WxH" in capsys.readouterr().err.strip().splitlines()[-1]
