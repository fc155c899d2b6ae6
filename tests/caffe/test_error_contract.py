"""The error contract: no input escapes ``CaffeNormError``.  One test per class of escape a fuzzing
campaign found (fillers, layer names, gigantic counts, caffemodel dims, memory, long messages);
the fuzzing itself is ``tests/test_fuzz.py``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from netutil import write_model

import caffenorm
from caffenorm.caffe import schema
from caffenorm.caffe.builder import module_key
from caffenorm.caffe.memory import ENV_VAR, available_memory, check_allocation, resolve_limit
from caffenorm.errors import MAX_MESSAGE_CHARS, CaffeNormError, format_count, format_shape, summarize

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _write(tmp_path, body, dims="dim: 1 dim: 2 dim: 4 dim: 4", name="net"):
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(INPUT.format(dims=dims) + body)
    return proto


def _conv(filler, kernel=1, num_output=2):
    return (f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c"\n'
            f"  convolution_param {{ num_output: {num_output} kernel_size: {kernel} weight_filler {{ {filler} }} }} }}\n")


# -- fillers: checked when the layer is built, as Caffe's filler.hpp CHECKs -----------------------


@pytest.mark.parametrize("filler, match", [
    ('type: "uniform" min: 2 max: 1', r"min=2.0 is greater than max=1.0"),
    ('type: "uniform" min: -inf', r"min=-inf and max=1.0 must be finite"),
    ('type: "uniform" max: nan', r"max=nan must be finite"),
    ('type: "uniform" min: -3e38 max: 3e38', r"beyond the float32 range"),
    ('type: "gaussian" std: -1', r"std=-1.0 is not allowed; Caffe requires std > 0"),
    ('type: "gaussian" std: nan', r"std=nan is not allowed"),
    ('type: "gaussian" std: 0', r"std=0.0 is not allowed"),
    ('type: "gaussian" sparse: -2', r"sparse=-2 is not allowed"),
    ('type: "gaussian" sparse: 3', r"sparse=3 is more than the blob's 2 outputs"),
    ('type: "constant" sparse: 1', r"constant filler: sparse=1 is not supported"),
    ('type: "xavier" sparse: 0', r"xavier filler: sparse=0 is not supported"),
    ('type: "magic"', r"filler type 'magic' is not supported"),
])
@pytest.mark.parametrize("with_model", [False, True])
def test_bad_fillers_are_layer_config_errors_at_build(tmp_path, filler, match, with_model):
    proto = _write(tmp_path, _conv(filler))
    model = None
    if with_model:  # the filler will not run (the caffemodel has the weights): Caffe checks it anyway
        _, model = write_model(tmp_path, proto.read_text().replace(filler, 'type: "constant"'),
                               {"c": [np.ones((2, 2, 1, 1)), np.zeros(2)]}, name="weights")
    with pytest.raises(caffenorm.LayerConfigError, match=match) as info:
        caffenorm.load(proto, model)
    assert info.value.location.layer == "c" and info.value.location.line == 2


@pytest.mark.parametrize("kind", ["xavier", "msra", "positive_unitball"])
def test_fillers_dividing_by_an_empty_blob_are_refused(tmp_path, kind):
    # Scale over axis 0 of a batch of 0: an empty (0,) blob, where xavier/msra would divide by 0.
    proto = _write(tmp_path, f'layer {{ name: "s" type: "Scale" bottom: "data" top: "s"\n'
                             f'  scale_param {{ axis: 0 num_axes: 1 filler {{ type: "{kind}" }} }} }}\n',
                   dims="dim: 0 dim: 2 dim: 4 dim: 4")
    with pytest.raises(caffenorm.LayerConfigError, match=rf"{kind} filler: the blob of shape \(0,\) is empty"):
        caffenorm.load(proto)


def test_bilinear_filler_needs_square_4d_blobs(tmp_path):
    body = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2\n'
            '  kernel_h: 1 kernel_w: 2 weight_filler { type: "bilinear" } } }\n')
    with pytest.raises(caffenorm.LayerConfigError, match=r"bilinear filler: needs a 4-D blob with square kernels"):
        caffenorm.load(_write(tmp_path, body))


def test_a_nan_constant_is_allowed_silently(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = caffenorm.load(_write(tmp_path, _conv('type: "constant" value: nan')))
    assert torch.isnan(net.params["c"][0]).all()


def test_valid_sparse_gaussian_keeps_at_most_the_given_density(tmp_path):
    net = caffenorm.load(_write(tmp_path, _conv('type: "gaussian" std: 1 sparse: 1', num_output=8)), seed=3)
    assert 0 < int((net.params["c"][0] != 0).sum()) < net.params["c"][0].numel()


# -- layer names: any Caffe name works, none clashes with nn.Module attributes --------------------

ODD_NAMES = ["type", "training", "forward", "_modules", "T_destination", "dump_patches", "a.b", "a%2Eb", "",
             "%", "layers", "__class__", "conv1/bn"]


def test_layer_names_never_clash_with_module_attributes(tmp_path):
    body = "".join(
        f'layer {{ name: "{name}" type: "Scale" bottom: "{"data" if i == 0 else f"b{i - 1}"}" top: "b{i}" '
        'scale_param { filler { type: "uniform" min: 0.5 max: 1.5 } } }\n'
        for i, name in enumerate(ODD_NAMES)
    )
    proto = _write(tmp_path, body)
    net = caffenorm.load(proto, seed=1)
    x = torch.randn(1, 2, 4, 4)
    expected = x.clone()
    for name in ODD_NAMES:
        expected = expected * net.layer(name).weight.view(1, 2, 1, 1)
        assert net.params[name][0] is net.layer(name).weight
    torch.testing.assert_close(net(x)[f"b{len(ODD_NAMES) - 1}"], expected)
    # One key per layer, ordinary names unchanged; the state dict round-trips.
    keys = {module_key(name) for name in ODD_NAMES}
    assert len(keys) == len(ODD_NAMES) and "conv1/bn" in keys and "%type" in keys and "%a%2Eb" in keys
    state = net.state_dict()
    assert "layers.conv1/bn.weight" in state and "layers.%type.weight" in state
    again = caffenorm.load(proto, seed=2)
    again.load_state_dict(state)
    torch.testing.assert_close(again(x), net(x))
    # Saved and read back (Caffe's files hold the names themselves).
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    back = caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    torch.testing.assert_close(back(x), net(x))
    assert torch.fx.symbolic_trace(net)(x).keys() == net(x).keys()


def test_duplicate_layer_names_are_still_an_error(tmp_path):
    body = ('layer { name: "type" type: "ReLU" bottom: "data" top: "a" }\n'
            'layer { name: "type" type: "ReLU" bottom: "a" top: "b" }\n')
    with pytest.raises(caffenorm.NetDefinitionError, match="a layer named 'type' already exists"):
        caffenorm.load(_write(tmp_path, body))


# -- counts: Python ints, never printed whole ----------------------------------------------------


def test_format_helpers_never_print_gigantic_ints():
    assert format_count(1234567) == "1,234,567"
    assert format_count(2**64) == "1.84e+19"
    assert format_count(10**5000) == f"more than 2**{(10**5000).bit_length() - 1}"
    assert format_shape((1, 3, 224, 224)) == "(1, 3, 224, 224)" and format_shape((5,)) == "(5,)"
    assert format_shape([2**62] * 100) == "(4.61e+18, 4.61e+18, 4.61e+18, 4.61e+18, 4.61e+18, 4.61e+18, ..., 4.61e+18; 100 axes)"
    assert summarize(["a", "b"]) == "a, b" and summarize(map(str, range(160)), 3) == "0, 1, 2 and 157 more"


def test_an_input_with_a_count_beyond_int_to_str_limits_is_refused_readably(tmp_path):
    proto = _write(tmp_path, "", dims="dim: 4611686018427387904 " * 100)
    with pytest.raises(caffenorm.NetDefinitionError, match=r"100 axes\) has more than 2\*\*6200 elements") as info:
        caffenorm.load(proto)
    assert len(str(info.value)) < 400


def test_caffemodel_dims_overflowing_int64_are_blob_errors(tmp_path):
    proto = _write(tmp_path, _conv('type: "constant"'))
    for dims in ([2**32, 2**32], [2**62, 0], [2**63 - 1, 2**63 - 1, 0, 7]):
        net = schema.NetParameter()
        layer = net.layer.add(name="c", type="Convolution")
        blob = layer.blobs.add()
        blob.shape.dim.extend(dims)  # numpy's int64 product of 2**32 * 2**32 wraps to 0: no data "fits"
        layer.blobs.add().shape.dim.append(2)
        layer.blobs[1].data.extend([0, 0])
        model = tmp_path / "huge.caffemodel"
        model.write_bytes(net.SerializeToString())
        with pytest.raises(caffenorm.BlobError, match=r"blob shape \(") as info:
            caffenorm.load(proto, model)
        assert len(str(info.value)) < 400


# -- the memory budget ---------------------------------------------------------------------------

# An InnerProduct weight of exactly 2**31 floats (8 GiB): within MAX_ELEMENTS, beyond the budget.
BIG_FC = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
          '  inner_product_param { num_output: 65536 } }\n')


def test_a_net_beyond_the_memory_limit_is_refused_before_allocating(tmp_path):
    proto = _write(tmp_path, BIG_FC, dims="dim: 1 dim: 32768")
    with pytest.raises(caffenorm.NetDefinitionError) as info:
        caffenorm.load(proto, memory_limit="1G")
    message = str(info.value)
    assert "layer 'fc' (InnerProduct)" in message and "weight blob of layer 'fc' (65536, 32768)" in message
    assert "8 GiB" in message and "limit of 1 GiB (memory_limit)" in message and ENV_VAR in message


def test_activations_count_towards_the_budget(tmp_path):
    proto = _write(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n',
                   dims="dim: 1 dim: 1 dim: 512 dim: 512")  # 1 MiB per blob
    caffenorm.load(proto, memory_limit=2 * 2**20)
    with pytest.raises(caffenorm.NetDefinitionError, match=r"top 'r' \(1, 1, 512, 512\).*activations 2 MiB"):
        caffenorm.load(proto, memory_limit=1.5 * 2**20)
    # An in-place layer rewrites its blob: counted once.
    in_place = _write(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n',
                      dims="dim: 1 dim: 1 dim: 512 dim: 512", name="in_place")
    caffenorm.load(in_place, memory_limit=1.5 * 2**20)


def test_the_memory_limit_comes_from_the_environment(tmp_path, monkeypatch):
    proto = _write(tmp_path, BIG_FC, dims="dim: 1 dim: 32768")
    monkeypatch.setenv(ENV_VAR, "512M")
    with pytest.raises(caffenorm.NetDefinitionError, match=rf"limit of 512 MiB \({ENV_VAR}\)"):
        caffenorm.load(proto)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(caffenorm.NetDefinitionError, match=rf"{ENV_VAR}='lots' is not a memory size"):
        caffenorm.load(proto)
    monkeypatch.setenv(ENV_VAR, "off")
    assert resolve_limit() == (math.inf, ENV_VAR)


def test_check_allocation():
    check_allocation(100, "x", 100)
    check_allocation(10**30, "x", math.inf)
    check_allocation(10**30, "x", "off")
    with pytest.raises(caffenorm.NetDefinitionError,
                       match=r"^random input 'data' of shape \(1, 3, 9, 9\) needs 972 bytes, more than the limit of "
                             r"100 bytes \(memory_limit\); pass memory_limit="):
        check_allocation(972, "random input 'data' of shape (1, 3, 9, 9)", 100)
    with pytest.raises(caffenorm.NetDefinitionError, match=r"more than 2\*\*"):
        check_allocation(2**5000, "a gigantic blob", "1K")
    for bad in (0, -5, math.nan, "12 parsecs", True):
        with pytest.raises(caffenorm.NetDefinitionError):
            check_allocation(1, "x", bad)
    assert resolve_limit("1.5K") == (1536.0, "memory_limit")
    available = available_memory()
    assert available is None or available > 0


# -- messages: capped, lists summarised ----------------------------------------------------------


def test_messages_are_capped():
    err = CaffeNormError("x" * 5000, location=caffenorm.Location("f.prototxt", 3, None, "a", "ReLU"))
    text = str(err)
    assert len(text) <= MAX_MESSAGE_CHARS and text.startswith("f.prototxt:3: layer 'a' (ReLU): xxx")
    whole = len("f.prototxt:3: layer 'a' (ReLU): ") + 5000
    left_out = whole - MAX_MESSAGE_CHARS * 6 // 10 - MAX_MESSAGE_CHARS * 3 // 10
    assert f" ... ({left_out:,} characters left out) ... xxx" in text
    fixed = str(CaffeNormError("y" * 3000 + " give the caffemodel"))
    assert fixed.endswith("give the caffemodel")  # the fix at the end of a message survives
    assert err.message == "x" * 5000  # the data stays whole


def _many_fc(count, prefix):
    return "".join(
        f'layer {{ name: "{prefix}{i}" type: "InnerProduct" bottom: "data" top: "{prefix}{i}"\n'
        '  inner_product_param { num_output: 1 } }\n'
        for i in range(count)
    )


def test_a_caffemodel_of_another_net_says_so(tmp_path):
    proto = _write(tmp_path, _many_fc(40, "fc"), dims="dim: 1 dim: 2")
    weights = {f"other{i}": [np.ones((1, 2)), np.zeros(1)] for i in range(160)}
    _, model = write_model(tmp_path, INPUT.format(dims="dim: 1 dim: 2") + _many_fc(160, "other"), weights, "other")
    with pytest.raises(caffenorm.CaffemodelError) as info:
        caffenorm.load(proto, model)
    message = str(info.value)
    assert f"none of the 160 weighted layers of {model} (other0, other1, other2 and 157 more) match a layer of {proto}" \
        in message
    assert "(which needs weights for fc0, fc1, fc2 and 37 more): is it the right caffemodel?" in message
    assert len(message) < 500
    with pytest.warns(UserWarning, match="is it the right caffemodel"):
        net = caffenorm.load(proto, model, strict=False)
    assert len(net.unused_weights) == 160


def test_partial_matches_are_summarised(tmp_path):
    proto = _write(tmp_path, _many_fc(30, "fc"), dims="dim: 1 dim: 2")
    weights = {f"fc{i}": [np.ones((1, 2)), np.zeros(1)] for i in range(10)}
    weights.update({f"extra{i}": [np.ones((1, 2)), np.zeros(1)] for i in range(50)})
    text = INPUT.format(dims="dim: 1 dim: 2") + _many_fc(10, "fc") + _many_fc(50, "extra")
    _, model = write_model(tmp_path, text, weights, "partial")
    with pytest.raises(caffenorm.CaffemodelError, match=r"no weights for 20 layer\(s\) that need them: fc10, fc11, fc12, "
                                                        r"fc13, fc14 and 15 more \(was it"):
        caffenorm.load(proto, model)
    with pytest.warns(UserWarning) as record:
        net = caffenorm.load(proto, model, strict=False)
    unused = [str(w.message) for w in record if "match no layer" in str(w.message)]
    assert len(unused) == 1 and "extra0, extra1, extra2, extra3, extra4 and 45 more" in unused[0]
    assert len(net.unused_weights) == 50


@pytest.mark.parametrize("legacy", [False, True])
def test_a_caffemodel_text_field_that_is_not_utf8_is_a_caffemodel_error(tmp_path, legacy):
    # protobuf hands such a proto2 string out as bytes, which failed later (assigning it, comparing it).
    proto = _write(tmp_path, _conv('type: "constant"'))
    net = schema.NetParameter()
    if legacy:
        layer = net.layers.add(name="cQ", type=schema.V1LayerParameter.CONVOLUTION)
    else:
        layer = net.layer.add(name="cQ", type="Convolution")
    layer.blobs.add().shape.dim.extend([2, 2, 1, 1])
    layer.blobs[0].data.extend([1.0] * 4)
    model = tmp_path / "bad.caffemodel"
    model.write_bytes(net.SerializeToString().replace(b"cQ", b"c\xd0"))
    with pytest.raises(caffenorm.CaffemodelError, match="layer entry 0 is corrupted: a text field .* is not UTF-8"):
        caffenorm.load(proto, model)


def test_an_allocator_failure_while_building_is_a_net_definition_error(tmp_path, monkeypatch):
    from caffenorm.caffe.layers import inner_product

    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 8589934592 bytes.\nmore lines")

    monkeypatch.setattr(inner_product, "InnerProduct", refuse)
    proto = _write(tmp_path, 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
                             '  inner_product_param { num_output: 2 } }\n', dims="dim: 1 dim: 2")
    with pytest.raises(caffenorm.NetDefinitionError,
                       match=r"layer 'fc' \(InnerProduct\): cannot allocate its blobs: .*can't allocate memory"):
        caffenorm.load(proto)


def test_a_pooling_padded_copy_counts_towards_the_budget(tmp_path):
    # kernel 2000, pad 999 on an 8x8 bottom: the forward would pad it to 4005x4005 per channel.
    proto = _write(tmp_path, 'layer { name: "pool" type: "Pooling" bottom: "data" top: "p"\n'
                             '  pooling_param { pool: AVE kernel_size: 2000 pad: 999 } }\n', dims="dim: 1 dim: 4 dim: 8 dim: 8")
    with pytest.raises(caffenorm.NetDefinitionError, match=r"layer 'pool' \(Pooling\): the net needs .* with its padded "
                                                          r"bottom \(1, 4, 4005, 4005\)"):
        caffenorm.load(proto, memory_limit="64M")


def test_a_reshape_whose_product_has_thousands_of_digits_is_refused_readably(tmp_path):
    # 300 dims of 2**62: a product of 5,600 digits, beyond what Python will turn into a string.
    body = ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { '
            + "dim: 4611686018427387904 " * 300 + "} } }\n")
    with pytest.raises(caffenorm.CaffeNormError, match=r"300 axes\) with more than 2\*\*18600 elements") as info:
        caffenorm.load(_write(tmp_path, body))
    assert len(str(info.value)) < 500
