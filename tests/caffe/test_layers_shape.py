"""The shape family (Concat, Slice, Split, Silence, Flatten, Reshape, Crop, Permute, Tile, ArgMax)
built from prototxt by ``caffenorm.load``.

Each case is a one- or few-layer net with a numpy reference written from the rules of BVLC
``src/caffe/layers/<name>_layer.cpp`` (Permute: weiliu89/caffe ``permute_layer.cpp``).  Every case
is checked against its reference, at several batch sizes, through ``net.save`` and back, and (for
the copying layers) for gradients: feeding ``arange`` through the reference tells which input
element each output element comes from, so the reference gradient of ``sum(w * top)`` is a
``bincount`` of ``w``.

OpenCV dnn 4.x is the peer where it computes what Caffe does.  Where it does not, the case says why
and is checked against the reference only:

- legacy ``concat_dim`` / ``slice_dim`` are ignored by OpenCV (it always uses ``axis``);
- OpenCV's Permute needs ``order`` to name every axis (SSD appends the missing ones);
- OpenCV rejects Reshape with a negative ``axis`` or ``num_axes: 0`` (inserting axes) and
  Flatten with ``end_axis == axis - 1``, all of which Caffe accepts;
- OpenCV's Slice cannot split evenly when no later layer consumes the tops;
- OpenCV's Caffe importer has no Caffe ``Tile`` (it wants ONNX ``repeats``) nor ``ArgMax``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from netutil import opencv_forward, write_model

import caffenorm
from caffenorm.caffe.layers.shape import ArgMax, Reshape
from caffenorm.errors import InputShapeError, LayerConfigError, NetDefinitionError

Arrays = dict[str, np.ndarray]


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}_in" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _net_text(inputs: dict[str, tuple[int, ...]], body: str) -> str:
    return 'name: "shape"\n' + "".join(_input(n, s) for n, s in inputs.items()) + body


def _load(tmp_path: Path, text: str, name: str = "net", **kwargs):
    proto, model = write_model(tmp_path, text, name=name)
    return caffenorm.load(proto, **kwargs), proto, model


def _random(inputs: dict[str, tuple[int, ...]], seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}


def _with_batch(shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    return (n, *shape[1:])


# -- the references, from the Caffe sources ----------------------------------------------------------


def ref_concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    # Forward_cpu: for each of count(0, axis) outer positions, the bottoms' blocks one after another.
    axis %= xs[0].ndim
    outer = math.prod(xs[0].shape[:axis])
    blocks = [x.reshape(outer, -1) for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return np.concatenate(blocks, axis=1).reshape(shape)


def ref_slice(x: np.ndarray, axis: int, points: list[int], tops: int) -> list[np.ndarray]:
    axis %= x.ndim
    dim = x.shape[axis]
    bounds = [0, *points, dim] if points else [dim // tops * i for i in range(tops + 1)]
    index = [slice(None)] * x.ndim
    out = []
    for a, b in zip(bounds, bounds[1:]):
        index[axis] = slice(a, b)
        out.append(x[tuple(index)])
    return out


def ref_flatten(x: np.ndarray, axis: int, end_axis: int) -> np.ndarray:
    n = x.ndim
    start, end = axis % n, end_axis % n
    shape = [*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]]
    return x.reshape(shape)


def ref_crop(x: np.ndarray, ref: np.ndarray, axis: int, offset: list[int]) -> np.ndarray:
    start = axis % x.ndim
    index = []
    for i in range(x.ndim):
        if i < start:
            index.append(slice(None))
        else:
            off = offset[0] if len(offset) == 1 else offset[i - start] if offset else 0
            index.append(slice(off, off + ref.shape[i]))
    return x[tuple(index)]


def ref_permute(x: np.ndarray, order: list[int]) -> np.ndarray:
    # Forward_cpu: top[i] = bottom[sum_j (i / new_steps[j] % ...) * old_steps[order[j]]].
    full = list(order) + [i for i in range(x.ndim) if i not in order]
    top_shape = [x.shape[o] for o in full]
    old_steps = [math.prod(x.shape[i + 1 :]) for i in range(x.ndim)]
    new_steps = [math.prod(top_shape[i + 1 :]) for i in range(x.ndim)]
    flat = x.reshape(-1)
    out = np.empty(flat.size, x.dtype)
    for i in range(flat.size):
        idx, old = i, 0
        for j in range(x.ndim):
            old += (idx // new_steps[j]) * old_steps[full[j]]
            idx %= new_steps[j]
        out[i] = flat[old]
    return out.reshape(top_shape)


def ref_tile(x: np.ndarray, axis: int, tiles: int) -> np.ndarray:
    # Forward_cpu: for each of count(0, axis) outer blocks, copy the count(axis) inner block `tiles` times.
    axis %= x.ndim
    outer = math.prod(x.shape[:axis])
    inner = x.reshape(outer, -1)
    shape = list(x.shape)
    shape[axis] *= tiles
    return np.concatenate([inner] * tiles, axis=1).reshape(shape)


def ref_argmax(x: np.ndarray, top_k: int, axis: int | None, out_max_val: bool) -> np.ndarray:
    # Forward_cpu: partial_sort of (value, index) pairs with std::greater -- ties: larger index first.
    if axis is not None:
        axis %= x.ndim
        dim = x.shape[axis]
        axis_dist = math.prod(x.shape[axis + 1 :])
        shape = list(x.shape)
        shape[axis] = top_k
    else:
        dim = math.prod(x.shape[1:])
        axis_dist = 1
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[2] = x.shape[0], top_k
        if out_max_val:
            shape[1] = 2
    flat = x.reshape(-1).astype(np.float64)
    top = np.zeros(math.prod(shape))
    for i in range(flat.size // dim):
        pairs = [(flat[(i // axis_dist * dim + j) * axis_dist + i % axis_dist], j) for j in range(dim)]
        pairs.sort(reverse=True)
        for j in range(top_k):
            value, index = pairs[j]
            if out_max_val and axis is None:
                top[2 * i * top_k + j] = index
                top[2 * i * top_k + top_k + j] = value
            else:
                top[(i // axis_dist * top_k + j) * axis_dist + i % axis_dist] = value if out_max_val else index
    return top.reshape(shape).astype(x.dtype)


# -- the cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """A net (inputs + layers), the reference of its output blobs, and whether OpenCV is a peer."""

    id: str
    inputs: dict[str, tuple[int, ...]]
    body: str
    ref: Callable[[Arrays], Arrays]
    opencv: bool | str = True  # True, or why OpenCV cannot be the peer
    batch: bool = True  # whether the batch axis may change
    cv_layer: str | None = None  # read every top of this layer from OpenCV (several tops)
    linear: bool = True  # a pure copy of input elements (gradient check by bincount)
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return _net_text(self.inputs, self.body)


X4 = {"x": (2, 6, 4, 5)}


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str], param: str = "") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {param} }}\n'


CASES = [
    # Concat ---------------------------------------------------------------------------------------
    Case("concat-axis1", {"a": (2, 3, 4, 5), "b": (2, 1, 4, 5), "c": (2, 2, 4, 5)},
         _layer("cat", "Concat", ["a", "b", "c"], ["y"]),
         lambda d: {"y": ref_concat(d["a"], d["b"], d["c"], axis=1)}),
    Case("concat-axis-neg", {"a": (2, 3, 4, 5), "b": (2, 3, 4, 2)},
         _layer("cat", "Concat", ["a", "b"], ["y"], "concat_param { axis: -1 }"),
         lambda d: {"y": ref_concat(d["a"], d["b"], axis=-1)}),
    Case("concat-axis0", {"a": (2, 3, 4), "b": (1, 3, 4)},
         _layer("cat", "Concat", ["a", "b"], ["y"], "concat_param { axis: 0 }"),
         lambda d: {"y": ref_concat(d["a"], d["b"], axis=0)}, batch=False),
    Case("concat-legacy-concat_dim", {"a": (2, 3, 4, 5), "b": (2, 3, 1, 5)},
         _layer("cat", "Concat", ["a", "b"], ["y"], "concat_param { concat_dim: 2 }"),
         lambda d: {"y": ref_concat(d["a"], d["b"], axis=2)}, opencv="OpenCV ignores concat_dim"),
    Case("concat-one-bottom", {"a": (2, 3)},
         _layer("cat", "Concat", ["a"], ["y"]), lambda d: {"y": d["a"]}),
    # Slice ----------------------------------------------------------------------------------------
    Case("slice-points", X4,
         _layer("sl", "Slice", ["x"], ["a", "b", "c"], "slice_param { axis: 1 slice_point: 1 slice_point: 3 }"),
         lambda d: dict(zip("abc", ref_slice(d["x"], 1, [1, 3], 3))), cv_layer="sl"),
    Case("slice-equal-consumed", X4,
         _layer("sl", "Slice", ["x"], ["a", "b"], "slice_param { axis: 2 }")
         + _layer("cat", "Concat", ["b", "a"], ["y"], "concat_param { axis: 2 }"),
         lambda d: {"y": ref_concat(*ref_slice(d["x"], 2, [], 2)[::-1], axis=2)}),
    Case("slice-equal-neg-axis", X4,
         _layer("sl", "Slice", ["x"], ["a", "b", "c"], "slice_param { axis: -3 }"),
         lambda d: dict(zip("abc", ref_slice(d["x"], 1, [], 3))),
         opencv="OpenCV cannot split evenly into tops nothing consumes"),
    Case("slice-legacy-slice_dim", X4,
         _layer("sl", "Slice", ["x"], ["a", "b"], "slice_param { slice_dim: 3 slice_point: 2 }"),
         lambda d: dict(zip("ab", ref_slice(d["x"], 3, [2], 2))), opencv="OpenCV ignores slice_dim"),
    Case("slice-one-top", X4, _layer("sl", "Slice", ["x"], ["a"]), lambda d: {"a": d["x"]},
         opencv="OpenCV cannot split evenly into tops nothing consumes"),
    # Split / Silence ------------------------------------------------------------------------------
    Case("split", X4,
         _layer("sp", "Split", ["x"], ["a", "b", "c"])
         + _layer("cat", "Concat", ["c", "a", "b"], ["y"], "concat_param { axis: 3 }"),
         lambda d: {"y": ref_concat(d["x"], d["x"], d["x"], axis=3)}),
    Case("silence", {"x": (2, 3), "z": (2, 4)},
         _layer("fl", "Flatten", ["x"], ["y"]) + _layer("mute", "Silence", ["x", "z"], []),
         lambda d: {"y": d["x"]}),
    # Flatten --------------------------------------------------------------------------------------
    Case("flatten-default", X4, _layer("fl", "Flatten", ["x"], ["y"]),
         lambda d: {"y": ref_flatten(d["x"], 1, -1)}),
    Case("flatten-middle", X4, _layer("fl", "Flatten", ["x"], ["y"], "flatten_param { axis: 1 end_axis: 2 }"),
         lambda d: {"y": ref_flatten(d["x"], 1, 2)}),
    Case("flatten-negative", X4, _layer("fl", "Flatten", ["x"], ["y"], "flatten_param { axis: -3 end_axis: -2 }"),
         lambda d: {"y": ref_flatten(d["x"], -3, -2)}),
    Case("flatten-all", X4, _layer("fl", "Flatten", ["x"], ["y"], "flatten_param { axis: 0 }"),
         lambda d: {"y": d["x"].reshape(-1)}),
    Case("flatten-empty-range", X4, _layer("fl", "Flatten", ["x"], ["y"], "flatten_param { axis: 2 end_axis: 1 }"),
         # count(2, 2) == 1: Caffe inserts an axis of size 1.
         lambda d: {"y": d["x"].reshape(*d["x"].shape[:2], 1, *d["x"].shape[2:])},
         opencv="OpenCV asserts end_axis >= axis; Caffe only needs end_axis + 1 >= axis"),
    # Reshape: Caffe's own test_reshape_layer.cpp cases on a (2, 3, 6, 5) bottom --------------------
    *[
        Case(f"reshape-{cid}", {"x": (2, 3, 6, 5)},
             _layer("rs", "Reshape", ["x"], ["y"], f"reshape_param {{ {param} }}"),
             (lambda expected: lambda d: {"y": d["x"].reshape(expected(d["x"].shape[0]))})(expected),
             opencv=cv, batch=batch)
        for cid, param, expected, cv, batch in [
            ("flatten", "shape { dim: 0 dim: -1 dim: 1 dim: 1 }", lambda n: (n, 90, 1, 1), True, True),
            ("copy", "shape { dim: 0 dim: 0 dim: 0 dim: 0 }", lambda n: (n, 3, 6, 5), True, True),
            ("infer", "shape { dim: 0 dim: 3 dim: 10 dim: -1 }", lambda n: (n, 3, 10, 3), True, True),
            ("infer-axis1", "axis: 1 shape { dim: 3 dim: 10 dim: -1 }", lambda n: (n, 3, 10, 3), True, True),
            ("singletons-start", "axis: 0 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }",
             lambda n: (1, 1, 1, n, 3, 6, 5), "OpenCV rejects num_axes: 0", True),
            ("singletons-middle", "axis: 2 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }",
             lambda n: (n, 3, 1, 1, 1, 6, 5), "OpenCV rejects num_axes: 0", True),
            ("singletons-end", "axis: -1 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }",
             lambda n: (n, 3, 6, 5, 1, 1, 1), "OpenCV rejects a negative Reshape axis", True),
            ("flatten-middle", "axis: 1 num_axes: 2 shape { dim: -1 }", lambda n: (n, 18, 5), True, True),
            ("explicit", "shape { dim: 6 dim: 2 dim: 3 dim: 5 }", lambda n: (6, 2, 3, 5), True, False),
            ("replace-last-two", "axis: -3 shape { dim: 30 }", lambda n: (n, 3, 30),
             "OpenCV rejects a negative Reshape axis", True),
        ]
    ],
    # A 0 copies the bottom's axis at the same position, even past the replaced span (here axis 2).
    Case("reshape-copy-past-span", {"x": (2, 3, 3, 5)},
         _layer("rs", "Reshape", ["x"], ["y"], "reshape_param { axis: 1 num_axes: 1 shape { dim: 1 dim: 0 } }"),
         lambda d: {"y": d["x"].reshape(d["x"].shape[0], 1, 3, 3, 5)}),
    # Crop -----------------------------------------------------------------------------------------
    Case("crop-default-axis", {"x": (2, 6, 7, 8), "r": (1, 1, 3, 4)},
         _layer("cr", "Crop", ["x", "r"], ["y"]), lambda d: {"y": ref_crop(d["x"], d["r"], 2, [])}),
    Case("crop-one-offset", {"x": (2, 6, 7, 8), "r": (2, 3, 3, 4)},
         _layer("cr", "Crop", ["x", "r"], ["y"], "crop_param { axis: 1 offset: 2 }"),
         lambda d: {"y": ref_crop(d["x"], d["r"], 1, [2])}),
    Case("crop-per-axis-offsets", {"x": (2, 6, 7, 8), "r": (1, 1, 3, 4)},
         _layer("cr", "Crop", ["x", "r"], ["y"], "crop_param { axis: 2 offset: 1 offset: 3 }"),
         lambda d: {"y": ref_crop(d["x"], d["r"], 2, [1, 3])}),
    Case("crop-negative-axis", {"x": (2, 6, 7, 8), "r": (1, 1, 5, 5)},
         _layer("cr", "Crop", ["x", "r"], ["y"], "crop_param { axis: -1 offset: 3 }"),
         lambda d: {"y": ref_crop(d["x"], d["r"], -1, [3])}),
    # Permute --------------------------------------------------------------------------------------
    Case("permute-nhwc", X4,
         _layer("pm", "Permute", ["x"], ["y"], "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
         lambda d: {"y": ref_permute(d["x"], [0, 2, 3, 1])}),
    Case("permute-partial", X4, _layer("pm", "Permute", ["x"], ["y"], "permute_param { order: 2 order: 0 }"),
         lambda d: {"y": ref_permute(d["x"], [2, 0])}, opencv="OpenCV needs order to name every axis"),
    Case("permute-identity", X4, _layer("pm", "Permute", ["x"], ["y"], "permute_param { order: 0 }"),
         lambda d: {"y": d["x"]}, opencv="OpenCV needs order to name every axis"),
    # Tile -----------------------------------------------------------------------------------------
    Case("tile-axis1", X4, _layer("tl", "Tile", ["x"], ["y"], "tile_param { tiles: 3 }"),
         lambda d: {"y": ref_tile(d["x"], 1, 3)}, opencv="OpenCV has no Caffe Tile"),
    Case("tile-axis-neg", X4, _layer("tl", "Tile", ["x"], ["y"], "tile_param { axis: -2 tiles: 2 }"),
         lambda d: {"y": ref_tile(d["x"], -2, 2)}, opencv="OpenCV has no Caffe Tile"),
    Case("tile-axis0", {"x": (2, 3)}, _layer("tl", "Tile", ["x"], ["y"], "tile_param { axis: 0 tiles: 2 }"),
         lambda d: {"y": ref_tile(d["x"], 0, 2)}, opencv="OpenCV has no Caffe Tile"),
    # ArgMax ---------------------------------------------------------------------------------------
    *[
        Case(f"argmax-{cid}", {"x": shape}, _layer("am", "ArgMax", ["x"], ["y"], f"argmax_param {{ {param} }}"),
             (lambda k, ax, mv: lambda d: {"y": ref_argmax(d["x"], k, ax, mv)})(k, ax, mv),
             opencv="OpenCV has no Caffe ArgMax", linear=False)
        for cid, shape, param, k, ax, mv in [
            ("default", (3, 4, 2, 2), "", 1, None, False),
            ("topk-values", (3, 10), "top_k: 3 out_max_val: true", 3, None, True),
            ("topk-5d", (2, 3, 2, 2, 2), "top_k: 2 out_max_val: true", 2, None, True),
            ("axis1", (2, 5, 3, 4), "axis: 1", 1, 1, False),
            ("axis-values", (2, 5, 3, 4), "axis: 2 top_k: 2 out_max_val: true", 2, 2, True),
            ("axis-neg", (2, 5, 3, 4), "axis: -1 top_k: 4", 4, -1, False),
        ]
    ],
]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


def _run(net, arrays: Arrays) -> dict[str, np.ndarray]:
    net(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    return {k: v.detach().numpy() for k, v in net.blobs.items()}


def test_matches_reference(case: Case, tmp_path: Path) -> None:
    """Each layer's tops equal the reference, element for element (they are copies)."""
    net, _, _ = _load(tmp_path, case.text)
    arrays = _random(case.inputs)
    got = _run(net, arrays)
    expected = case.ref(arrays)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
        # The shapes inferred at load time on the meta device are the real ones.
        assert net.blob_shapes[name] == value.shape


def test_matches_opencv(case: Case, tmp_path: Path) -> None:
    """OpenCV dnn 4.x agrees where it implements Caffe's rule."""
    cv2 = pytest.importorskip("cv2")
    if case.opencv is not True:
        pytest.skip(f"checked against the reference only: {case.opencv}")
    net, proto, _ = _load(tmp_path, case.text)
    arrays = _random(case.inputs, seed=1)
    got = _run(net, arrays)
    if case.cv_layer:
        # OpenCV's forward(name) gives a layer's first top only; forwardAndRetrieve gives all.
        cv_net = cv2.dnn.readNetFromCaffe(str(proto))
        cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        cv_net.enableFusion(False)
        for k, v in arrays.items():
            cv_net.setInput(v, k)
        tops = [s for s in net.layer_specs if s.name == case.cv_layer][0].tops
        theirs = dict(zip(tops, cv_net.forwardAndRetrieve([case.cv_layer])[0]))
    else:
        # Ask OpenCV for the layer that produces each output (its first top).
        producer = {s.tops[0]: s.name for s in net.layer_specs if s.tops}
        layers = [producer[name] for name in net.outputs]
        theirs = opencv_forward(proto, None, arrays, layers)
        theirs = {name: theirs[layer] for name, layer in zip(net.outputs, layers)}
    for name, value in theirs.items():
        np.testing.assert_array_equal(got[name], np.asarray(value).reshape(got[name].shape), err_msg=name)
        assert np.asarray(value).size == got[name].size


@pytest.mark.parametrize("batch", [1, 5])
def test_any_batch_size(case: Case, batch: int, tmp_path: Path) -> None:
    """Sizes are computed at forward time: a batch other than the declared one works."""
    if not case.batch:
        pytest.skip("the layer's parameters fix the batch axis")
    net, _, _ = _load(tmp_path, case.text)
    arrays = _random({n: _with_batch(s, batch) for n, s in case.inputs.items()}, seed=2)
    got = _run(net, arrays)
    for name, value in case.ref(arrays).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_save_round_trip(case: Case, tmp_path: Path) -> None:
    """``net.save`` then ``caffenorm.load`` gives the same net and the same outputs."""
    net, _, _ = _load(tmp_path, case.text)
    arrays = _random(case.inputs, seed=3)
    before = _run(net, arrays)
    net.save(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    again = caffenorm.load(tmp_path / "saved.prototxt", tmp_path / "saved.caffemodel")
    after = _run(again, arrays)
    assert again.outputs == net.outputs
    for name in net.outputs:
        np.testing.assert_array_equal(after[name], before[name])
    assert repr(again) == repr(net)


def test_gradient(case: Case, tmp_path: Path) -> None:
    """Backward of ``sum(w * top)`` gives the reference gradient: each input element receives the
    weights of the output elements copied from it (summed, e.g. over a Split's or Tile's copies)."""
    net, _, _ = _load(tmp_path, case.text)
    names = list(case.inputs)
    if not case.linear:
        x = {n: torch.randn(s, requires_grad=True) for n, s in case.inputs.items()}
        out = net(**x)
        assert all(not v.requires_grad for v in out.values())  # Caffe: ArgMax has no backward
        return
    # Number every input element: the reference then says where each output element comes from.
    sizes = [math.prod(case.inputs[n]) for n in names]
    starts = np.cumsum([0, *sizes])
    index = {n: np.arange(starts[i], starts[i + 1], dtype=np.float64).reshape(case.inputs[n])
             for i, n in enumerate(names)}
    sources = case.ref(index)
    x = {n: torch.randn(case.inputs[n], dtype=torch.float64, requires_grad=True) for n in names}
    out = net(**x)
    rng = np.random.default_rng(4)
    loss = torch.zeros((), dtype=torch.float64)
    expected = np.zeros(starts[-1])
    for name, src in sources.items():
        w = rng.standard_normal(src.shape)
        loss = loss + (out[name] * torch.from_numpy(w)).sum()
        expected += np.bincount(src.astype(np.int64).ravel(), weights=w.ravel(), minlength=starts[-1])
    if not loss.requires_grad:  # e.g. only Silence consumes an input
        return
    loss.backward()
    for i, n in enumerate(names):
        grad = x[n].grad.numpy() if x[n].grad is not None else np.zeros(case.inputs[n])
        np.testing.assert_allclose(grad, expected[starts[i] : starts[i + 1]].reshape(case.inputs[n]), rtol=1e-12)


# -- behaviours worth their own test -----------------------------------------------------------------


def test_split_gradients_add_up(tmp_path: Path) -> None:
    """Caffe's Split backward sums its tops' diffs."""
    text = _net_text({"x": (2, 3)}, _layer("sp", "Split", ["x"], ["a", "b"]))
    net, _, _ = _load(tmp_path, text)
    x = torch.randn(2, 3, requires_grad=True)
    out = net(x)
    (2 * out["a"] + 3 * out["b"]).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 5.0))


def test_silence_tops_are_not_outputs(tmp_path: Path) -> None:
    text = _net_text({"x": (2, 3), "z": (2, 4)}, _layer("mute", "Silence", ["x", "z"], []))
    net, _, _ = _load(tmp_path, text)
    assert net.outputs == []
    assert net(x=torch.zeros(2, 3), z=torch.zeros(2, 4)) == {}


def test_argmax_ties_take_the_larger_index(tmp_path: Path) -> None:
    """``std::greater`` on (value, index) pairs: among equal values the larger index comes first."""
    text = _net_text({"x": (2, 4)}, _layer("am", "ArgMax", ["x"], ["y"], "argmax_param { top_k: 3 out_max_val: true }"))
    net, _, _ = _load(tmp_path, text)
    x = torch.tensor([[1.0, 5.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    y = net(x)["y"]
    assert y.shape == (2, 2, 3)
    torch.testing.assert_close(y[:, 0], torch.tensor([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0]]))
    torch.testing.assert_close(y[:, 1], torch.tensor([[5.0, 5.0, 1.0], [2.0, 2.0, 2.0]]))


def test_reshape_on_meta_and_unknown_shapes(tmp_path: Path) -> None:
    """Without a declared input shape the Reshape is still built and resolves at forward time."""
    text = 'layer { name: "in" type: "Input" top: "x" }\n' + _layer(
        "rs", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: 0 dim: -1 } }"
    )
    net, _, _ = _load(tmp_path, text)
    assert net(torch.zeros(3, 2, 5))["y"].shape == (3, 10)
    assert net(torch.zeros(4, 7))["y"].shape == (4, 7)
    module = Reshape([0, -1])
    assert module(torch.empty(2, 3, 4, device="meta")).shape == (2, 12)


def test_extra_repr_shows_settings() -> None:
    assert repr(Reshape([0, -1], axis=1, num_axes=2)) == "Reshape(shape=[0, -1], axis=1, num_axes=2)"
    assert repr(ArgMax(2, None, True)) == "ArgMax(top_k=2, axis=None, out_max_val=True)"


# -- rejected settings -------------------------------------------------------------------------------

BAD = [
    # (id, inputs, body, error class, fragment of the message)
    ("concat-axis-and-concat_dim", X4,
     _layer("bad", "Concat", ["x", "x"], ["y"], "concat_param { axis: 1 concat_dim: 1 }"),
     LayerConfigError, "give only one"),
    ("concat-mismatch", {"a": (2, 3, 4), "b": (2, 3, 5)}, _layer("bad", "Concat", ["a", "b"], ["y"]),
     InputShapeError, "(2, 3, 5)"),
    ("concat-ndim-mismatch", {"a": (2, 3, 4), "b": (2, 3)}, _layer("bad", "Concat", ["a", "b"], ["y"]),
     InputShapeError, "same number of axes"),
    ("concat-axis-range", X4, _layer("bad", "Concat", ["x", "x"], ["y"], "concat_param { axis: 4 }"),
     InputShapeError, "axis=4"),
    ("concat_dim-range", X4, _layer("bad", "Concat", ["x", "x"], ["y"], "concat_param { concat_dim: 4 }"),
     InputShapeError, "concat_dim=4"),
    ("concat_dim-negative-int32", X4,
     _layer("bad", "Concat", ["x", "x"], ["y"], "concat_param { concat_dim: 4294967295 }"),
     LayerConfigError, "concat_dim=4294967295"),
    ("concat-no-bottom", X4, _layer("bad", "Concat", [], ["y"]), NetDefinitionError, "no bottoms"),
    ("concat-two-tops", X4, _layer("bad", "Concat", ["x"], ["y", "z"]), NetDefinitionError, "2 tops"),
    ("slice-point-count", X4,
     _layer("bad", "Slice", ["x"], ["a", "b"], "slice_param { slice_point: 1 slice_point: 2 }"),
     LayerConfigError, "exactly 1"),
    ("slice-not-increasing", X4,
     _layer("bad", "Slice", ["x"], ["a", "b", "c"], "slice_param { slice_point: 3 slice_point: 2 }"),
     LayerConfigError, "strictly increasing"),
    ("slice-zero-point", X4, _layer("bad", "Slice", ["x"], ["a", "b"], "slice_param { slice_point: 0 }"),
     LayerConfigError, "greater than 0"),
    ("slice-point-past-end", X4, _layer("bad", "Slice", ["x"], ["a", "b"], "slice_param { slice_point: 7 }"),
     InputShapeError, "slice_point=[7]"),
    # Caffe's CHECKs pass, but the empty top blob has no memory and its first forward fails.
    ("slice-empty-last", {"x": (2, 3, 2)},
     _layer("bad", "Slice", ["x"], ["a", "b", "c"], "slice_param { slice_point: 1 slice_point: 3 }"),
     InputShapeError, "no elements for the last top"),
    ("slice-not-dividing", X4, _layer("bad", "Slice", ["x"], ["a", "b", "c", "d"]), InputShapeError, "evenly divide"),
    ("slice-too-many-tops", {"x": (2, 2)},
     _layer("bad", "Slice", ["x"], ["a", "b", "c"], "slice_param { slice_point: 1 slice_point: 2 }"),
     InputShapeError, "at most"),
    ("slice-axis-and-slice_dim", X4, _layer("bad", "Slice", ["x"], ["a", "b"], "slice_param { axis: 1 slice_dim: 1 }"),
     LayerConfigError, "give only one"),
    ("split-in-place", X4, _layer("bad", "Split", ["x"], ["x", "b"]), NetDefinitionError, "in-place"),
    ("silence-with-top", X4, _layer("bad", "Silence", ["x"], ["y"]), NetDefinitionError, "takes 0"),
    ("flatten-in-place", X4, _layer("bad", "Flatten", ["x"], ["x"]), NetDefinitionError, "in-place"),
    ("flatten-end-before-start", X4, _layer("bad", "Flatten", ["x"], ["y"], "flatten_param { axis: 3 end_axis: 1 }"),
     InputShapeError, "end_axis=1"),
    ("flatten-axis-range", X4, _layer("bad", "Flatten", ["x"], ["y"], "flatten_param { axis: 4 }"),
     InputShapeError, "axis=4"),
    ("reshape-in-place", X4, _layer("bad", "Reshape", ["x"], ["x"], "reshape_param { shape { dim: -1 } }"),
     NetDefinitionError, "in-place"),
    ("reshape-two-infer", X4, _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: -1 dim: -1 } }"),
     LayerConfigError, "at most one"),
    ("reshape-below-minus-one", X4, _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: -2 } }"),
     LayerConfigError, "-2"),
    ("reshape-num_axes", X4, _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { num_axes: -2 shape { dim: 1 } }"),
     LayerConfigError, "num_axes=-2"),
    ("reshape-count", X4, _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: 7 dim: 5 } }"),
     InputShapeError, "(2, 6, 4, 5) has 240"),
    ("reshape-not-divisible", X4,
     _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: 0 dim: 7 dim: -1 } }"),
     InputShapeError, "multiple"),
    ("reshape-copy-missing", {"x": (2, 6)},
     _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { axis: 1 shape { dim: 0 dim: 0 } }"),
     InputShapeError, "no axis 2"),
    ("reshape-axis-range", X4, _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { axis: 5 shape { dim: 1 } }"),
     InputShapeError, "axis=5"),
    ("reshape-span-range", X4,
     _layer("bad", "Reshape", ["x"], ["y"], "reshape_param { axis: 2 num_axes: 3 shape { dim: 1 } }"),
     InputShapeError, "num_axes=3"),
    ("crop-one-bottom", X4, _layer("bad", "Crop", ["x"], ["y"]), NetDefinitionError, "takes 2"),
    ("crop-too-small", {"x": (2, 3, 4, 4), "r": (1, 1, 3, 3)},
     _layer("bad", "Crop", ["x", "r"], ["y"], "crop_param { offset: 2 }"), InputShapeError, "offset 2"),
    ("crop-offset-count", {"x": (2, 3, 4, 4), "r": (1, 1, 3, 3)},
     _layer("bad", "Crop", ["x", "r"], ["y"], "crop_param { offset: 1 offset: 1 offset: 1 }"),
     InputShapeError, "one per cropped axis"),
    ("crop-axis-range", {"x": (2, 3, 4, 4), "r": (1, 1, 3, 3)},
     _layer("bad", "Crop", ["x", "r"], ["y"], "crop_param { axis: 4 }"), InputShapeError, "axis=4"),
    ("crop-reference-rank", {"x": (2, 3, 4, 4), "r": (3, 3)},
     _layer("bad", "Crop", ["x", "r"], ["y"]), InputShapeError, "fewer axes"),
    ("permute-duplicate", X4, _layer("bad", "Permute", ["x"], ["y"], "permute_param { order: 0 order: 0 }"),
     LayerConfigError, "duplicate"),
    ("permute-range", X4, _layer("bad", "Permute", ["x"], ["y"], "permute_param { order: 4 }"),
     InputShapeError, "less than 4"),
    ("tile-missing", X4, _layer("bad", "Tile", ["x"], ["y"]), LayerConfigError, "tiles"),
    ("tile-zero", X4, _layer("bad", "Tile", ["x"], ["y"], "tile_param { tiles: 0 }"), LayerConfigError, "positive"),
    ("tile-axis-range", X4, _layer("bad", "Tile", ["x"], ["y"], "tile_param { tiles: 2 axis: -5 }"),
     InputShapeError, "axis=-5"),
    ("argmax-top_k-zero", X4, _layer("bad", "ArgMax", ["x"], ["y"], "argmax_param { top_k: 0 }"),
     LayerConfigError, "top_k=0"),
    ("argmax-top_k-axis", X4, _layer("bad", "ArgMax", ["x"], ["y"], "argmax_param { top_k: 7 axis: 1 }"),
     InputShapeError, "top_k=7"),
    ("argmax-top_k-flat", {"x": (2, 3)}, _layer("bad", "ArgMax", ["x"], ["y"], "argmax_param { top_k: 4 }"),
     InputShapeError, "top_k=4"),
    ("argmax-axis-range", X4, _layer("bad", "ArgMax", ["x"], ["y"], "argmax_param { axis: 4 }"),
     InputShapeError, "axis=4"),
]


@pytest.mark.parametrize(("inputs", "body", "cls", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_rejected(inputs, body, cls, fragment, tmp_path: Path) -> None:
    """Each Caffe CHECK is an error naming the layer, its file and line, and the offending value."""
    with pytest.raises(cls) as info:
        _load(tmp_path, _net_text(inputs, body))
    message = str(info.value)
    assert "layer 'bad'" in message and "net.prototxt:" in message
    assert fragment in message


def test_shape_error_at_forward_names_the_layer(tmp_path: Path) -> None:
    """With undeclared shapes the check runs on the real input, and still names the layer."""
    text = 'layer { name: "in" type: "Input" top: "x" }\n' + _layer(
        "rs", "Reshape", ["x"], ["y"], "reshape_param { shape { dim: 0 dim: 7 } }"
    )
    net, _, _ = _load(tmp_path, text)
    with pytest.raises(InputShapeError, match=r"layer 'rs' \(Reshape\).*\(2, 3\) has 6"):
        net(torch.zeros(2, 3))
