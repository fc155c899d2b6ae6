"""caffenorm.transform (Caffe's TransformationParameter + pycaffe's Transformer) against an
independent float64 reference written from the formula, never from the code under test:

    out[c, i, j] = (x[h_off + i, w_off + j', swap[c]] * raw_scale - M[c, h_off + i, w_off + j']) * scale
    j' = crop_w - 1 - j when mirrored, else j;  x = cv2.resize(image, INTER_LINEAR) when resizing
"""

from __future__ import annotations

import ast
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffenorm.caffe import schema
from caffenorm.caffe.transform_param import transform_from_param
from caffenorm.cli import main
from caffenorm.errors import InputShapeError, LayerConfigError, ModelFileError, UnsupportedLayerError
from caffenorm.transform import Transform, load_image, transform_batch, transform_image

cv2 = pytest.importorskip("cv2")


def reference(image, *, size=None, crop=None, offsets=None, flip=False, swap=None, raw_scale=1.0, mean=None,
              mean_image=None, scale=1.0):
    """float64, straight from the formula above (resize: OpenCV INTER_LINEAR in the image's dtype)."""
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[:, :, None]
    if size is not None:
        x = cv2.resize(x, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        x = x[:, :, None] if x.ndim == 2 else x
    x = x.astype(np.float64)
    height, width, channels = x.shape
    ch, cw = crop if crop is not None else (height, width)
    h_off, w_off = offsets if offsets is not None else ((height - ch) // 2, (width - cw) // 2)
    swap = list(range(channels)) if swap is None else list(swap)
    if mean_image is not None:
        m = np.asarray(mean_image, dtype=np.float64)
    elif mean is not None:
        values = np.asarray(mean, dtype=np.float64)
        m = np.broadcast_to(values.reshape(-1, 1, 1) if values.size > 1 else values, (channels, height, width))
    else:
        m = np.zeros((channels, height, width))
    out = np.empty((channels, ch, cw))
    for c in range(channels):
        for i in range(ch):
            for j in range(cw):
                jj = cw - 1 - j if flip else j
                out[c, i, j] = (x[h_off + i, w_off + jj, swap[c]] * raw_scale - m[c, h_off + i, w_off + jj]) * scale
    return out


def close(actual, expected):
    assert actual.dtype == np.float32 and actual.flags.c_contiguous
    assert actual.shape == expected.shape
    # float32 arithmetic (two roundings per value) against float64
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expected).max())))


@pytest.fixture
def bgr():
    return np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)


# -- deterministic steps ---------------------------------------------------------------------------


@pytest.mark.parametrize("mean", [(104.0, 117.0, 123.0), (128.0,)])
def test_mean_values_one_or_one_per_channel(bgr, mean):
    t = Transform(mean=mean, scale=0.017)
    close(transform_image(t, bgr), reference(bgr, mean=mean, scale=0.017))


def test_no_parameters_is_hwc_to_float_chw(bgr):
    out = transform_image(Transform(), bgr)
    np.testing.assert_array_equal(out, bgr.transpose(2, 0, 1).astype(np.float32))


def test_mean_image_is_cropped_at_the_centre_offset(bgr):
    mean_image = np.random.default_rng(1).uniform(0, 255, (3, 7, 9)).astype(np.float32)
    t = Transform(crop=4, mean_image=mean_image, scale=0.5)
    out = transform_image(t, bgr)
    # TEST phase: h_off = (7 - 4) // 2 = 1, w_off = (9 - 4) // 2 = 2 (rounded down)
    close(out, reference(bgr, crop=(4, 4), offsets=(1, 2), mean_image=mean_image, scale=0.5))
    rect = Transform(crop=(3, 6), mean_image=mean_image[None])  # (1, C, H, W) as in a .binaryproto
    close(transform_image(rect, bgr), reference(bgr, crop=(3, 6), offsets=(2, 1), mean_image=mean_image))


def test_pycaffe_channel_swap_raw_scale_mean_input_scale():
    rgb = np.random.default_rng(2).uniform(0, 1, (6, 5, 3)).astype(np.float32)  # caffe.io.load_image style
    t = Transform.from_pycaffe(channel_swap=(2, 1, 0), raw_scale=255, mean=(104, 117, 123), input_scale=0.5)
    assert t == Transform(channel_swap=(2, 1, 0), raw_scale=255.0, mean=(104.0, 117.0, 123.0), scale=0.5)
    close(transform_image(t, rgb), reference(rgb, swap=(2, 1, 0), raw_scale=255, mean=(104, 117, 123), scale=0.5))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_is_opencv_inter_linear_in_the_images_dtype(dtype):
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3)).astype(dtype)
    t = Transform(size=(24, 32), mean=(104, 117, 123))
    # uint8 is resized (and rounded) as uint8, as Caffe's ReadImageToCVMat
    close(transform_image(t, image), reference(image, size=(24, 32), mean=(104, 117, 123)))
    gray = image[:, :, 0]
    close(transform_image(Transform(size=(10, 11)), gray), reference(gray, size=(10, 11)))


def test_force_gray_and_force_color(bgr):
    gray = transform_image(Transform(force_gray=True), bgr)
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[None].astype(np.float32)
    np.testing.assert_array_equal(gray, expected)
    color = transform_image(Transform(force_color=True), bgr[:, :, :1])
    np.testing.assert_array_equal(color, np.repeat(bgr[None, :, :, 0], 3, axis=0).astype(np.float32))


# -- randomness ------------------------------------------------------------------------------------


def test_mirror_and_random_crop_are_reproducible_and_draw_caffes_offsets():
    image = np.random.default_rng(4).integers(0, 256, (7, 6, 3), dtype=np.uint8)
    mean_image = np.random.default_rng(5).uniform(0, 255, (3, 7, 6))
    t = Transform(crop=(4, 3), mirror=True, mean_image=mean_image, scale=0.25, phase="train")
    a = transform_batch(t, [image] * 300, rng=np.random.default_rng(42))
    b = transform_batch(t, [image] * 300, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)  # same seed, same batch
    # Every (h_off, w_off, flip) Caffe can draw: h_off in 0..7-4, w_off in 0..6-3.
    candidates = {
        (h, w, f): reference(image, crop=(4, 3), offsets=(h, w), flip=f, mean_image=mean_image, scale=0.25)
        for h in range(4) for w in range(4) for f in (False, True)
    }
    # The documented draws: per image the mirror coin, then h_off, then w_off.
    draws = np.random.default_rng(42)
    seen = set()
    for out in a:
        flip = bool(draws.integers(2))
        h_off, w_off = int(draws.integers(7 - 4 + 1)), int(draws.integers(6 - 3 + 1))
        close(out, candidates[h_off, w_off, flip])  # the mean moves with its pixel under the mirror
        seen.add((h_off, w_off, flip))
    assert seen == set(candidates)  # the whole range, both ends included, both mirror states


def test_mirror_is_random_in_test_phase_too_and_needs_a_generator(bgr):
    t = Transform(mirror=True)  # Caffe: do_mirror = mirror() && Rand(2), no phase check
    with pytest.raises(LayerConfigError, match=r"mirror=True.*rng=numpy\.random\.default_rng"):
        transform_image(t, bgr)
    outs = {transform_image(t, bgr, rng=np.random.default_rng(s)).tobytes() for s in range(20)}
    plain = reference(bgr)
    assert outs == {plain.astype(np.float32).tobytes(), plain[:, :, ::-1].astype(np.float32).tobytes()}
    crop = Transform(crop=3)  # TEST-phase crop: centred, no randomness
    assert not crop.needs_rng() and replace(crop, phase="train").needs_rng()
    close(transform_image(crop, bgr), reference(bgr, crop=(3, 3), offsets=(2, 3)))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        transform_image(t, bgr, rng=np.random.RandomState(0))


def test_batch_is_nchw_and_needs_one_output_size(bgr):
    other = np.random.default_rng(6).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    t = Transform(size=(8, 8), mean=(1.0,))
    out = transform_batch(t, [bgr, other])
    assert out.shape == (2, 3, 8, 8)
    close(out[1], reference(other, size=(8, 8), mean=(1.0,)))
    close(transform_batch(Transform(), np.stack([bgr, bgr]))[1], reference(bgr))
    with pytest.raises(InputShapeError, match="image 1 gives .* need size="):
        transform_batch(Transform(), [bgr, other])
    with pytest.raises(InputShapeError, match="empty"):
        transform_batch(Transform(), [])


# -- errors ----------------------------------------------------------------------------------------


def test_bad_mean_length_names_the_counts_and_the_fix(bgr):
    with pytest.raises(InputShapeError, match=r"mean has 2 values for an image with 3 channel.*give 1 value.* or 3"):
        transform_image(Transform(mean=(1, 2)), bgr)
    with pytest.raises(LayerConfigError, match="mean has 2 values but the image will have 3 channels"):
        Transform(mean=(1, 2), channel_swap=(2, 1, 0))
    with pytest.raises(LayerConfigError, match="mean_image="):
        Transform(mean=np.zeros((3, 4, 4)))
    with pytest.raises(LayerConfigError, match="Cannot specify mean_file and mean_value"):
        Transform(mean=(1,), mean_image=np.zeros((3, 7, 9)))


def test_crop_larger_than_the_image(bgr):
    with pytest.raises(InputShapeError, match=r"crop 8x8 is larger than the image \(7x9\).*smaller crop"):
        transform_image(Transform(crop=8), bgr)
    with pytest.raises(LayerConfigError, match="larger than the resize target 5x5"):
        Transform(size=(5, 5), crop=6)
    with pytest.raises(InputShapeError, match=r"mean image is 3x4x4 .* image is 3x7x9"):
        transform_image(Transform(mean_image=np.zeros((3, 4, 4))), bgr)


def test_bad_channel_swap(bgr):
    with pytest.raises(LayerConfigError, match=r"channel_swap \(0, 0, 2\) is not a permutation.*\(2, 1, 0\)"):
        Transform(channel_swap=(0, 0, 2))
    with pytest.raises(InputShapeError, match="channel_swap .* has 4 entries for an image with 3"):
        transform_image(Transform(channel_swap=(3, 2, 1, 0)), bgr)


def test_other_config_errors():
    with pytest.raises(LayerConfigError, match="force_color and force_gray"):
        Transform(force_color=True, force_gray=True)
    with pytest.raises(LayerConfigError, match="size must be"):
        Transform(size=(224,))
    with pytest.raises(LayerConfigError, match="scale must be finite"):
        Transform(scale=float("nan"))
    with pytest.raises(InputShapeError, match=r"\(H, W, C\)"):
        transform_image(Transform(), np.zeros((1, 2, 3, 4)))


def test_transform_is_a_frozen_value():
    a = Transform(crop=227, mean_image=np.ones((3, 256, 256)))
    b = Transform(crop=(227, 227), mean_image=np.ones((1, 3, 256, 256), dtype=np.float64))
    assert a == b and hash(a) == hash(b) and a.crop == (227, 227)
    assert a != replace(a, mean_image=np.zeros((3, 256, 256)))
    assert "mean_image=<float32 array 3x256x256>" in repr(a)
    with pytest.raises(FrozenInstanceError):
        a.scale = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        a.mean_image[0, 0, 0] = 5  # type: ignore[index]


# -- reading images --------------------------------------------------------------------------------


def test_load_image_reads_bgr_hwc_uint8(tmp_path, bgr):
    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    image = load_image(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (7, 9, 3)
    np.testing.assert_array_equal(image, bgr)
    assert load_image(tmp_path / "x.png", color=False).shape == (7, 9, 1)


def test_unreadable_or_missing_image_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ModelFileError, match=r"bad\.png: not an image OpenCV can read"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ModelFileError, match=r"nope\.jpg: no such image file"):
        load_image(tmp_path / "nope.jpg")


def test_missing_opencv_is_a_model_file_error_with_the_fix(tmp_path, bgr, monkeypatch):
    import builtins

    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("no cv2")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(ModelFileError, match=r"x\.png: reading images needs OpenCV: pip install 'opencv-python-headless<5'"):
        load_image(tmp_path / "x.png")


def test_module_imports_neither_protobuf_nor_caffenorm_caffe():
    import caffenorm.transform as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith(("google", "caffenorm.caffe"))]


# -- from a prototxt -------------------------------------------------------------------------------


def _param(text: str):
    return text_format.Parse(text, schema.LayerParameter()).transform_param


def test_transform_from_param_prototxt_snippet():
    param = _param("transform_param { scale: 0.00390625 mean_value: 104 mean_value: 117 mean_value: 123 "
                   "crop_size: 227 mirror: true }")
    t = transform_from_param(param, "train_val.prototxt", phase="train")
    assert t == Transform(crop=(227, 227), mirror=True, mean=(104, 117, 123), scale=0.00390625, phase="train")
    image = np.random.default_rng(7).integers(0, 256, (230, 231, 3), dtype=np.uint8)
    out = transform_image(t, image, rng=np.random.default_rng(3))
    draws = np.random.default_rng(3)
    flip = bool(draws.integers(2))
    offsets = (int(draws.integers(230 - 227 + 1)), int(draws.integers(231 - 227 + 1)))
    close(out, reference(image, crop=(227, 227), offsets=offsets, flip=flip, mean=(104, 117, 123),
                         scale=0.00390625))


def _write_mean(path: Path, mean: np.ndarray) -> None:
    blob = schema.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.ravel().tolist())  # legacy 4-D shape, as compute_image_mean writes it
    path.write_bytes(blob.SerializeToString())


def test_transform_from_param_reads_a_mean_file_next_to_the_prototxt(tmp_path, bgr):
    mean = np.random.default_rng(8).uniform(0, 255, (3, 7, 9)).astype(np.float32)
    (tmp_path / "data").mkdir()
    _write_mean(tmp_path / "data" / "mean.binaryproto", mean)
    proto = tmp_path / "deploy.prototxt"
    t = transform_from_param(_param('transform_param { mean_file: "data/mean.binaryproto" crop_size: 5 }'), str(proto))
    np.testing.assert_array_equal(t.mean_image, mean)
    close(transform_image(t, bgr), reference(bgr, crop=(5, 5), offsets=(1, 2), mean_image=mean))


def test_mean_file_relative_to_the_current_directory_as_caffe(tmp_path, monkeypatch):
    mean = np.zeros((1, 2, 2), dtype=np.float32)
    _write_mean(tmp_path / "mean.binaryproto", mean)
    monkeypatch.chdir(tmp_path)
    t = transform_from_param(_param('transform_param { mean_file: "mean.binaryproto" }'),
                             str(tmp_path / "models" / "x.prototxt"))
    assert t.mean_image.shape == (1, 2, 2)


def test_transform_from_param_errors(tmp_path):
    proto = str(tmp_path / "net.prototxt")
    with pytest.raises(ModelFileError, match=r"net\.prototxt: transform_param's mean_file 'missing\.binaryproto' not found"):
        transform_from_param(_param('transform_param { mean_file: "missing.binaryproto" }'), proto)
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelFileError, match=r"bad\.binaryproto: not a binary BlobProto"):
        transform_from_param(_param('transform_param { mean_file: "bad.binaryproto" }'), proto)
    with pytest.raises(LayerConfigError, match="net.prototxt: .*both mean_file and mean_value"):
        transform_from_param(_param('transform_param { mean_file: "m" mean_value: 1 }'), proto)
    _write_mean(tmp_path / "small.binaryproto", np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(LayerConfigError, match=r"net\.prototxt: transform_param: crop 10x10 is larger than the mean"):
        transform_from_param(_param('transform_param { mean_file: "small.binaryproto" crop_size: 10 }'), proto)


def test_ssd_fields(tmp_path):
    t = transform_from_param(_param("transform_param { resize_param { resize_mode: WARP height: 300 width: 300 "
                                    "interp_mode: LINEAR } crop_h: 200 crop_w: 100 emit_constraint { } }"), "ssd")
    assert t.size == (300, 300) and t.crop == (200, 100)
    with pytest.raises(UnsupportedLayerError, match="interp_mode"):
        transform_from_param(_param("transform_param { resize_param { height: 3 width: 3 interp_mode: LINEAR "
                                    "interp_mode: AREA } }"), "ssd")
    with pytest.raises(UnsupportedLayerError, match="distort_param"):
        transform_from_param(_param("transform_param { distort_param { brightness_prob: 0.5 } }"), "ssd")


# -- the command line uses it ----------------------------------------------------------------------


def test_cli_image_input_is_the_transform(tmp_path, bgr):
    from argparse import Namespace

    from caffenorm.cli.run import _image_feed

    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    out = _image_feed("data", [tmp_path / "x.png"], (1, 3, 4, 5), Namespace(mean=[104, 117, 123], scale=0.5)).array
    assert out.shape == (1, 3, 4, 5)
    close(out[0], reference(bgr, size=(4, 5), mean=(104, 117, 123), scale=0.5))


def test_cli_bad_mean_is_a_one_line_error(tmp_path, bgr, capsys):
    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    assert main(["run", "--input", str(tmp_path / "x.png"), "--mean", "1,2"]) == 2
    err = capsys.readouterr().err
    assert "--mean has 2 values; input 'data' has 3 channel(s)" in err and "Traceback" not in err
