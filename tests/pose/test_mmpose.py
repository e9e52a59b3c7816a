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
from poseguide.errors import UserError
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
    seen = types.SimpleNamespace(images=[], inits=[], nms=[])

    def init_pose_model(config, checkpoint, device):
        seen.inits.append((config, checkpoint, device))
        return _Net()

    def inference_bottom_up_pose_model(model, img, pose_nms_thr=0.9, return_heatmap=False):
        seen.images.append(img.copy())
        seen.nms.append(pose_nms_thr)
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
    cfg = EstimatorConfig(backend="mmpose", mmpose_config="hh.py", weights="w.pth", conf=0.25,
                          iou=1.0)  # fmt: skip
    estimator = estimator_from_config(cfg)
    assert isinstance(estimator, MMPoseBottomUpEstimator)
    assert (estimator.config, estimator.weights, estimator.conf) == ("hh.py", "w.pth", 0.25)
    estimator.weights = None  # no checkpoint file here (loading one is tested below)
    (found,) = estimator.estimate_people([image])
    assert fake_mmpose.inits == [("hh.py", None, "cpu")]
    assert fake_mmpose.nms == [1.0]  # evaluate.estimator.iou is mmpose's pose_nms_thr
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
    with pytest.raises(UserError, match="evil.pth: refused to load"):
        load_checkpoint_state(tmp_path / "evil.pth")


def test_missing_mmpose_is_one_line_with_the_recipe(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mmpose", None)  # import fails
    monkeypatch.setitem(sys.modules, "mmpose.apis", None)
    estimator = MMPoseBottomUpEstimator("hh.py", None)
    with pytest.raises(MMPoseUnavailableError, match="README 'The field's protocols'"):
        estimator.estimate_people([np.zeros((8, 8, 3), np.uint8)])
    newer = types.ModuleType("mmpose")  # mmpose 1.x: another API, no HigherHRNet configs
    newer.__version__, newer.apis = "1.3.2", types.ModuleType("mmpose.apis")
    monkeypatch.setitem(sys.modules, "mmpose", newer)
    monkeypatch.setitem(sys.modules, "mmpose.apis", newer.apis)
    with pytest.raises(MMPoseUnavailableError, match="mmpose 1.3.2 .* install mmpose 0.29.0"):
        estimator.estimate_people([np.zeros((8, 8, 3), np.uint8)])


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="mmpose_config"):
        EstimatorConfig(backend="mmpose")
    with pytest.raises(ConfigError, match="mmpose_config"):
        EstimatorConfig(mmpose_config="hh.py")
    with pytest.raises(ConfigError, match="weights: 'yolo.*-pose.pt' is a YOLO model"):
        load_config("tiny", ["evaluate.estimator.backend=mmpose",
                             "evaluate.estimator.mmpose_config=hh.py"])  # fmt: skip
    judged = load_config("tiny", ["evaluate.estimator.backend=mmpose",
                                  "evaluate.estimator.mmpose_config=hh.py",
                                  "evaluate.estimator.weights=hh.pth"])  # fmt: skip
    assert judged.evaluate.estimator.backend == "mmpose"
    mmpose = [f"pose.estimator.{kv}" for kv in ("backend=mmpose", "mmpose_config=hh.py",
                                                 "weights=hh.pth")]  # fmt: skip
    reward = next(i for i, s in enumerate(load_config("tiny_reward").train.stages)
                  if s.loss.kind == "reward")  # fmt: skip
    own = f"train.stages.{reward}.loss.reward_estimator"
    with pytest.raises(ConfigError, match="pose.estimator.backend: the reward stage .* only "
                       "backend 'ultralytics'"):  # fmt: skip
        load_config("tiny_reward", [*mmpose, f"{own}=null"])  # the reward uses pose.estimator
    with pytest.raises(ConfigError, match=f"{own}.backend: the reward stage"):
        load_config("tiny_reward", [f"{own}={{backend: mmpose, mmpose_config: hh.py, "
                                    "weights: hh.pth}"])  # fmt: skip
    # the stage-2 mask may use mmpose while the reward keeps its own YOLO (tiny_reward's)
    assert load_config("tiny_reward", mmpose).pose.estimator.backend == "mmpose"


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
    apis = estimator._api
    people, _ = apis.inference_bottom_up_pose_model(estimator.model,
                                                    str(tmp_path / "astronaut.png"))  # fmt: skip
    people = sorted(people, key=lambda p: -float(p["score"]))
    assert len(found) == len(people) > 0
    np.testing.assert_allclose(found.keypoints, np.stack([p["keypoints"] for p in people]),
                               rtol=1e-5, atol=1e-4)  # fmt: skip
    maps = estimator.heatmaps([image], heatmap_size=(128, 96))
    assert maps.shape == (1, 17, 96, 128) and 0 <= float(maps.min()) <= float(maps.max()) <= 1


def test_a_checkpoint_pickled_under_numpy_1_loads(tmp_path: Path) -> None:
    """Published openmmlab checkpoints were pickled under numpy 1: their numpy globals are named
    numpy.core.multiarray (numpy 2 names them numpy._core.multiarray); both are allowed."""
    import zipfile

    torch.save({"state_dict": {"w": torch.ones(2)},
                "meta": {"best": np.array([1.0, 2.0]), "epoch": np.int64(3)}},
               tmp_path / "new.pth")  # fmt: skip
    with zipfile.ZipFile(tmp_path / "new.pth") as new, \
            zipfile.ZipFile(tmp_path / "old.pth", "w") as old:  # fmt: skip
        for name in new.namelist():
            data = new.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            old.writestr(name, data)
    torch.testing.assert_close(load_checkpoint_state(tmp_path / "old.pth")["w"], torch.ones(2))
