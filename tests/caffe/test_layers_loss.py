"""Loss-family converters (SoftmaxWithLoss, EuclideanLoss, Accuracy) and Net.loss, against numpy
references written from Caffe's softmax_loss_layer / euclidean_loss_layer / accuracy_layer rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import caffenorm

FLT_MIN = np.float32(1.1754943508222875e-38)


def _net(tmp_path, body: str, shapes: dict, name="n"):
    header = "".join(
        f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in v)} }} }} }}\n'
        for k, v in shapes.items()
    )
    path = tmp_path / f"{name}.prototxt"
    path.write_text(header + body)
    return caffenorm.load(path)


def _ref_softmax_loss(scores, labels, axis=1, ignore=None, normalization="VALID"):
    s = np.moveaxis(scores.astype(np.float64), axis, -1)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    flat_p, flat_l = p.reshape(-1, p.shape[-1]), labels.reshape(-1).astype(int)
    valid = np.ones_like(flat_l, dtype=bool) if ignore is None else flat_l != ignore
    loss, grad = 0.0, flat_p.copy()
    for i, (row, lab) in enumerate(zip(flat_p, flat_l)):
        if valid[i]:
            loss -= np.log(max(row[lab], FLT_MIN))
            grad[i, lab] -= 1
        else:
            grad[i] = 0
    outer = int(np.prod(scores.shape[:axis]))
    norm = {"VALID": valid.sum(), "FULL": flat_l.size, "BATCH_SIZE": outer, "NONE": 1}[normalization]
    norm = max(1.0, float(norm))
    grad = np.moveaxis(grad.reshape(s.shape), -1, axis) / norm
    return loss / norm, grad


@pytest.mark.parametrize(
    ("param", "ignore", "normalization"),
    [
        ("", None, "VALID"),
        ("loss_param { ignore_label: 2 }", 2, "VALID"),
        ("loss_param { normalization: FULL ignore_label: 2 }", 2, "FULL"),
        ("loss_param { normalization: BATCH_SIZE }", None, "BATCH_SIZE"),
        ("loss_param { normalization: NONE }", None, "NONE"),
        ("loss_param { normalize: false }", None, "BATCH_SIZE"),
    ],
)
@pytest.mark.parametrize("spatial", [False, True])
def test_softmax_with_loss_value_and_gradient(tmp_path, param, ignore, normalization, spatial):
    shape = (3, 4, 2, 3) if spatial else (5, 4)
    label_shape = (3, 1, 2, 3) if spatial else (5,)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(shape).astype(np.float32) * 3
    labels = rng.integers(0, 4, label_shape).astype(np.float32)
    net = _net(tmp_path, f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" {param} }}\n',
               {"s": shape, "l": label_shape}).double()
    x = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    out = net(s=x, l=torch.tensor(labels, dtype=torch.float64))
    assert out["loss"].shape == ()
    net.loss().backward()
    loss, grad = _ref_softmax_loss(scores, labels, ignore=ignore, normalization=normalization)
    np.testing.assert_allclose(out["loss"].item(), loss, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-10, atol=1e-14)


def test_softmax_with_loss_caps_the_loss_at_minus_log_flt_min(tmp_path):
    net = _net(tmp_path, 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" top: "prob" }\n',
               {"s": (1, 2), "l": (1,)})
    out = net(s=torch.tensor([[0.0, 200.0]]), l=torch.tensor([0.0]))
    assert out["loss"].item() == pytest.approx(-np.log(FLT_MIN), rel=1e-6)
    assert out["prob"].shape == (1, 2)


def test_softmax_with_loss_gradcheck(tmp_path):
    net = _net(tmp_path, 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" loss_param { ignore_label: 1 } }\n',
               {"s": (4, 3), "l": (4,)}).double()
    labels = torch.tensor([0.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(s=t, l=labels)["loss"], (x,))


def test_euclidean_loss(tmp_path):
    net = _net(tmp_path, 'layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "e" }\n',
               {"a": (3, 4), "b": (3, 4)}).double()
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64)
    out = net(a=a, b=b)["e"]
    assert out.item() == pytest.approx(((a - b) ** 2).sum().item() / 6, rel=1e-12)
    assert torch.autograd.gradcheck(lambda t: net(a=t, b=b)["e"], (a,))


def test_accuracy_top_k_ties_and_ignore_label(tmp_path):
    body = ('layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" top: "per_class" '
            'accuracy_param { top_k: 2 ignore_label: 3 } }\n')
    net = _net(tmp_path, body, {"s": (5, 4), "l": (5,)})
    scores = torch.tensor([
        [0.1, 0.9, 0.5, 0.0],  # label 2: one better (0.9) -> within top 2: correct
        [0.9, 0.8, 0.7, 0.0],  # label 2: two better -> wrong
        [0.5, 0.5, 0.5, 0.5],  # label 0: ties count in its favour -> correct
        [0.0, 1.0, 2.0, 3.0],  # label 3: ignored
        [3.0, 2.0, 1.0, 0.0],  # label 1: one better -> correct
    ])
    out = net(s=scores, l=torch.tensor([2.0, 2.0, 0.0, 3.0, 1.0]))
    assert out["acc"].item() == pytest.approx(3 / 4)
    np.testing.assert_allclose(out["per_class"].numpy(), [1.0, 1.0, 0.5, 0.0])


def test_net_loss_sums_weighted_losses_and_train_prototxts_run(tmp_path):
    text = """name: "tiny_train"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } data_param { batch_size: 4 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "l2" type: "EuclideanLoss" bottom: "fc" bottom: "fc_target" top: "l2" loss_weight: 0.5 }
layer { name: "target" type: "Input" top: "fc_target" input_param { shape { dim: 4 dim: 3 } } }
"""
    # 'target' comes after its first use: Caffe would refuse; so does caffenorm.
    path = tmp_path / "t.prototxt"
    path.write_text(text)
    with pytest.raises(caffenorm.NetDefinitionError, match="only produced later"):
        caffenorm.load(path, phase="train", input_shapes={"data": (4, 6), "label": (4,)})
    lines = text.splitlines()
    path.write_text("\n".join([lines[0], lines[5], *lines[1:5]]) + "\n")
    net = caffenorm.load(path, phase="train", input_shapes={"data": (4, 6), "label": (4,)})
    assert net.training and net.loss_weights == {"loss": 1.0, "l2": 0.5}
    out = net(data=torch.randn(4, 6), label=torch.tensor([0.0, 1.0, 2.0, 0.0]), fc_target=torch.zeros(4, 3))
    total = net.loss()
    assert total.item() == pytest.approx(out["loss"].item() + 0.5 * out["l2"].item(), rel=1e-6)
    total.backward()
    assert net.params["fc"][0].grad is not None


def test_net_without_loss_layers_says_so(tmp_path):
    net = _net(tmp_path, 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n', {"x": (1, 2)})
    net(torch.randn(1, 2))
    with pytest.raises(caffenorm.NetDefinitionError, match="no loss layer"):
        net.loss()
