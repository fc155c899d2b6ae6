"""LRN and Normalize as ``torch.library`` custom ops under the tracers and compilers.

``torch.export`` (dynamic batch), ``torch.jit.trace``, ``torch.compile(fullgraph=True)`` (forward and
backward) and ``torch.fx.symbolic_trace`` must give exactly eager's numbers: on CPU the same kernels
run, so equality is exact.  Also ``torch.library.opcheck`` on the four ops, Caffe's running-sum NaN
pattern inside compiled/exported programs, no_grad/inference_mode and fp16/bf16 inputs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import pytest
import torch

import caffenorm
from caffenorm.functional import lrn, normalize

SHAPE = (2, 7, 5, 6)
OTHER_BATCH = (3, 7, 5, 6)
C = SHAPE[1]
EXACT = {"rtol": 0.0, "atol": 0.0}
OPS = torch.ops.caffenorm


def _randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _normalize_layer(across_spatial: bool, channel_shared: bool, caffe_backward: bool = False) -> caffenorm.Normalize:
    layer = caffenorm.Normalize(C, across_spatial, channel_shared, scale=3.0, caffe_backward=caffe_backward)
    if not channel_shared:
        # Unequal per-channel scales: the true and Caffe backward formulas differ only then.
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 2.0, C))
    return layer


# alpha = 2 and k = 2 make every term of the window matter (S ~ 2 + 0.4 * sum of 5 squares).
LAYERS: dict[str, Callable[[], torch.nn.Module]] = {
    "lrn_across": lambda: caffenorm.LRN(5, alpha=2.0, beta=0.75, k=2.0),
    "lrn_within": lambda: caffenorm.LRN(3, alpha=2.0, beta=0.6, k=2.0, norm_region="WITHIN_CHANNEL"),
    "normalize_spatial_shared": lambda: _normalize_layer(True, True),
    "normalize_spatial_per_channel": lambda: _normalize_layer(True, False),
    "normalize_position_shared": lambda: _normalize_layer(False, True),
    "normalize_position_per_channel": lambda: _normalize_layer(False, False),
    "normalize_caffe_backward": lambda: _normalize_layer(False, False, caffe_backward=True),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Every test compiles the same forward code objects again: start from an empty dynamo cache so
    # no test depends on another's guards or hits the recompile limit.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and the gradients wrt the input and every parameter, for the upstream gradient ``g``."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    grads = torch.autograd.grad(y, [x, *module.parameters()], g)
    return y.detach(), list(grads)


def _caffenorm_targets(graph: torch.fx.Graph) -> list[object]:
    return [n.target for n in graph.nodes if n.op == "call_function" and n.target is not operator.getitem]


@pytest.mark.parametrize("name", LAYERS)
def test_export_with_dynamic_batch_equals_eager(name):
    layer = LAYERS[name]()
    exported = torch.export.export(layer, (_randn(SHAPE, 1),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    # One opaque op, not a trace of its kernels with the example's values baked in.
    op = OPS.lrn.default if name.startswith("lrn") else OPS.normalize.default
    assert _caffenorm_targets(exported.graph) == [op]
    x = _randn(OTHER_BATCH, 2)
    torch.testing.assert_close(exported.module()(x), layer(x), **EXACT)


# Normalize's scale-shape check reads traced sizes (a TracerWarning, harmless: C is fixed), and
# recent torch versions deprecate torch.jit.trace itself.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", LAYERS)
def test_jit_trace_reruns_on_another_batch_size(name):
    layer = LAYERS[name]()
    traced = torch.jit.trace(layer, _randn(SHAPE, 1))
    assert ("caffenorm::lrn" if name.startswith("lrn") else "caffenorm::normalize") in str(traced.inlined_graph)
    x = _randn(OTHER_BATCH, 2)
    torch.testing.assert_close(traced(x), layer(x), **EXACT)


@pytest.mark.parametrize("name", LAYERS)
def test_compile_fullgraph_forward_and_backward_equal_eager(name):
    layer = LAYERS[name]()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, g = _randn(SHAPE, 1), _randn(SHAPE, 3)
    y_c, grads_c = _grads(compiled, x, g)
    y_e, grads_e = _grads(layer, x, g)
    torch.testing.assert_close(y_c, y_e, **EXACT)
    assert len(grads_c) == (1 if name.startswith("lrn") else 2)  # input (and Normalize's scale)
    for got, want in zip(grads_c, grads_e):
        torch.testing.assert_close(got, want, **EXACT)


def test_compile_recompiles_for_a_second_instance_with_other_settings():
    # Dynamo turns float attributes that differ between instances into symbolic values on the
    # recompile; the public functions must neither break the graph nor lose the settings.
    x = _randn(SHAPE, 1)
    layers = (caffenorm.LRN(5, 2.0, 0.75, 2.0), caffenorm.LRN(5, 0.5, 0.6, 1.5), caffenorm.LRN(3, 1.0, 0.3, 1.0))
    for layer in layers:
        torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="aot_eager")(x), layer(x), **EXACT)
    for eps in (1e-10, 1e-2):
        layer = caffenorm.Normalize(C, across_spatial=False, eps=eps)
        torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="aot_eager")(x), layer(x), **EXACT)


def test_compile_still_rejects_bad_settings_at_run_time():
    with pytest.raises(caffenorm.LayerConfigError, match="local_size=4"):
        torch.compile(lambda t: lrn(t, 4), fullgraph=True, backend="aot_eager")(_randn(SHAPE, 1))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of torch.jit.script_method
def test_compile_with_inductor_equals_eager():
    # The one inductor case (it compiles C++ on CPU): SSD's configuration, forward and backward.
    layer = _normalize_layer(False, False)
    x, g = _randn(SHAPE, 1), _randn(SHAPE, 3)
    y_c, grads_c = _grads(torch.compile(layer, fullgraph=True), x, g)
    y_e, grads_e = _grads(layer, x, g)
    torch.testing.assert_close(y_c, y_e, **EXACT)
    for got, want in zip(grads_c, grads_e):
        torch.testing.assert_close(got, want, **EXACT)


@pytest.mark.parametrize("name", LAYERS)
def test_fx_symbolic_trace_equals_eager(name):
    layer = LAYERS[name]()
    traced = torch.fx.symbolic_trace(layer)
    assert _caffenorm_targets(traced.graph) == [lrn if name.startswith("lrn") else normalize]
    x = _randn(OTHER_BATCH, 2)
    torch.testing.assert_close(traced(x), layer(x), **EXACT)


def _nan_inf_input() -> torch.Tensor:
    x = torch.ones(2, 9, 2, 2)
    x[0, 3, 1, 0] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    return x


def test_lrn_across_running_sum_nan_pattern_survives_compile_and_export():
    layer = caffenorm.LRN(3, 1.0, 0.75, 1.0)
    x = _nan_inf_input()
    eager = layer(x)
    # Caffe's running sum (p = 1): a NaN at channel r makes every channel from r - p on NaN; an inf
    # at r gives y = x * inf**-beta = 0 while it is in the window, NaN at r (inf * 0) and after it
    # has left (inf - inf).
    assert torch.isnan(eager[0, 2:, 1, 0]).all() and torch.isfinite(eager[0, :2, 1, 0]).all()
    assert torch.equal(torch.isnan(eager[1, :, 0, 0]), torch.tensor([0, 0, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager, equal_nan=True, **EXACT)
    exported = torch.export.export(layer, (torch.randn(2, 9, 2, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.testing.assert_close(exported.module()(x), eager, equal_nan=True, **EXACT)
    # The backward op poisons its window sum the same way.
    x_big = torch.cat([x, torch.randn(1, 9, 2, 2)])
    g = torch.ones_like(x_big)
    y_c, grads_c = _grads(compiled, x_big, g)
    y_e, grads_e = _grads(layer, x_big, g)
    torch.testing.assert_close(y_c, y_e, equal_nan=True, **EXACT)
    torch.testing.assert_close(grads_c[0], grads_e[0], equal_nan=True, **EXACT)
    assert torch.isnan(grads_e[0][0, :, 1, 0]).any() and torch.isfinite(grads_e[0][2]).all()


@pytest.mark.parametrize("name", ["lrn_across", "lrn_within", "normalize_position_per_channel"])
def test_no_grad_and_inference_mode(name):
    layer = LAYERS[name]()
    x = _randn(SHAPE, 1).requires_grad_(True)
    want = layer(x).detach()
    with torch.no_grad():
        y = layer(x)
        y_compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert y.grad_fn is None and y_compiled.grad_fn is None
    torch.testing.assert_close(y, want, **EXACT)
    torch.testing.assert_close(y_compiled, want, **EXACT)
    with torch.inference_mode():
        y = layer(x.detach())
    assert y.is_inference()
    torch.testing.assert_close(y, want, **EXACT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name", ["lrn_across", "lrn_within", "normalize_spatial_per_channel", "normalize_caffe_backward"]
)
def test_half_precision_computes_in_float32_eager_and_compiled(dtype, name):
    layer = LAYERS[name]()  # float32 parameters, as a mixed-precision model keeps them
    x, g = _randn(SHAPE, 1, dtype), _randn(SHAPE, 3, dtype)
    y, grads = _grads(layer, x, g)
    assert y.dtype == dtype and grads[0].dtype == dtype
    # Computed in float32 and rounded once: exactly the float32 result cast to the input dtype.
    torch.testing.assert_close(y, layer(x.float()).to(dtype), **EXACT)
    y_c, grads_c = _grads(torch.compile(layer, fullgraph=True, backend="aot_eager"), x, g)
    assert y_c.dtype == dtype
    torch.testing.assert_close(y_c, y, **EXACT)
    for got, want in zip(grads_c, grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **EXACT)


def test_fake_kernels_give_shapes_dtypes_and_devices():
    cases = ((torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64))
    for dtype, compute in cases:
        x = torch.empty(SHAPE, dtype=dtype, device="meta")
        y, s = OPS.lrn(x, 5, 1.0, 0.75, 2.0, 0)
        assert (y.shape, y.dtype, y.device.type) == (x.shape, dtype, "meta") and s.dtype == compute
        assert s.shape == x.shape
        dx = OPS.lrn_backward(y, x, y, s, 5, 1.0, 0.75, 0)
        assert (dx.shape, dx.dtype) == (x.shape, dtype)
        scale = torch.empty(C, dtype=torch.float32, device="meta")
        for across_spatial, norm_shape in ((True, (2, 1, 1)), (False, (2, 1, 30))):
            y, norm = OPS.normalize(x, scale, across_spatial, 1e-10, False)
            assert (y.shape, y.dtype) == (x.shape, dtype) and (norm.shape, norm.dtype) == (norm_shape, compute)
            dx, dscale = OPS.normalize_backward(y, x, scale, norm, across_spatial, False, True, True)
            assert (dx.shape, dx.dtype, dscale.shape, dscale.dtype) == (x.shape, dtype, scale.shape, scale.dtype)
            dx, dscale = OPS.normalize_backward(y, x, scale, norm, across_spatial, False, False, True)
            assert dx.shape == (0,) and dscale.shape == scale.shape


def _lrn_samples() -> list[tuple[object, ...]]:
    x64 = _randn(SHAPE, 1, torch.float64).requires_grad_(True)
    channels_last = _randn(SHAPE, 2).to(memory_format=torch.channels_last).requires_grad_(True)
    return [
        (x64, 5, 2.0, 0.75, 2.0, 0),
        (x64, 3, 2.0, 0.6, 2.0, 1),
        (channels_last, 5, 1e-4, 0.5, 1.0, 0),
        (_randn(SHAPE, 3, torch.float16).requires_grad_(True), 3, 1.0, 0.75, 2.0, 1),
    ]


def _normalize_samples() -> list[tuple[object, ...]]:
    x64 = _randn(SHAPE, 1, torch.float64).requires_grad_(True)
    scale64 = torch.linspace(0.5, 2.0, C, dtype=torch.float64).requires_grad_(True)
    return [
        (x64, scale64, True, 1e-10, False),
        (x64, scale64, False, 1e-10, True),
        (x64, torch.tensor(2.0, dtype=torch.float64, requires_grad=True), False, 1e-3, False),
        (_randn((2, C, 4), 2).requires_grad_(True), torch.ones(C), True, 1e-10, False),
        (_randn(SHAPE, 3, torch.bfloat16).requires_grad_(True), torch.ones(C, requires_grad=True), False, 1e-10, False),
    ]


def _assert_opcheck(op: torch._ops.OpOverload, args: tuple[object, ...]) -> None:
    results = torch.library.opcheck(op, args)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("index", range(4))
def test_opcheck_lrn_and_its_backward(index):
    args = _lrn_samples()[index]
    _assert_opcheck(OPS.lrn.default, args)
    x, *settings = args
    y, s = OPS.lrn(x.detach(), *settings)
    local_size, alpha, beta, _, norm_region = settings
    # The backward op has no autograd formula of its own (no double backward): check it on
    # inputs that do not require grad.
    grad = torch.randn_like(y)
    _assert_opcheck(OPS.lrn_backward.default, (grad, x.detach(), y, s, local_size, alpha, beta, norm_region))


@pytest.mark.parametrize("index", range(5))
def test_opcheck_normalize_and_its_backward(index):
    args = _normalize_samples()[index]
    _assert_opcheck(OPS.normalize.default, args)
    x, scale, across_spatial, eps, caffe_backward = args
    y, norm = OPS.normalize(x.detach(), scale.detach(), across_spatial, eps, caffe_backward)
    for flags in ((True, True), (True, False), (False, True)):
        _assert_opcheck(
            OPS.normalize_backward.default,
            (torch.randn_like(y), x.detach(), scale.detach(), norm, across_spatial, caffe_backward, *flags),
        )
