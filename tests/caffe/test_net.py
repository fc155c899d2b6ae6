"""The Net machinery: file reading, upgrades, phase rules, wiring checks, weights, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from netutil import write_model
from reference import caffe_ref as ref

import caffenorm
from caffenorm.caffe import io

NORM_NET = """name: "norms"
input: "data"
input_shape { dim: 2 dim: 4 dim: 5 dim: 5 }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "lrn" top: "lrn" }
layer { name: "scale" type: "Scale" bottom: "lrn" top: "lrn" scale_param { bias_term: true } }
layer { name: "norm" type: "Normalize" bottom: "lrn" top: "out"
        norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
"""


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "bn": [rng.standard_normal(4), rng.uniform(1, 2, 4), [2.5]],
        "scale": [rng.uniform(0.5, 2, 4), rng.standard_normal(4)],
        "norm": [rng.uniform(5, 20, 4)],
    }


def _reference(x, w):
    y = ref.lrn(x, 3, 0.5, 0.75, 2.0)
    y = ref.batch_norm(y, w["bn"][0], w["bn"][1], w["bn"][2][0], use_global_stats=True)[0]
    y = ref.scale(y, w["scale"][0], 1, w["scale"][1])
    return ref.normalize(y, w["norm"][0], across_spatial=False)


def test_net_matches_the_layer_references_blob_for_blob(tmp_path):
    w = _weights()
    proto, model = write_model(tmp_path, NORM_NET, w)
    net = caffenorm.load(proto, model)
    x = np.random.default_rng(1).standard_normal((3, 4, 6, 7))  # another batch and spatial size
    out = net(torch.tensor(x, dtype=torch.float64).float())
    np.testing.assert_allclose(out["out"].detach().numpy(), _reference(x.astype(np.float32), w), rtol=2e-5, atol=2e-5)
    assert net.outputs == ["out"] and net.inputs == ["data"]
    # In-place chain: the blob holds the last value written (the Scale's output).
    assert set(net.blobs) == {"data", "lrn", "out"}
    assert [tuple(b.shape) for b in net.params["bn"]] == [(4,), (4,), (1,)]
    assert net.params["scale"][0] is net.layer("scale").weight


def test_save_then_load_gives_identical_outputs(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model)
    net.save(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    again = caffenorm.load(tmp_path / "again.prototxt", tmp_path / "again.caffemodel")
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(net(x)["out"], again(x)["out"])


def test_train_phase_uses_batch_statistics_and_updates_blobs(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model, phase="train")
    assert net.training and net.phase == "TRAIN"
    before = net.params["bn"][2].item()
    out = net(torch.randn(2, 4, 5, 5))["out"]
    out.sum().backward()
    assert net.params["bn"][2].item() == pytest.approx(0.999 * before + 1)
    assert net.params["scale"][0].grad is not None and net.params["norm"][0].grad is not None


def test_gradcheck_through_the_net(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(t)["out"], (x,))


def test_v1_layers_and_legacy_input_dim_are_upgraded(tmp_path):
    text = """name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layers { name: "norm1" type: LRN bottom: "data" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layers { name: "norm2" type: LRN bottom: "norm1" top: "norm2"
         lrn_param { local_size: 3 alpha: 0.1 norm_region: WITHIN_CHANNEL } }
"""
    proto = tmp_path / "v1.prototxt"
    proto.write_text(text)
    net = caffenorm.load(proto)
    assert net.input_shapes == {"data": (1, 3, 4, 4)}
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4))
    expected = ref.lrn(ref.lrn(x, 3, 0.1, 0.75, 1.0), 3, 0.1, 0.75, 1.0, "WITHIN_CHANNEL")
    np.testing.assert_allclose(net(torch.tensor(x).float())["norm2"].detach().numpy(), expected, rtol=2e-5, atol=1e-6)


def test_include_exclude_rules_select_the_phase(tmp_path):
    text = """input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "a" type: "LRN" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "b" type: "LRN" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "c" type: "LRN" bottom: "data" top: "c" exclude { stage: "deploy" } }
"""
    proto = tmp_path / "rules.prototxt"
    proto.write_text(text)
    assert caffenorm.load(proto).outputs == ["b", "c"]
    assert caffenorm.load(proto, phase="train").outputs == ["a", "c"]
    assert caffenorm.load(proto, stages=["deploy"]).outputs == ["b"]


def test_prototxt_syntax_error_names_file_line_and_column(tmp_path):
    proto = tmp_path / "bad.prototxt"
    proto.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "LRN"\n  lrn_param { local_size: 3 alpah: 1 }\n}\n')
    with pytest.raises(caffenorm.PrototxtSyntaxError, match=r"bad\.prototxt:5:\d+: .*alpah"):
        caffenorm.load(proto)


def test_unsupported_layer_names_the_layer_and_its_line(tmp_path):
    proto = tmp_path / "u.prototxt"
    proto.write_text('input: "d" input_shape { dim: 1 dim: 2 }\n\nlayer { name: "odd" type: "Frobnicate" bottom: "d" top: "e" }\n')
    with pytest.raises(caffenorm.UnsupportedLayerError, match=r"u\.prototxt:3: layer 'odd' \(Frobnicate\).*supported types: .*LRN"):
        caffenorm.load(proto)


def test_bottom_that_no_layer_produces(tmp_path):
    proto = tmp_path / "w.prototxt"
    proto.write_text('input: "d" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\nlayer { name: "a" type: "LRN" bottom: "nope" top: "a" }\n')
    with pytest.raises(caffenorm.NetDefinitionError, match=r"w\.prototxt:2: layer 'a' \(LRN\): bottom 'nope' is not produced"):
        caffenorm.load(proto)


def test_bottom_produced_only_later(tmp_path):
    proto = tmp_path / "w.prototxt"
    proto.write_text(
        'input: "d" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\n'
        'layer { name: "a" type: "LRN" bottom: "b" top: "a" }\n'
        'layer { name: "b" type: "LRN" bottom: "d" top: "b" }\n'
    )
    with pytest.raises(caffenorm.NetDefinitionError, match=r"bottom 'b' is only produced later, by .*:3: layer 'b'"):
        caffenorm.load(proto)


def test_two_layers_writing_one_blob_not_in_place(tmp_path):
    proto = tmp_path / "w.prototxt"
    proto.write_text(
        'input: "d" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\n'
        'layer { name: "a" type: "LRN" bottom: "d" top: "x" }\n'
        'layer { name: "b" type: "LRN" bottom: "d" top: "x" }\n'
    )
    with pytest.raises(caffenorm.NetDefinitionError, match=r"top 'x' is already produced by .*layer 'a'"):
        caffenorm.load(proto)


def test_absurd_input_dimensions_are_refused_before_allocating(tmp_path):
    proto = tmp_path / "big.prototxt"
    proto.write_text(NORM_NET.replace("dim: 2 dim: 4 dim: 5 dim: 5", "dim: 100000 dim: 4 dim: 100000 dim: 100000"))
    with pytest.raises(caffenorm.NetDefinitionError, match=r"input 'data' of shape .* elements \(limit"):
        caffenorm.load(proto)


def test_weight_blob_of_the_wrong_shape_names_layer_and_file(tmp_path):
    w = _weights()
    w["scale"][0] = np.ones(5)
    proto, model = write_model(tmp_path, NORM_NET, w)
    with pytest.raises(caffenorm.BlobError, match=r"layer 'scale' \(Scale\): weights from .*net\.caffemodel.*blob 0 \(weight\) has shape \(5,\)"):
        caffenorm.load(proto, model)


def test_missing_weights_are_an_error_unless_not_strict(tmp_path):
    w = _weights()
    del w["norm"]
    proto, model = write_model(tmp_path, NORM_NET, w)
    with pytest.raises(caffenorm.CaffemodelError, match="no weights for 1 layer.*norm"):
        caffenorm.load(proto, model)
    with pytest.warns(UserWarning, match="keep the prototxt's fillers"):
        net = caffenorm.load(proto, model, strict=False)
    assert torch.equal(net.params["norm"][0].detach(), torch.full((4,), 20.0))


def test_unused_weights_are_reported(tmp_path):
    extra = NORM_NET + 'layer { name: "ghost" type: "Scale" bottom: "out" top: "ghost" include { phase: TRAIN } }\n'
    w = _weights()
    w["ghost"] = [np.ones(4)]
    proto, model = write_model(tmp_path, extra, w)
    proto.write_text(NORM_NET)  # the deploy prototxt has no 'ghost' layer
    with pytest.warns(UserWarning, match="match no layer of this net.*ghost"):
        net = caffenorm.load(proto, model)
    assert net.unused_weights == ["ghost"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "empty"])
def test_broken_caffemodel_is_a_clear_error(tmp_path, damage):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    raw = model.read_bytes()
    broken = {
        "truncate": raw[: len(raw) // 2],
        "garbage": raw[:10] + bytes(range(256)) * 4,
        "text": NORM_NET.encode(),
        "empty": b"",
    }[damage]
    model.write_bytes(broken)
    with pytest.raises((caffenorm.CaffemodelError, caffenorm.BlobError), match="net.caffemodel"):
        caffenorm.load(proto, model)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(caffenorm.ModelFileError, match="no such prototxt"):
        caffenorm.load(tmp_path / "nope.prototxt")
    proto, _ = write_model(tmp_path, NORM_NET, _weights())
    with pytest.raises(caffenorm.ModelFileError, match="no such caffemodel"):
        caffenorm.load(proto, tmp_path / "nope.caffemodel")


def test_forward_input_errors_name_the_inputs(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model)
    with pytest.raises(caffenorm.InputShapeError, match=r"inputs are: data \(2, 4, 5, 5\); missing \['data'\]"):
        net(other=torch.randn(2, 4, 5, 5))
    with pytest.raises(caffenorm.InputShapeError, match=r"layer 'bn' \(BatchNorm\).*3 channels"):
        net(torch.randn(2, 3, 5, 5))


def test_layer_lines_come_from_the_parser_and_skip_strings_and_comments():
    text = 'name: "layer {"\n# layer { in a comment\nlayer {\n  name: "a"\n}\n\nlayers { name: "b" }\n'
    net, lines = io.parse_prototxt(text)
    assert lines == [3, 7] and [layer.name for layer in net.layer] == ["a"]


@pytest.mark.parametrize("phase", ["test", "train"])
def test_batch_norm_scale_pairs_run_fused_with_the_same_result(tmp_path, phase):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    fused, plain = caffenorm.load(proto, model, phase=phase), caffenorm.load(proto, model, phase=phase, fuse=False)
    # bn (node 2, after input and lrn) with its in-place scale
    assert [n.type for n in fused.graph] == ["Input", "LRN", "BatchNorm+Scale", "Normalize"]
    assert [n.name for n in fused.graph.nodes[2].parts] == ["bn", "scale"]
    assert [n.type for n in plain.graph] == ["Input", "LRN", "BatchNorm", "Scale", "Normalize"]
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    a, b = fused.double()(x)["out"], plain.double()(x)["out"]
    torch.testing.assert_close(a, b)
    for got, want in zip(fused.params["bn"], plain.params["bn"]):
        torch.testing.assert_close(got, want)  # the same Caffe blob updates in train
    calls = []
    fused.layer("bn").register_forward_hook(lambda *args: calls.append(1))
    fused(x)
    assert calls == [1]  # a hooked layer runs on its own


def test_recording_layer_outputs_keeps_the_batch_norm_output(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model)
    net.record_layer_outputs = True
    net(torch.randn(1, 4, 5, 5))
    assert {"bn", "scale"} <= set(net.layer_outputs)
    assert not torch.equal(net.layer_outputs["bn"][0], net.layer_outputs["scale"][0])


def test_bilinear_filler_matches_caffes_formula():
    # filler.hpp: f = ceil(K/2), c = (K - 1) / (2f), w(x, y) = (1 - |x/f - c|) * (1 - |y/f - c|).
    from caffenorm.caffe import schema
    from caffenorm.caffe.fillers import fill

    for k in (2, 3, 4, 5):
        t = torch.empty(2, 1, k, k)
        fill(t, schema.FillerParameter(type="bilinear"), torch.Generator())
        f = np.ceil(k / 2)
        c = (k - 1) / (2 * f)
        w = 1 - np.abs(np.arange(k) / f - c)
        np.testing.assert_allclose(t[1, 0].numpy(), np.outer(w, w), rtol=1e-6)
        if k % 2:  # odd kernels peak at their centre
            assert t[0, 0, k // 2, k // 2].item() == pytest.approx(1.0)


def test_the_prototxts_own_state_stages_are_kept(tmp_path):
    proto = tmp_path / "state.prototxt"
    proto.write_text(
        'state { stage: "deploy" }\ninput: "d" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'layer { name: "a" type: "LRN" bottom: "d" top: "a" include { stage: "deploy" } }\n'
        'layer { name: "b" type: "LRN" bottom: "d" top: "b" include { stage: "extra" } }\n'
    )
    assert caffenorm.load(proto).outputs == ["a"]
    assert caffenorm.load(proto, stages=["extra"]).outputs == ["a", "b"]


def test_norm_layers_need_exactly_one_top(tmp_path):
    proto = tmp_path / "tops.prototxt"
    proto.write_text('input: "d" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
                     'layer { name: "a" type: "LRN" bottom: "d" top: "x" top: "y" }\n')
    with pytest.raises(caffenorm.NetDefinitionError, match=r"layer 'a' \(LRN\): has 2 tops, Caffe's LRN takes 1"):
        caffenorm.load(proto)


def test_negative_input_dimension_is_named(tmp_path):
    proto = tmp_path / "neg.prototxt"
    proto.write_text(NORM_NET.replace("dim: 2 dim: 4 dim: 5 dim: 5", "dim: 2 dim: -4 dim: 5 dim: 5"))
    with pytest.raises(caffenorm.NetDefinitionError, match="has a negative dimension"):
        caffenorm.load(proto)


def test_input_dtypes_are_checked(tmp_path):
    proto, model = write_model(tmp_path, NORM_NET, _weights())
    net = caffenorm.load(proto, model)
    with pytest.raises(caffenorm.InputShapeError, match="float64 tensor but the net computes in torch.float32"):
        net(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(caffenorm.InputShapeError, match="numpy array of <U1"):
        net(np.array([["a"]]))
    out = net(np.ones((1, 4, 5, 5), dtype=np.float64))["out"]  # arrays are data: converted
    assert out.dtype == torch.float32


def test_a_data_layers_transform_param_is_the_inputs_transform(tmp_path):
    proto = tmp_path / "t.prototxt"
    proto.write_text(
        'layer { name: "data" type: "Data" top: "data" top: "label"\n'
        "  transform_param { scale: 0.5 mean_value: 104 mean_value: 117 mean_value: 123 crop_size: 4 } }\n"
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
        'layer { name: "s" type: "Silence" bottom: "label" }\n'
        'layer { name: "missing_mean" type: "ImageData" top: "other" top: "other_label"\n'
        '  transform_param { mean_file: "nowhere.binaryproto" } }\n'
        'layer { name: "s2" type: "Silence" bottom: "other" bottom: "other_label" }\n'
    )
    shapes = {"data": (2, 3, 4, 4), "label": (2,), "other": (1, 3, 4, 4), "other_label": (1,)}
    net = caffenorm.load(proto, phase="train", input_shapes=shapes)  # the missing mean file is read lazily
    t = net.input_transform()
    assert t.crop == (4, 4) and t.mean == (104.0, 117.0, 123.0) and t.scale == 0.5 and t.phase == "train"
    image = np.full((6, 6, 3), 200, dtype=np.uint8)
    out = t(image, rng=np.random.default_rng(0))  # TRAIN crops at a random offset
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out[:, 0, 0], (200 - np.array([104.0, 117.0, 123.0])) * 0.5)
    assert net.input_transform("label") is None
    with pytest.raises(caffenorm.ModelFileError, match=r"layer 'missing_mean' \(ImageData\).*nowhere\.binaryproto"):
        net.input_transform("other")


@pytest.mark.parametrize("fold", [False, True], ids=["as-loaded", "folded"])
@pytest.mark.parametrize("name", ["example", "alexnet", "zf", "resnet", "ssd_head"])
def test_a_forward_reads_no_tensor_data_on_the_host(tmp_path, name, fold):
    """On the meta device, tensors have shapes but no data, so any read of a value on the host (a
    branch on the data, .item(), a numpy copy) fails: a forward that runs there makes no host
    synchronisation on a GPU either (the layers' own ops run their fake kernels here; their GPU
    kernels are checked in tests/kernels).  DetectionOutput is the one layer whose output size
    needs the data."""
    import zoo

    proto, model, example = zoo.write(name, tmp_path)
    net = caffenorm.load(proto, model, fold=fold).to("meta")
    with torch.no_grad():
        out = net(torch.empty(example.shape, device="meta"))
    eager = caffenorm.load(proto, model, fold=fold)
    with torch.no_grad():
        want = eager(torch.from_numpy(example))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert all(v.device.type == "meta" for v in out.values())


@pytest.mark.parametrize("name", ["example", "alexnet", "zf", "resnet", "ssd"])
def test_channels_last_nets_give_the_same_outputs(tmp_path, name):
    """``net.to(memory_format=torch.channels_last)`` (the faster layout for convolutions on CPUs
    and GPUs): every layer takes the strided blobs; the outputs agree with the contiguous net to
    float32 rounding (the convolutions accumulate in another order), DetectionOutput row for row."""
    import zoo

    proto, model, _ = zoo.write(name, tmp_path)
    x = torch.from_numpy(zoo.example_input(name, batch=2, seed=3))
    plain = caffenorm.load(proto, model)
    fast = caffenorm.load(proto, model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = plain(x), fast(x.to(memory_format=torch.channels_last))
    assert any(b.dim() == 4 and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
               for b in fast.blobs.values())
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5 * float(value.abs().max()))
