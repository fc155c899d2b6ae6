"""Graph passes (``caffenorm.caffe.passes``) and the graph's wiring maps.

* The passes keep the net's function: the fused, folded and folded+fused nets give the unfused
  net's blobs, on every zoo net (``zoo.py``), on a net of fold edge cases (``FOLD_CASES``) and
  on two real models, in float64 (to 1e-10) and float32 (to 1e-5), for batches of 1 and 2.
* The fold pass's structure: what is folded where, what stays, ``graph.removed``.
* Folding refuses a training-mode BatchNorm; a pass never modifies the graph it is given.
* ``Graph.producer`` / ``Graph.consumers`` on in-place chains and branches.

What folds where (``fold_batch_norm``):

* ``example``: bn2 + scale2 into conv2 (a Convolution without bias, which gains one).
* ``alexnet``, ``zf``: nothing (no BatchNorm, Scale or Bias); the pass returns its input graph.
* ``resnet``: every BatchNorm/Scale pair into the Convolution before it (conv1, the four res2a
  convs, conv3 -- whose BatchNorm writes its own top ``conv3_bn``, which the folded conv3 then
  writes), the Bias layer bias4 into conv4, and bn_fc1 + scale_fc1 into the InnerProduct fc1 (a
  2-D (N, C) blob).  No BatchNorm, Scale or Bias is left.
* ``ssd_head``, ``ssd``: bn2_1 + scale2_1 into conv2_1.
* ``fold_cases``: scale_scalar (a channel-shared Scale) and bias_e into conv_e; bn_f + scale_f into
  the grouped Deconvolution deconv_f.  Stay: bn_a (conv_a has a second reader), scale_two (two
  bottoms), bn_batch (``use_global_stats: false``), scale_h (a Scale along axis 2, whose blob has
  as many entries as there are channels), bn_g (after an InnerProduct with ``axis: 2``, whose
  output axis is not the channel axis).
* open_nsfw: all 53 BatchNorm + 53 Scale layers into the convolutions before them.
* res10: the 5 pairs after a convolution (conv1_h and each block's conv1); the 5 pairs after
  the input (data_bn, data_scale) or after an Eltwise sum (each pre-activation block's bn1 and
  last_bn_h) stay.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import zoo

import caffenorm
from caffenorm.caffe import passes

# ---------------------------------------------------------------------------------------------
# a net of fold edge cases
# ---------------------------------------------------------------------------------------------

_CONV = 'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} {extra} }}'


def _c(name: str, bottom: str = "data", extra: str = 'bias_filler { type: "constant" value: 0.1 }') -> str:
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
        f"  {_CONV.format(extra=extra)} }}\n"
    )


FOLD_CASES = (
    'name: "fold_cases"\n'
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
    # a BatchNorm whose input has a second reader: not folded
    + _c("conv_a")
    + 'layer { name: "bn_a" type: "BatchNorm" bottom: "conv_a" top: "bn_a" }\n'
    'layer { name: "side_a" type: "ReLU" bottom: "conv_a" top: "side_a" }\n'
    # a Scale with two bottoms (elementwise: the scale is the whole second bottom): not folded
    + _c("conv_b")
    + _c("conv_b2")
    + 'layer { name: "scale_two" type: "Scale" bottom: "conv_b" bottom: "conv_b2" top: "conv_b"\n'
    "  scale_param { axis: 0 } }\n"
    # a BatchNorm with batch statistics even at test time: not folded
    + _c("conv_c", extra="bias_term: false")
    + 'layer { name: "bn_batch" type: "BatchNorm" bottom: "conv_c" top: "conv_c"\n'
    "  batch_norm_param { use_global_stats: false } }\n"
    # a Scale along the rows (axis 2; H == C == 4, so its blob has one entry per channel): not folded
    + _c("conv_d")
    + 'layer { name: "scale_h" type: "Scale" bottom: "conv_d" top: "conv_d"\n'
    "  scale_param { axis: 2 num_axes: 1 bias_term: true } }\n"
    # a chain: a channel-shared Scale (blob shape ()) and a Bias: both folded into conv_e
    + _c("conv_e")
    + 'layer { name: "scale_scalar" type: "Scale" bottom: "conv_e" top: "conv_e"\n'
    "  scale_param { num_axes: 0 bias_term: true } }\n"
    'layer { name: "bias_e" type: "Bias" bottom: "conv_e" top: "conv_e" }\n'
    # a grouped Deconvolution -> BatchNorm -> Scale: folded
    'layer { name: "deconv_f" type: "Deconvolution" bottom: "conv_e" top: "deconv_f"\n'
    "  convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 bias_term: false\n"
    '    weight_filler { type: "xavier" } } }\n'
    'layer { name: "bn_f" type: "BatchNorm" bottom: "deconv_f" top: "deconv_f" }\n'
    'layer { name: "scale_f" type: "Scale" bottom: "deconv_f" top: "deconv_f" scale_param { bias_term: true } }\n'
    # an InnerProduct along axis 2 ((1, 4, 4, 4) -> (1, 4, 4)), then a BatchNorm over axis 1: not
    # folded (the InnerProduct's outputs are along axis 2, although there are as many)
    'layer { name: "ip_g" type: "InnerProduct" bottom: "conv_e" top: "ip_g"\n'
    '  inner_product_param { num_output: 4 axis: 2 weight_filler { type: "xavier" } } }\n'
    'layer { name: "bn_g" type: "BatchNorm" bottom: "ip_g" top: "ip_g" }\n'
)
FOLD_CASES_FOLDED = {
    "scale_scalar": "conv_e",
    "bias_e": "conv_e",
    "bn_f": "deconv_f",
    "scale_f": "deconv_f",
}
FOLD_CASES_KEPT = {
    "bn_a": "BatchNorm",
    "scale_two": "Scale",
    "bn_batch": "BatchNorm",
    "scale_h": "Scale",
    "bn_g": "BatchNorm",
}


def _write_fold_cases(directory):
    source = directory / "fold_cases.source.prototxt"
    source.write_text(FOLD_CASES)
    net = caffenorm.load(source, seed=5)
    zoo.randomise(net, np.random.default_rng(6).standard_normal((4, 3, 4, 4)).astype(np.float32), seed=7)
    proto, model = directory / "fold_cases.prototxt", directory / "fold_cases.caffemodel"
    net.save(proto, model)
    return proto, model, np.random.default_rng(8).standard_normal((1, 3, 4, 4)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the models, built once per module
# ---------------------------------------------------------------------------------------------

MODELS = [*zoo.NAMES, "fold_cases", "open_nsfw", "res10"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Model name -> (prototxt, caffemodel, input of batch 1), written or located lazily."""
    directory = tmp_path_factory.mktemp("passes")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            if name == "fold_cases":
                cache[name] = _write_fold_cases(directory)
            elif name in zoo.REAL:
                locate, photo = zoo.REAL[name]
                cache[name] = (*locate(), photo())
            else:
                cache[name] = zoo.write(name, directory)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def unfused(files):
    """Model name -> (its float32 net loaded with ``fuse=False``, input of batch 1)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            proto, model, x = files(name)
            cache[name] = (caffenorm.load(proto, model, fuse=False), x)
        return cache[name]

    return get


def _batch(x: np.ndarray, batch: int) -> np.ndarray:
    """``x`` (batch 1) or ``x`` followed by a second, different image: ``x`` mirrored left-right
    and scaled by 0.8 (same statistics, different content)."""
    if batch == 1:
        return x
    return np.ascontiguousarray(np.concatenate([x, x[..., ::-1] * np.float32(0.8)]))


def _run(net: caffenorm.Net, x: np.ndarray, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every blob the net holds after a forward (its last value under each name)."""
    with torch.no_grad():
        net(torch.from_numpy(x).to(dtype))
    return dict(net.blobs)


def _assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``|actual - expected| <= rtol * max|expected|``: a tolerance relative to the blob's
    magnitude, since float rounding errors scale with the values summed, not with each element
    (an element near 0 carries the error of its large summands)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


# float64: the passes compute the folded weights in float64, so what is left is float64 rounding
# through the net (measured: <= 1e-14 of a blob's magnitude, on open_nsfw; 1e-10 leaves 4 orders).
# float32: folding reorders the arithmetic (W * a instead of (W x) * a, one rounding instead of
# three), a few ulp per layer (measured: <= 3.5e-6, on open_nsfw and resnet); 1e-5 leaves ~3x.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", MODELS)
def test_fuse_and_fold_keep_every_blob(name, dtype, batch, unfused):
    """The fused, folded and folded+fused nets give the unfused net's outputs, and every blob the
    transformed net still has equals the unfused net's blob of that name (a folded convolution
    writes the folded layers' top, so e.g. ``conv1`` is still the ReLU's output)."""
    net, x = unfused(name)
    base = copy.deepcopy(net).to(dtype)  # the passes then fold in that dtype
    x = _batch(x, batch)
    reference = _run(base, x, dtype)
    variants = {
        "fused": copy.deepcopy(base).apply_pass(passes.fuse_batch_norm_scale),
        "folded": copy.deepcopy(base).fold(),
        "folded+fused": copy.deepcopy(base).fold().apply_pass(passes.fuse_batch_norm_scale),
    }
    if any(s.type == "BatchNorm" for s in base.layer_specs):  # not vacuous: the passes changed the graph
        assert len(variants["fused"].graph.nodes) < len(base.graph.nodes)
        assert variants["folded"].graph.removed
    for kind, variant in variants.items():
        assert variant.outputs == base.outputs, kind
        blobs = _run(variant, x, dtype)
        assert set(blobs) <= set(reference), f"{kind}: blobs the unfused net does not have"
        for blob in base.outputs:
            assert blob in blobs
        for blob, value in blobs.items():
            assert value.dtype == dtype
            _assert_close_relative(value, reference[blob], TOLERANCE[dtype], f"{name} {kind} blob {blob!r}")
    if name == "ssd":  # not vacuous: several detections (one row of -1 would mean none)
        assert reference["detection_out"].shape[2] > 3


def test_load_with_fold_equals_net_fold_in_float32(unfused, files):
    """``caffenorm.load(..., fold=True)`` (the user's path: fold, then fuse) is ``net.fold()``."""
    for name in ("resnet", "example"):
        proto, model, x = files(name)
        loaded = caffenorm.load(proto, model, fold=True)
        net, _ = unfused(name)
        folded = copy.deepcopy(net).fold()
        assert loaded.graph.removed == folded.graph.removed
        expected, got = _run(folded, x, torch.float32), _run(loaded, x, torch.float32)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0)  # the same weights, the same arithmetic


# ---------------------------------------------------------------------------------------------
# the fold pass's structure
# ---------------------------------------------------------------------------------------------

_RESNET_FOLDED = {
    "bn_conv1": "conv1",
    "scale_conv1": "conv1",
    **{
        f"{kind}2a_{branch}": f"res2a_{branch}"
        for kind in ("bn", "scale")
        for branch in ("branch1", "branch2a", "branch2b", "branch2c")
    },
    "bn3": "conv3",
    "scale3": "conv3",
    "bias4": "conv4",
    "bn_fc1": "fc1",
    "scale_fc1": "fc1",
}
EXPECTED_FOLDS = {
    "example": {"bn2": "conv2", "scale2": "conv2"},
    "alexnet": {},
    "zf": {},
    "resnet": _RESNET_FOLDED,
    "ssd_head": {"bn2_1": "conv2_1", "scale2_1": "conv2_1"},
    "ssd": {"bn2_1": "conv2_1", "scale2_1": "conv2_1"},
    "fold_cases": FOLD_CASES_FOLDED,
}
_NORM_TYPES = {"BatchNorm", "Scale", "Bias", "BatchNorm+Scale"}


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", list(EXPECTED_FOLDS))
def test_fold_removes_exactly_the_foldable_layers(name, fuse, files):
    proto, model, _ = files(name)
    before = caffenorm.load(proto, model, fuse=fuse)
    specs = {s.name: s for s in before.layer_specs}
    had_bias = {n: len(before.params[n]) == 2 for n in set(EXPECTED_FOLDS[name].values())}
    net = copy.deepcopy(before)
    unfolded = net.graph
    net.fold()
    expected = EXPECTED_FOLDS[name]
    assert net.graph.removed == {layer: f"folded into {into!r}" for layer, into in expected.items()}
    if not expected:
        assert net.graph is unfolded or net.graph.nodes == unfolded.nodes
    left = {s.name for s in net.layer_specs}
    assert left == set(specs) - set(expected)
    for layer, into in expected.items():
        assert layer not in net.params and layer not in net.layers
        with pytest.raises(KeyError, match=f"folded into '{into}'"):
            net.layer(layer)
        with pytest.raises(KeyError, match=f"folded into '{into}'"):
            net.graph.index(layer)
    for producer in set(expected.values()):
        # the producer now writes the last folded layer's top, and has a bias
        last = [layer for layer in specs if expected.get(layer) == producer][-1]
        assert net.graph.node(producer).tops == specs[last].tops
        assert len(net.params[producer]) == 2, f"{producer} lost or never gained its bias"
        assert net.params[producer][0].shape == before.params[producer][0].shape
        if had_bias[producer]:
            assert not torch.equal(net.params[producer][1], before.params[producer][1])
    if name == "resnet":  # every normalisation layer of the zoo's resnet is foldable
        assert not {n.type for n in net.graph.nodes} & _NORM_TYPES
    if name == "fold_cases":
        kept = {s.name: s.type for s in net.layer_specs if s.name in FOLD_CASES_KEPT}
        assert kept == FOLD_CASES_KEPT
        # the unfolded layers keep their modules (the pass copies only what it changes)
        for layer in FOLD_CASES_KEPT:
            assert net.layer(layer) is next(p.module for p in unfolded.layer_nodes() if p.name == layer)


@pytest.fixture(scope="module")
def real_folded(unfused):
    """open_nsfw and res10, folded (unfused) -- for the structure test."""
    return lambda name: copy.deepcopy(unfused(name)[0]).fold()


def test_fold_folds_all_of_open_nsfw(unfused, real_folded):
    net, _ = unfused("open_nsfw")
    folded = real_folded("open_nsfw")
    norm = {s.name for s in net.layer_specs if s.type in ("BatchNorm", "Scale")}
    assert len(norm) == 106 and set(folded.graph.removed) == norm
    assert all(why.startswith("folded into 'conv") for why in folded.graph.removed.values())
    assert not {s.type for s in folded.layer_specs} & _NORM_TYPES
    assert folded.graph.removed["bn_1"] == "folded into 'conv_1'"


def test_fold_keeps_res10s_pairs_that_follow_no_convolution(unfused, real_folded):
    folded = real_folded("res10")
    kept = {s.name for s in folded.layer_specs if s.type in ("BatchNorm", "Scale")}
    assert kept == {
        "data_bn", "data_scale",  # on the input
        "layer_128_1_bn1_h", "layer_128_1_scale1_h",  # on Eltwise sums (pre-activation blocks)
        "layer_256_1_bn1", "layer_256_1_scale1",
        "layer_512_1_bn1", "layer_512_1_scale1",
        "last_bn_h", "last_scale_h",
    }
    assert folded.graph.removed == {
        f"{block}_{kind}": f"folded into {conv!r}"
        for block, conv, suffix in (
            ("conv1", "conv1_h", "_h"),
            ("layer_64_1", "layer_64_1_conv1_h", "2_h"),
            ("layer_128_1", "layer_128_1_conv1_h", "2"),
            ("layer_256_1", "layer_256_1_conv1", "2"),
            ("layer_512_1", "layer_512_1_conv1_h", "2_h"),
        )
        for kind in (f"bn{suffix}", f"scale{suffix}")
    }


# ---------------------------------------------------------------------------------------------
# training mode
# ---------------------------------------------------------------------------------------------


def test_fold_refuses_a_training_mode_net(files):
    """A BatchNorm in training mode normalises with batch statistics, which no fixed affine map
    reproduces: folding is refused, naming the layer and the fix, and the net is left as it was."""
    proto, model, _ = files("resnet")
    with pytest.raises(caffenorm.NetDefinitionError, match=r"(?s)'bn_conv1'.*training.*eval\(\)"):
        caffenorm.load(proto, model, phase="train", fold=True)

    net = caffenorm.load(proto, model, phase="train")
    graph = net.graph
    with pytest.raises(caffenorm.NetDefinitionError, match=r"(?s)'bn_conv1'.*training"):
        net.fold()
    assert net.graph is graph and graph.removed == {}  # nothing changed

    # a test-phase net switched to training is refused too; back in evaluation it folds
    net = caffenorm.load(proto, model).train()
    with pytest.raises(caffenorm.NetDefinitionError, match="training"):
        net.fold()
    net.eval().fold()
    assert net.graph.removed == {k: f"folded into {v!r}" for k, v in _RESNET_FOLDED.items()}


def test_the_training_mode_error_says_where_the_layer_is(files):
    """Like every error about a layer of a model file, the refusal carries the layer's location and
    formats as ``file:line: layer 'name' (Type): message``."""
    proto, model, _ = files("resnet")
    net = caffenorm.load(proto, model, phase="train")
    with pytest.raises(caffenorm.NetDefinitionError) as info:
        net.fold()
    err = info.value
    assert err.location is not None, f"no location on {str(err)!r}"
    where = next(part.location for part in net.graph.layer_nodes() if part.name == "bn_conv1")
    assert where.file == str(proto) and where.line is not None  # the layer's own location, as read
    assert err.location == where
    line = where.line
    assert str(err).startswith(f"{proto}:{line}: layer 'bn_conv1' (BatchNorm): "), str(err)


# ---------------------------------------------------------------------------------------------
# a pass never modifies its input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph_pass", [passes.fold_batch_norm, passes.fuse_batch_norm_scale], ids=["fold", "fuse"])
@pytest.mark.parametrize("name", ["resnet", "fold_cases"])
def test_a_pass_never_modifies_its_input_graph(name, graph_pass, files):
    proto, model, x = files(name)
    net = caffenorm.load(proto, model, fuse=False)
    graph = net.graph
    nodes = graph.nodes
    before = _run(net, x, torch.float32)
    # (after the forward: bn_batch, with batch statistics, updates its blobs in every forward)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    transformed = graph_pass(graph)
    assert transformed is not graph and len(transformed.nodes) < len(nodes)
    # the input graph: the same nodes, modules, tensors and record
    assert net.graph is graph and graph.nodes is nodes and graph.removed == {}
    assert all(a is b for a, b in zip(graph.nodes, nodes))
    after_state = net.state_dict()
    assert after_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after_state[key], value), key
    # ... so the original net still computes what it did, exactly
    after = _run(net, x, torch.float32)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # a second net runs the transformed graph, and the first still runs its own
    second = caffenorm.Net(transformed)
    for key, value in _run(second, x, torch.float32).items():
        _assert_close_relative(value, before[key], TOLERANCE[torch.float32], key)
    for key, value in _run(net, x, torch.float32).items():
        assert torch.equal(value, before[key]), key
    if graph_pass is passes.fold_batch_norm:
        # folded producers got new modules; their originals keep their weights
        for into in set(EXPECTED_FOLDS[name].values()):
            assert transformed.node(into).module is not graph.node(into).module


# ---------------------------------------------------------------------------------------------
# the wiring maps
# ---------------------------------------------------------------------------------------------


def test_producer_and_consumers_follow_an_in_place_chain(files):
    """conv1 -> bn_conv1 -> scale_conv1 -> conv1_relu, all writing ``conv1``: each reads the value
    the one before wrote, and each value has exactly one reader."""
    proto, model, _ = files("resnet")
    graph = caffenorm.load(proto, model, fuse=False).graph
    at = {node.name: i for i, node in enumerate(graph.nodes)}
    chain = ["conv1", "bn_conv1", "scale_conv1", "conv1_relu"]
    assert [graph.nodes[at[n]].tops for n in chain] == [("conv1",)] * 4
    assert graph.producer(at["conv1"], 0) == (at["data"], 0)
    for writer, reader in itertools.pairwise(chain):
        assert graph.producer(at[reader], 0) == (at[writer], 0)
        assert graph.consumers(at[writer], 0) == [(at[reader], 0)]
    assert graph.consumers(at["conv1_relu"], 0) == [(at["pool1"], 0)]
    assert graph.producer(at["pool1"], 0) == (at["conv1_relu"], 0)
    # the name ``conv1`` stands for the last value written
    assert not graph.is_output(at["conv1_relu"], 0)

    # fused: the BatchNorm+Scale node replaces the pair in the chain and answers to both names
    fused = caffenorm.load(proto, model).graph
    at = {node.name: i for i, node in enumerate(fused.nodes)}
    node = fused.nodes[at["bn_conv1"]]
    assert node.type == "BatchNorm+Scale" and [p.name for p in node.parts] == ["bn_conv1", "scale_conv1"]
    assert fused.index("scale_conv1") == at["bn_conv1"]
    assert fused.producer(at["bn_conv1"], 0) == (at["conv1"], 0)
    assert fused.consumers(at["conv1"], 0) == [(at["bn_conv1"], 0)]
    assert fused.producer(at["conv1_relu"], 0) == (at["bn_conv1"], 0)
    assert "scale_conv1" not in at


def test_producer_and_consumers_follow_branches(files):
    proto, model, _ = files("resnet")
    graph = caffenorm.load(proto, model, fuse=False).graph
    at = {node.name: i for i, node in enumerate(graph.nodes)}
    # pool1 feeds both branches of the block, in net order
    assert graph.consumers(at["pool1"], 0) == [(at["res2a_branch1"], 0), (at["res2a_branch2a"], 0)]
    # the sum reads each branch's last value: the in-place Scales' outputs
    assert graph.producer(at["res2a"], 0) == (at["scale2a_branch1"], 0)
    assert graph.producer(at["res2a"], 1) == (at["scale2a_branch2c"], 0)
    assert graph.consumers(at["scale2a_branch1"], 0) == [(at["res2a"], 0)]
    assert graph.consumers(at["scale2a_branch2c"], 0) == [(at["res2a"], 1)]
    # not in place: bn3 writes its own top, which scale3 rewrites in place
    assert graph.consumers(at["conv3"], 0) == [(at["bn3"], 0)]
    assert graph.producer(at["scale3"], 0) == (at["bn3"], 0)
    assert graph.producer(at["relu3"], 0) == (at["scale3"], 0)
    assert graph.producer(at["conv4"], 0) == (at["relu3"], 0)
    assert graph.inputs == ["data"] and graph.outputs == ["prob"]
    assert graph.is_output(at["prob"], 0) and graph.consumers(at["prob"], 0) == []
    assert graph.shapes["pool_ave"] == (1, 16, 7, 7) and graph.shapes["fc1"] == (1, 16)

    # a value with two readers, one of them in a later layer (fold_cases: conv_a -> bn_a, side_a)
    proto, model, _ = files("fold_cases")
    graph = caffenorm.load(proto, model).graph
    at = {node.name: i for i, node in enumerate(graph.nodes)}
    assert graph.consumers(at["conv_a"], 0) == [(at["bn_a"], 0), (at["side_a"], 0)]
    assert graph.producer(at["scale_two"], 0) == (at["conv_b"], 0)
    assert graph.producer(at["scale_two"], 1) == (at["conv_b2"], 0)
    # conv_e's chain and its two readers (deconv_f and ip_g read bias_e's output)
    assert graph.consumers(at["bias_e"], 0) == [(at["deconv_f"], 0), (at["ip_g"], 0)]
    assert set(graph.outputs) == {"bn_a", "side_a", "conv_b", "conv_c", "conv_d", "deconv_f", "ip_g"}


def test_cut_keeps_what_computes_the_chosen_outputs(tmp_path):
    """An SSD cut before its DetectionOutput: the three heads are the outputs, equal to the full
    net's blobs; an intermediate blob another kept layer reads can be an output too."""
    proto, model, x = zoo.write("ssd", tmp_path)
    heads = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    cut = caffenorm.load(proto, model, outputs=heads)
    full = caffenorm.load(proto, model)
    assert cut.outputs == heads and "detection_out" in cut.graph.removed
    assert all(n.type != "DetectionOutput" for n in cut.graph)
    xt = torch.from_numpy(x)
    got = cut(xt)
    full(xt)
    assert list(got) == heads and all(torch.equal(got[k], full.blobs[k]) for k in heads)
    inner = caffenorm.load(proto, model, outputs=["conv1_1", "mbox_loc"])
    assert inner.outputs == ["conv1_1", "mbox_loc"]
    assert torch.equal(inner(xt)["conv1_1"], full.blobs["conv1_1"])
    assert all("priorbox" not in n.name for n in inner.graph)  # not needed for mbox_loc
    with pytest.raises(caffenorm.NetDefinitionError, match=r"outputs=\['nope'\] are not blobs of this net"):
        caffenorm.load(proto, model, outputs=["nope"])
