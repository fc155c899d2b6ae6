"""Writers: every layer family writes its module's current settings back in Caffe's own forms
(``kernel_size`` or ``kernel_h``/``kernel_w``, ``step`` or ``step_h``/``step_w``, ...), so that a
saved net reloads to the same modules, a second save is byte-identical, and an edited setting
survives."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format
from netutil import write_model

import caffenorm
from caffenorm.caffe import io, schema

HEADER = 'input: "data" input_shape { dim: 2 dim: 4 dim: 9 dim: 8 }\n'

LAYERS = {
    "conv_square": 'layer { name: "l" type: "Convolution" bottom: "data" top: "l" convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }',
    "conv_hw": 'layer { name: "l" type: "Convolution" bottom: "data" top: "l" convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 2 bias_term: false } }',
    "conv_repeated": 'layer { name: "l" type: "Convolution" bottom: "data" top: "l" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 2 dilation: 2 } }',
    "deconv": 'layer { name: "l" type: "Deconvolution" bottom: "data" top: "l" convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 } }',
    "pool_max": 'layer { name: "l" type: "Pooling" bottom: "data" top: "l" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }',
    "pool_hw": 'layer { name: "l" type: "Pooling" bottom: "data" top: "l" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride: 2 round_mode: FLOOR } }',
    "pool_global": 'layer { name: "l" type: "Pooling" bottom: "data" top: "l" pooling_param { pool: AVE global_pooling: true } }',
    "lrn_within": 'layer { name: "l" type: "LRN" bottom: "data" top: "l" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL } }',
    "normalize": 'layer { name: "l" type: "Normalize" bottom: "data" top: "l" norm_param { across_spatial: false channel_shared: false eps: 0.001 scale_filler { type: "constant" value: 20 } } }',
    "batch_norm": 'layer { name: "l" type: "BatchNorm" bottom: "data" top: "l" batch_norm_param { use_global_stats: true eps: 0.001 } }',
    "scale_axes": 'layer { name: "l" type: "Scale" bottom: "data" top: "l" scale_param { axis: 1 num_axes: 2 bias_term: true } }',
    "prior_box": 'layer { name: "l" type: "PriorBox" bottom: "data" bottom: "data" top: "l" prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: true clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step_h: 2 step_w: 3 img_size: 30 offset: 0.25 } }',
    "slice": 'layer { name: "l" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 2 slice_point: 4 } }',
    "argmax": 'layer { name: "l" type: "ArgMax" bottom: "data" top: "l" argmax_param { top_k: 2 axis: 1 } }',
    "relu": 'layer { name: "l" type: "ReLU" bottom: "data" top: "l" relu_param { negative_slope: 0.25 } }',
}


def _saved(net: caffenorm.Net, directory, name: str) -> tuple[str, bytes]:
    proto, model = directory / f"{name}.prototxt", directory / f"{name}.caffemodel"
    net.save(proto, model)
    return proto.read_text(), model.read_bytes()


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_load_save_load_keeps_every_setting_and_a_second_save_is_identical(tmp_path, key):
    proto, _ = write_model(tmp_path, HEADER + LAYERS[key] + "\n")
    net = caffenorm.load(proto, seed=3)
    x = torch.randn(2, 4, 9, 8)
    first_text, first_model = _saved(net, tmp_path, "first")
    again = caffenorm.load(tmp_path / "first.prototxt", tmp_path / "first.caffemodel")
    assert again.layer("l").caffe_settings() == net.layer("l").caffe_settings()
    a, b = net(x), again(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    second_text, second_model = _saved(again, tmp_path, "second")
    assert second_text == first_text and second_model == first_model
    # The form of the definition is kept: its parameter message reads back field for field.
    original, _ = io.parse_prototxt(HEADER + LAYERS[key])
    written, _ = io.parse_prototxt(first_text)
    field = {
        "conv": "convolution_param", "deconv": "convolution_param", "pool": "pooling_param", "lrn": "lrn_param",
        "normalize": "norm_param", "batch": "batch_norm_param", "scale": "scale_param", "prior": "prior_box_param",
        "slice": "slice_param", "argmax": "argmax_param", "relu": "relu_param",
    }[key.split("_")[0]]
    assert getattr(written.layer[1], field) == getattr(original.layer[0], field)


def test_edited_geometry_is_written_in_caffes_forms(tmp_path):
    proto, _ = write_model(tmp_path, HEADER + LAYERS["pool_max"] + "\n")
    net = caffenorm.load(proto)
    pool = net.layer("l")
    pool.pad, pool.kernel_size = (1, 0), (3, 2)
    text, _ = _saved(net, tmp_path, "edited")
    param = text_format.Parse(text, schema.NetParameter()).layer[1].pooling_param
    assert (param.kernel_h, param.kernel_w, param.pad_h, param.pad_w) == (3, 2, 1, 0)
    assert not param.HasField("kernel_size") and not param.HasField("pad")
    again = caffenorm.load(tmp_path / "edited.prototxt")
    x = torch.randn(2, 4, 9, 8)
    assert torch.equal(again(x)["l"], net(x)["l"])


def test_edited_detection_output_and_prior_box_settings_survive(tmp_path):
    text = (
        'input: "loc" input_shape { dim: 1 dim: 32 }\ninput: "conf" input_shape { dim: 1 dim: 24 }\n'
        'input: "prior" input_shape { dim: 1 dim: 2 dim: 32 }\n'
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"\n'
        "  detection_output_param { num_classes: 3 share_location: true background_label_id: 0\n"
        "    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 50 } }\n"
    )
    proto, _ = write_model(tmp_path, text)
    net = caffenorm.load(proto)
    det = net.layer("det")
    det.confidence_threshold, det.top_k, det.keep_top_k = 0.25, -1, 20
    net.save(tmp_path / "edited.prototxt")
    param = caffenorm.load(tmp_path / "edited.prototxt").layer("det").caffe_settings()
    assert param["confidence_threshold"] == pytest.approx(0.25)
    assert param["top_k"] == -1 and param["keep_top_k"] == 20 and param["code_type"] == "CENTER_SIZE"
    saved = text_format.Parse((tmp_path / "edited.prototxt").read_text(), schema.NetParameter())
    assert not saved.layer[1].detection_output_param.nms_param.HasField("top_k")


def test_an_edited_lrn_k_and_normalize_eps_survive_save_and_load(tmp_path):
    text = (
        HEADER
        + 'layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 k: 2 } }\n'
        + 'layer { name: "l2" type: "Normalize" bottom: "norm1" top: "l2" norm_param { across_spatial: false } }\n'
    )
    proto, _ = write_model(tmp_path, text)
    net = caffenorm.load(proto)
    net.layer("norm1").k = 3.0
    net.layer("l2").eps = 1e-3
    x = torch.randn(2, 4, 9, 8)
    expected = net(x)["l2"]
    net.save(tmp_path / "edited.prototxt", tmp_path / "edited.caffemodel")
    again = caffenorm.load(tmp_path / "edited.prototxt", tmp_path / "edited.caffemodel")
    assert again.layer("norm1").k == 3.0 and again.layer("l2").eps == pytest.approx(1e-3)
    assert torch.equal(again(x)["l2"], expected)


def test_an_input_shapes_override_is_what_the_saved_input_declares(tmp_path):
    """The layers were built for the override (InnerProduct's K): the saved Input layer declares
    it, so the saved pair loads."""
    text = (
        'input: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }\n'
    )
    proto, _ = write_model(tmp_path, text)
    net = caffenorm.load(proto, input_shapes={"data": (1, 2, 8, 8)})
    net.save(tmp_path / "out.prototxt", tmp_path / "out.caffemodel")
    again = caffenorm.load(tmp_path / "out.prototxt", tmp_path / "out.caffemodel")
    assert again.input_shapes == {"data": (1, 2, 8, 8)}
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(again(x)["ip"], net(x)["ip"])


def test_file_level_errors_carry_their_file_as_a_location(tmp_path):
    proto = tmp_path / "only_train.prototxt"
    proto.write_text('layer { name: "d" type: "Input" top: "d" include { phase: TRAIN } }\n')
    with pytest.raises(caffenorm.NetDefinitionError, match="no layers for phase TEST") as info:
        caffenorm.load(proto)
    assert info.value.location.file == str(proto)
    binary = tmp_path / "binary.prototxt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(caffenorm.PrototxtSyntaxError, match="is not text") as info:
        caffenorm.load(binary)
    assert info.value.location.file == str(binary)
