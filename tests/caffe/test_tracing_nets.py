"""Every way out of eager float32, on whole nets: ``torch.export.export``, ``torch.jit.trace``,
``torch.compile(fullgraph=True)`` and ``torch.fx.symbolic_trace`` give the eager outputs, and the
exported/traced programs re-run on a second input of another batch size still do.

The nets: the bundled example, AlexNet- (LRN ACROSS, k = 2), ZF- (LRN WITHIN), ResNet-style
(BatchNorm+Scale, Eltwise coeff, AVE pooling with border divisors), an SSD head (Normalize both
ways, PriorBox) and a whole SSD with DetectionOutput (whose row count stays data dependent), and
the real open_nsfw and res10 models.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zoo
from torch.export import Dim

import caffenorm

NETS = ["example", "alexnet", "zf", "resnet", "ssd_head", "ssd", "open_nsfw", "res10"]


@pytest.fixture(scope="module", params=NETS)
def case(request, tmp_path_factory):
    """(name, net, input of batch 2, input of batch 3)."""
    name = request.param
    if name in zoo.REAL:
        files, photo = zoo.REAL[name]
        net = caffenorm.load(*files())
        # res10 runs at any size (its PriorBoxes follow the input): 160x160 keeps the test quick.
        x = zoo.photo(160, zoo.RES10_MEAN) if name == "res10" else photo()
        rng = np.random.default_rng(5)
        first = np.concatenate([x, x[:, :, ::-1]]).copy()
        second = np.concatenate([x[:, ::-1], x, x + rng.normal(0, 20, x.shape).astype(np.float32)]).copy()
    else:
        proto, model, _ = zoo.write(name, tmp_path_factory.mktemp(name))
        net = caffenorm.load(proto, model)
        first, second = zoo.example_input(name, batch=2, seed=1), zoo.example_input(name, batch=3, seed=2)
    return name, net, torch.from_numpy(first), torch.from_numpy(second)


def _eager(net: caffenorm.Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(x)


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape, key
        # The same kernels run in the same order; only a compiled program may reassociate.
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * float(want[key].abs().max()) + 1e-7)


def test_torch_export_with_a_dynamic_batch(case):
    name, net, x, y = case
    program = torch.export.export(net, (x,), dynamic_shapes=({0: Dim("batch")},))
    module = program.module()
    with torch.no_grad():
        _same(module(x), _eager(net, x))
        _same(module(y), _eager(net, y))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    if name in ("ssd", "res10"):
        assert "caffenorm.detection_output.default" in ops  # the rows stay data dependent


def test_torch_jit_trace(case):
    _, net, x, y = case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(net, (x,), strict=False)
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    # One note about what the trace fixes, no storm of TracerWarnings from the shape checks.
    assert all("accepts any batch size" in m for m in messages), messages
    with torch.no_grad():
        _same(traced(x), _eager(net, x))
        _same(traced(y), _eager(net, y))


def test_torch_compile_fullgraph(case):
    _, net, x, y = case
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        _same(compiled(x), _eager(net, x))
        _same(compiled(y), _eager(net, y))


def test_torch_fx_symbolic_trace_has_one_node_per_caffe_layer(case):
    _, net, x, y = case
    traced = torch.fx.symbolic_trace(net)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert len(calls) == len([n for n in net.graph.layer_nodes() if not n.is_input])
    with torch.no_grad():
        _same(traced(x), _eager(net, x))
        _same(traced(y), _eager(net, y))


def test_training_forward_and_backward_compile(tmp_path):
    """A train-phase net (batch statistics and Caffe's blob updates) under torch.compile gives
    eager's loss, gradients and BatchNorm blobs."""
    proto, model, data, labels = zoo.write_train_val("resnet", tmp_path)
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        net = caffenorm.load(proto, model, phase="train")
        run = torch.compile(net, fullgraph=True, backend="aot_eager") if compiled else net
        out = run(data=torch.from_numpy(data), label=torch.from_numpy(labels))
        loss = sum(v.sum() for k, v in out.items() if k == "loss")
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        stats = {n: b.clone() for n, b in net.named_buffers()}
        results.append((loss.detach(), grads, stats))
    (la, ga, sa), (lb, gb, sb) = results
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for key in ga:
        torch.testing.assert_close(gb[key], ga[key], rtol=1e-4, atol=1e-5)
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=1e-5, atol=1e-6)


def test_torch_onnx_export_of_a_caffe_only_op_is_a_clear_error():
    """torch.onnx's TorchScript exporter has no translation for caffenorm's ops: it says so, naming
    the op, instead of writing a graph of constants (what the old autograd Function gave)."""
    pytest.importorskip("onnx")
    import io

    layer = caffenorm.LRN(5, 1e-4, 0.75, 2.0)
    with pytest.raises(Exception, match=r"caffenorm::lrn"):
        torch.onnx.export(layer, (torch.randn(2, 8, 5, 5),), io.BytesIO(), dynamo=False)


def test_open_nsfw_through_torch_onnx_and_onnxruntime_keeps_its_verdict(tmp_path):
    """Exporters drop avg_pool2d's divisor_override; Caffe's AVE pooling no longer uses it, so the
    exported open_nsfw says what caffenorm says (0.8% NSFW on the astronaut, not 87%)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    files, photo = zoo.REAL["open_nsfw"]
    net = caffenorm.load(*files())
    x = torch.from_numpy(photo())
    path = tmp_path / "open_nsfw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["data"], output_names=["prob"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (prob,) = session.run(["prob"], {"data": x.numpy()})
    expected = _eager(net, x)["prob"].numpy()
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-5)
    assert expected[0, 1] < 0.02  # safe for work
