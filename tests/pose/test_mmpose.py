"""The mmpose backend (HigherHRNet, issue 20): what poseguide does around mmpose, with a stand-in
``mmpose.apis`` module (mmpose is installed separately, not in CI), and the real mmpose where it
is importable (README's recipe)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from poseguide.config import ConfigError, load_config
from poseguide.config.schema import EstimatorConfig
from poseguide.pose.api import estimator_from_config
from poseguide.pose.mmpose import (
    MMPoseBottomUpEstimator,
    MMPoseUnavailableError,
    load_checkpoint_state,
)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, 17, 1)
        self.cfg = types.SimpleNamespace(model=types.SimpleNamespace(test_cfg={}))


def _people(size: tuple[int, int]) -> list[dict]:
    """Three people as mmpose 0.x returns them: (17, 3) x, y, score and a person score."""
    rng = np.random.default_rng(0)
    out = []
    for score in (0.3, 0.9, 0.1):
        kp = np.concatenate([rng.uniform(0, size[0], (17, 1)), rng.uniform(0, size[1], (17, 1)),
                             rng.uniform(0, 1, (17, 1))], axis=1).astype(np.float32)  # fmt: skip
        out.append({"keypoints": kp, "score": np.float32(score), "area": 1.0})
    return out


@pytest.fixture
def fake_mmpose(monkeypatch) -> types.SimpleNamespace:
    """``mmpose.apis`` with mmpose 0.x's two calls, recording what they were given."""
    seen = types.SimpleNamespace(images=[], inits=[])

    def init_pose_model(config, checkpoint, device):
        seen.inits.append((config, checkpoint, device))
        return _Net()

    def inference_bottom_up_pose_model(model, img, return_heatmap=False):
        seen.images.append(img.copy())
        h, w = img.shape[:2]
        maps = np.linspace(-0.5, 1.5, 17 * h * w, dtype=np.float32).reshape(1, 17, h, w)
        return _people((w, h)), [{"heatmap": maps}] if return_heatmap else []

    apis = types.ModuleType("mmpose.apis")
    apis.init_pose_model = init_pose_model
    apis.inference_bottom_up_pose_model = inference_bottom_up_pose_model
    package = types.ModuleType("mmpose")
    package.apis = apis
    monkeypatch.setitem(sys.modules, "mmpose", package)
    monkeypatch.setitem(sys.modules, "mmpose.apis", apis)
    return seen


def test_people_are_scored_sorted_boxed_and_images_go_in_as_bgr(fake_mmpose) -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cfg = EstimatorConfig(backend="mmpose", mmpose_config="hh.py", weights="w.pth", conf=0.25)
    estimator = estimator_from_config(cfg)
    assert isinstance(estimator, MMPoseBottomUpEstimator)
    assert (estimator.config, estimator.weights, estimator.conf) == ("hh.py", "w.pth", 0.25)
    estimator.weights = None  # no checkpoint file here (loading one is tested below)
    (found,) = estimator.estimate_people([image])
    assert fake_mmpose.inits == [("hh.py", None, "cpu")]
    assert fake_mmpose.images[0][0, 0].tolist() == [0, 0, 200]  # BGR, as cv2.imread gives
    assert found.image_size == (40, 30) and len(found) == 2  # the 0.1 person is below conf
    np.testing.assert_allclose(found.scores, [0.9, 0.3], rtol=1e-6)
    expected = _people((40, 30))
    np.testing.assert_allclose(found.keypoints[0], expected[1]["keypoints"], rtol=1e-6)
    sure = expected[1]["keypoints"][expected[1]["keypoints"][:, 2] >= 0.25, :2]
    np.testing.assert_allclose(found.boxes[0], [*sure.min(0), *sure.max(0)], rtol=1e-6)
    maps = estimator.heatmaps([image, image], heatmap_size=(20, 15))
    assert maps.shape == (2, 17, 15, 20) and maps.min() >= 0 and maps.max() <= 1
    assert 0 < float(maps.mean()) < 1


def test_the_checkpoint_loads_tensors_and_numpy_meta_but_no_code(tmp_path: Path) -> None:
    net = _Net()
    path = tmp_path / "hh.pth"
    meta = {"epoch": np.int64(300), "best": np.array([0.5, 0.6]), "env": "text"}
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "meta": meta}, path)  # fmt: skip
    state = load_checkpoint_state(path)
    assert state.keys() == net.state_dict().keys()
    torch.testing.assert_close(state["head.weight"], net.head.weight.detach())

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": net.state_dict(), "meta": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="print|Unsupported global|weights_only"):
        load_checkpoint_state(tmp_path / "evil.pth")


def test_missing_mmpose_is_one_line_with_the_recipe(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mmpose", None)  # import fails
    monkeypatch.setitem(sys.modules, "mmpose.apis", None)
    estimator = MMPoseBottomUpEstimator("hh.py", None)
    with pytest.raises(MMPoseUnavailableError, match="README 'The field's protocols'"):
        estimator.estimate_people([np.zeros((8, 8, 3), np.uint8)])


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="mmpose_config"):
        EstimatorConfig(backend="mmpose")
    with pytest.raises(ConfigError, match="mmpose_config"):
        EstimatorConfig(mmpose_config="hh.py")
    judged = load_config("tiny", ["evaluate.estimator.backend=mmpose",
                                  "evaluate.estimator.mmpose_config=hh.py"])  # fmt: skip
    assert judged.evaluate.estimator.backend == "mmpose"
    with pytest.raises(ConfigError, match="reward stage .* only backend 'ultralytics'"):
        load_config("tiny_reward", ["pose.estimator.backend=mmpose",
                                    "pose.estimator.mmpose_config=hh.py"])  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("mmpose") is None, reason="mmpose not installed")
def test_real_mmpose_higherhrnet_matches_its_own_inference(tmp_path: Path) -> None:
    """With mmpose installed (README's recipe): HigherHRNet-W32 with random weights, a low
    detection threshold so that people are grouped; poseguide's people equal mmpose's own
    inference on the image file (which mmpose reads as BGR)."""
    import mmpose
    from PIL import Image
    from skimage import data as skdata

    configs = Path(mmpose.__file__).parent / ".mim" / "configs"
    config = next(configs.rglob("higherhrnet_w32_coco_512x512.py"), None)
    if config is None:
        pytest.skip("this mmpose ships no HigherHRNet config (mmpose 1.x)")
    from mmcv import Config

    cfg = Config.fromfile(str(config))
    cfg.model.test_cfg.detection_threshold = -1.0  # random weights: group anybody
    torch.manual_seed(0)
    estimator = MMPoseBottomUpEstimator(cfg, None, conf=0.0)
    image = skdata.astronaut()
    Image.fromarray(image).save(tmp_path / "astronaut.png")
    (found,) = estimator.estimate_people([image])
    _, apis = estimator._api
    people, _ = apis.inference_bottom_up_pose_model(estimator.model,
                                                    str(tmp_path / "astronaut.png"))  # fmt: skip
    people = sorted(people, key=lambda p: -float(p["score"]))
    assert len(found) == len(people) > 0
    np.testing.assert_allclose(found.keypoints, np.stack([p["keypoints"] for p in people]),
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    maps = estimator.heatmaps([image], heatmap_size=(128, 96))
    assert maps.shape == (1, 17, 96, 128) and 0 <= float(maps.min()) <= float(maps.max()) <= 1
