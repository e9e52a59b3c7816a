"""Parity of the YOLO-pose adapter with ultralytics' own ``YOLO.predict``, run as its docs say.

The reference is a separate ``ultralytics.YOLO(weights)`` predicting on an image *file* (what a
user does), with the same ``imgsz``, ``conf`` and ``iou``. poseguide reads the same file with its
own image reader and estimates through its adapter. Photos are real ones that ship with installed
packages (scikit-image's astronaut and camera, matplotlib's Grace Hopper), resized to the sizes
users feed (square, landscape, portrait, odd sides, larger than the inference size), written as
PNG (lossless, so both sides decode the same pixels), plus a grey and an RGBA file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from poseguide.pose import detections, weights, yolo
from poseguide.pose.api import load_photo

SIZES = [(512, 512), (400, 300), (333, 517), (1000, 750), (1920, 1080)]
IMGSZ = [640, 320]
CONF, IOU = 0.25, 0.7
# The parity bar for the uint8 path (in practice the numbers are identical).
PARITY_PX, PARITY_SCORE = 0.5, 1e-3
# The torch path (float tensors, no uint8 rounding of the resized image) against the uint8 path,
# for joints both are confident about (> 0.5): measured at most 0.82 % of the image's long side
# (3.3 px on a 400 x 300 photo at imgsz 320; usually < 0.3 %), joint confidences within 0.014,
# person scores within 0.003. A wrong resize (antialiasing), padding or mapping back moves
# joints by tens of pixels (measured: up to 480 px before the adapter used ultralytics' geometry).
TORCH_REL_PX, TORCH_JOINT_SCORE, TORCH_PERSON_SCORE = 0.015, 0.03, 0.01


def _photo(name: str) -> Image.Image:
    if name == "hopper":
        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return Image.open(path).convert("RGB")
    if name == "camera":  # grey, one channel
        return Image.fromarray(skdata.camera())
    return Image.fromarray(skdata.astronaut())


def _rgba(image: Image.Image) -> Image.Image:
    """The image with a real, varying alpha channel (ultralytics and PIL both drop it)."""
    alpha = np.tile(np.linspace(40, 255, image.width, dtype=np.uint8), (image.height, 1))
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PNG files: (photo, size) for the RGB photos, the grey camera and an RGBA astronaut."""
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for name in ("astronaut", "hopper", "camera"):
        for size in SIZES:
            image = _photo(name).resize(size, Image.Resampling.BICUBIC)
            files[f"{name}-{size[0]}x{size[1]}"] = folder / f"{name}-{size[0]}x{size[1]}.png"
            image.save(files[f"{name}-{size[0]}x{size[1]}"])
            if name == "astronaut":
                key = f"rgba-{size[0]}x{size[1]}"
                files[key] = folder / f"{key}.png"
                _rgba(image).save(files[key])
    assert Image.open(files["camera-400x300"]).mode == "L"
    assert Image.open(files["rgba-400x300"]).mode == "RGBA"
    return files


@pytest.fixture(scope="module")
def reference() -> object:
    """ultralytics itself, with the same weights file, loaded independently of poseguide."""
    from ultralytics import YOLO

    return YOLO(str(weights.resolve_pose_weights(weights.DEFAULT_POSE_WEIGHTS)))


@pytest.fixture(scope="module")
def estimators() -> dict[int, yolo.YoloPoseEstimator]:
    return {s: yolo.YoloPoseEstimator(device="cpu", imgsz=s, conf=CONF, iou=IOU) for s in IMGSZ}


def _reference(model: object, path: Path, imgsz: int) -> tuple[np.ndarray, ...]:
    threads = torch.get_num_threads()
    try:
        result = model.predict(str(path), imgsz=imgsz, conf=CONF, iou=IOU, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)
    if result.keypoints is None or len(result.boxes) == 0:
        return np.zeros((0, 17, 3)), np.zeros(0), np.zeros((0, 4))
    return (result.keypoints.data.numpy(), result.boxes.conf.numpy(), result.boxes.xyxy.numpy())


def _assert_same(ours: detections.Detections, ref: tuple[np.ndarray, ...], what: str) -> None:
    kpts, scores, boxes = ref
    assert len(ours) == len(scores), f"{what}: {len(ours)} people, ultralytics {len(scores)}"
    # Same people in the same order (descending score), same coordinates and confidences.
    np.testing.assert_allclose(ours.scores, scores, atol=PARITY_SCORE, err_msg=what)
    np.testing.assert_allclose(ours.keypoints[..., :2], kpts[..., :2], atol=PARITY_PX, err_msg=what)
    np.testing.assert_allclose(
        ours.keypoints[..., 2], kpts[..., 2], atol=PARITY_SCORE, err_msg=what
    )
    np.testing.assert_allclose(ours.boxes, boxes, atol=PARITY_PX, err_msg=what)


@pytest.mark.parametrize("imgsz", IMGSZ)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_photos_equal_ultralytics_predict(photo_files, reference, estimators, size, imgsz) -> None:
    found_someone = False
    for kind in ("astronaut", "hopper", "camera", "rgba"):
        path = photo_files[f"{kind}-{size[0]}x{size[1]}"]
        image = load_photo(path)  # poseguide's reader: EXIF applied, RGB
        (ours,) = estimators[imgsz].estimate_people([image])
        assert ours.image_size == size
        _assert_same(ours, _reference(reference, path, imgsz), f"{path.name} imgsz {imgsz}")
        found_someone |= len(ours) > 0
    assert found_someone  # the comparison is not between two empty results


def test_batches_and_mixed_sizes_equal_single_predicts(photo_files, reference, estimators) -> None:
    # A list mixing sizes (and repeating one) is grouped into same-size batches; each result
    # must still be what ultralytics gives for that image alone.
    keys = ["astronaut-400x300", "hopper-333x517", "astronaut-400x300", "camera-1000x750"]
    images = [load_photo(photo_files[k]) for k in keys]
    for key, ours in zip(keys, estimators[640].estimate_people(images), strict=True):
        ref = _reference(reference, photo_files[key], 640)
        kpts, scores, _ = ref
        assert len(ours) == len(scores), key
        # Batched convolutions may pick other CPU kernels than a single image: float noise only.
        np.testing.assert_allclose(ours.keypoints[..., :2], kpts[..., :2], atol=0.05, err_msg=key)
        np.testing.assert_allclose(ours.scores, scores, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("imgsz", IMGSZ)
def test_torch_path_agrees_with_the_uint8_path(photo_files, estimators, imgsz) -> None:
    est = estimators[imgsz]
    for key in ["astronaut-400x300", "hopper-333x517", "camera-1000x750", "hopper-1920x1080"]:
        image = load_photo(photo_files[key])
        (ref,) = est.estimate_people([image])
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        (got,) = est.estimate_people(tensor)
        assert len(got) == len(ref) > 0, key
        sure = (got.keypoints[..., 2] > 0.5) & (ref.keypoints[..., 2] > 0.5)
        dist = np.hypot(*(got.keypoints[..., :2] - ref.keypoints[..., :2]).transpose(2, 0, 1))
        assert dist[sure].max() <= TORCH_REL_PX * max(image.size), key
        assert np.abs(got.keypoints[..., 2] - ref.keypoints[..., 2]).max() <= TORCH_JOINT_SCORE
        assert np.abs(got.scores - ref.scores).max() <= TORCH_PERSON_SCORE, key


def test_torch_path_keeps_gradients_to_the_input(estimators) -> None:
    image = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float()[None] / 255
    image.requires_grad_(True)
    (found,) = estimators[320].detect(image)
    assert len(found.scores) == 1 and found.keypoints.requires_grad
    found.keypoints[0, :, :2].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    net = estimators[320].network
    assert not any(p.requires_grad for p in net.parameters())  # frozen: input gradients only
