"""caffenorm.Solver and the solver schema: Caffe's solver files, one iteration against a
hand-written loop over caffenorm.optim, iter_size, shared and frozen parameters, snapshots and
bit-for-bit resumption, test nets, the CLI's ``train`` and every bad input."""

from __future__ import annotations

import itertools
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffenorm
from caffenorm import optim
from caffenorm.caffe import schema, solver_schema
from caffenorm.caffe.solver import Solver, read_solver, solver_nets
from caffenorm.cli import main
from caffenorm.errors import NetDefinitionError, SolverError

# conv + BatchNorm/Scale + ReLU + LRN + per-channel Normalize + pool + InnerProduct + loss; Accuracy
# in TEST only.
NET = """
name: "toy"
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 8 dim: 3 dim: 8 dim: 8 } shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 } }
layer { name: "l2" type: "Normalize" bottom: "norm1" top: "l2"
  norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 5 } } }
layer { name: "pool" type: "Pooling" bottom: "l2" top: "pool" pooling_param { pool: AVE kernel_size: 8 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
"""

# Two InnerProducts sharing one weight ("w"), then a frozen one (lr_mult 0).
SHARED_NET = """
name: "shared"
layer { name: "input" type: "Input" top: "data" top: "label" input_param { shape { dim: 8 dim: 4 } shape { dim: 8 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param { name: "w" } param { name: "b1" }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { name: "w" } param { name: "b2" }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" param { lr_mult: 0 } param { lr_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
base_lr: 0.05
lr_policy: "step"
stepsize: 3
gamma: 0.5
momentum: 0.9
weight_decay: 0.0005
max_iter: 10
random_seed: 7
"""


def write(directory: Path, solver: str, net: str = NET, name: str = "solver.prototxt") -> Path:
    (directory / "net.prototxt").write_text(net)
    path = directory / name
    path.write_text(solver)
    return path


def make_batches(n: int, batch: int = 8, seed: int = 0, shape: tuple[int, ...] = (3, 8, 8), classes: int = 2):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = rng.integers(0, classes, batch)
        x = rng.standard_normal((batch, *shape)) + (y.reshape(-1, *[1] * len(shape)) - 0.5)
        out.append({"data": torch.from_numpy(x.astype(np.float32)), "label": torch.from_numpy(y.astype(np.float32))})
    return out


def f32(value: float) -> float:
    """A solver.prototxt float as protobuf returns it."""
    return float(np.float32(value))


def blobs(net) -> dict[str, list[torch.Tensor]]:
    return {name: [t.detach().clone() for t in ts] for name, ts in net.params.items()}


def assert_same_blobs(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert torch.equal(x, y), f"{name}[{i}] differs by {(x - y).abs().max().item()}"


# -- reading solver files ------------------------------------------------------------------------------


def test_schema_numbers_bvlc_fields_and_renumbers_ssd_extras():
    fields = solver_schema.SolverParameter.DESCRIPTOR.fields_by_name
    assert fields["layer_wise_reduce"].number == 41 and fields["weights"].number == 42  # BVLC
    assert {n: fields[n].number for n in solver_schema.SSD_RENUMBERED} == {
        n: new for n, (_, new) in solver_schema.SSD_RENUMBERED.items()
    }
    assert [fields[n].number for n in ("net", "net_param", "type", "iter_size", "clip_gradients")] == [24, 25, 40, 36, 35]
    # One NetParameter class for nets read inline and nets read from prototxts.
    assert fields["net_param"].message_type is schema.NetParameter.DESCRIPTOR
    assert type(solver_schema.SolverParameter().train_net_param) is schema.NetParameter
    # SolverState at the wire level: iter=10 (1), learned_net (2), history (3), current_step=2 (4),
    # SSD's minimum_loss (5, float) and iter_last_event (6).
    wire = (b"\x08\x0a" + b"\x12\x03a.m" + b"\x1a\x02\x08\x01" + b"\x20\x02"
            + b"\x2d" + np.float32(1.5).tobytes() + b"\x30\x04")
    state = solver_schema.SolverState.FromString(wire)
    assert (state.iter, state.learned_net, state.current_step, state.minimum_loss, state.iter_last_event) == (
        10, "a.m", 2, 1.5, 4)
    assert len(state.history) == 1 and state.history[0].num == 1


def test_bvlc_and_ssd_solver_files_parse(tmp_path):
    bvlc = write(tmp_path, SOLVER + 'layer_wise_reduce: false weights: "a.caffemodel" type: "Nesterov"\n'
                 'solver_mode: CPU device_id: 1 snapshot_format: BINARYPROTO clip_gradients: 10 debug_info: false\n')
    p = read_solver(bvlc)
    assert (p.type, p.layer_wise_reduce, list(p.weights), p.clip_gradients) == ("Nesterov", False, ["a.caffemodel"], 10)
    assert p.snapshot_prefix == str(tmp_path / "solver")  # Caffe's default: the solver's path without extension
    ssd = write(tmp_path, SOLVER + 'eval_type: "detection" ap_version: "11point" show_per_class_result: true\n'
                'solver_type: ADAM test_initialization: false\n', name="ssd.prototxt")
    p = read_solver(ssd)
    assert (p.type, p.eval_type, p.ap_version, p.show_per_class_result) == ("Adam", "detection", "11point", True)
    assert not p.HasField("solver_type")  # upgraded as Caffe's UpgradeSolverType


def test_net_paths_are_relative_to_the_solver_file(tmp_path, monkeypatch):
    sub = tmp_path / "models"
    sub.mkdir()
    solver = write(sub, SOLVER + 'test_net: "net.prototxt" test_iter: 1 test_interval: 5\n'.replace('net: "net', 'net: "net'))
    monkeypatch.chdir(tmp_path)
    nets = solver_nets(Path("models") / "solver.prototxt")
    assert [label for label, _, _ in nets] == ["train net", "test net #0"]
    assert nets[0][1] == str(sub / "net.prototxt")
    assert "acc" not in [s.name for s in nets[0][2]] and "acc" in [s.name for s in nets[1][2]]
    # Caffe's own convention (paths from the directory Caffe runs in) is the fallback.
    (tmp_path / "s2.prototxt").write_text(solver.read_text().replace('"net.prototxt"', '"models/net.prototxt"'))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "s2.prototxt").write_text((tmp_path / "s2.prototxt").read_text())
    assert solver_nets(other / "s2.prototxt")[0][1].endswith(os.path.join("models", "net.prototxt"))


def test_inline_net_param_and_deprecated_solver_type(tmp_path):
    body = SOLVER.replace('net: "net.prototxt"', "net_param {" + NET + "}") + "solver_type: NESTEROV\n"
    solver = Solver(write(tmp_path, body), log=None)
    assert solver.param.type == "Nesterov" and isinstance(solver.optimizer, optim.Nesterov)
    assert "<SolverParameter>" not in solver.net.graph.source and "net_param" in solver.net.graph.source
    assert solver.net.phase == "TRAIN" and solver.net.training


BAD = [
    ("momentum: 0.9\nmomentun: 0.8\n", "momentun", r"has no field named \"momentun\".*did you mean momentum"),
    ('type: "Adamm"\n', "type", r"unknown solver type 'Adamm'; did you mean 'Adam'"),
    ('type: "Adam"\nsolver_type: ADAM\n', "solver_type", "both given"),
    (None, "stepsize", r"stepsize=0 with lr_policy 'step'; Caffe requires stepsize > 0"),
    ("stepsize: -5\n", "stepsize", r"stepsize=-5"),
    ('lr_policy: "multistep"\n', "lr_policy", "'multistep' without any stepvalue"),
    ("iter_size: 0\n", "iter_size", "iter_size=0"),
    ('lr_policy: "cosine"\n', "lr_policy", "unknown learning rate policy 'cosine'"),
    ("snapshot_format: HDF5\n", "snapshot_format", "HDF5 snapshots are not supported"),
    ("average_loss: 0\n", "average_loss", "average_loss=0"),
    ('type: "AdaGrad"\nmomentum: 0.9\n', "momentum", "cannot use momentum"),
    ('regularization_type: "L3"\n', "regularization_type", "'L3'"),
    ("test_iter: 2\n", "test_interval", "test_interval=0"),
    ('train_net: "net.prototxt"\n', "train_net", "2 train nets"),
]


@pytest.mark.parametrize("extra, field, message", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_solver_files_name_the_file_field_and_value(tmp_path, extra, field, message):
    body = SOLVER
    if extra is None:
        body = body.replace("stepsize: 3\n", "")
    elif extra.startswith(("lr_policy", "stepsize", "momentum", "type", "regularization_type")):
        keys = tuple(line.split(":")[0] + ":" for line in extra.splitlines())
        body = "\n".join(line for line in body.splitlines() if not line.startswith(keys)) + "\n" + extra
    else:
        body += extra
    path = write(tmp_path, body)
    with pytest.raises(SolverError, match=message) as info:
        Solver(path, log=None)
    text = str(info.value)
    assert str(path) in text and field in text
    assert isinstance(info.value, caffenorm.CaffeNormError)
    line = re.search(r"solver\.prototxt:(\d+)", text)
    assert line, text  # the line of the field
    near = {"stepsize": "lr_policy", "test_interval": "test_iter"}.get(field, field)
    assert body.splitlines()[int(line.group(1)) - 1].startswith((field, near))


def test_missing_net_file_names_the_field_and_where_it_looked(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.replace("net.prototxt", "nope.prototxt"))
    with pytest.raises(SolverError, match=r"solver\.prototxt:2: net: net file 'nope.prototxt' not found \(looked at"):
        Solver(path, log=None)
    with pytest.raises(SolverError, match="no such file"):
        Solver(tmp_path / "absent.prototxt")


# -- one iteration ------------------------------------------------------------------------------------


def reference_sgd(net_path: Path, passes: list[list[dict]], *, iter_size: int = 1, seed: int = 7) -> caffenorm.Net:
    """The hand-written loop: caffenorm.optim.SGD + learning_rate, with SOLVER's settings."""
    net = caffenorm.load(net_path, phase="train", seed=seed)
    opt = optim.SGD(optim.param_groups(net, include_buffers=True), lr=f32(0.05), momentum=f32(0.9),
                    weight_decay=f32(0.0005), iter_size=iter_size)
    for it, group in enumerate(passes):
        opt.zero_grad()
        for batch in group:
            net(**batch)
            net.loss().backward()
        rate = optim.learning_rate(it, base_lr=f32(0.05), lr_policy="step", gamma=f32(0.5), stepsize=3)
        for g in opt.param_groups:
            g["lr"] = rate
        opt.step()
    return net


def test_steps_equal_the_hand_written_optim_loop(tmp_path):
    solver = Solver(write(tmp_path, SOLVER), log=None)
    batches = make_batches(7)
    losses = [solver.step(**b) for b in batches]
    assert solver.iter == 7 and solver.lr == pytest.approx(0.05 * 0.5**2)
    reference = reference_sgd(tmp_path / "net.prototxt", [[b] for b in batches])
    assert_same_blobs(blobs(solver.net), blobs(reference))  # parameters and BatchNorm blobs, bit for bit
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_step_takes_numpy_inputs_and_moves_them_to_the_device(tmp_path):
    solver = Solver(write(tmp_path, SOLVER), device="cpu", log=None)
    reference = Solver(tmp_path / "solver.prototxt", log=None)
    for b in make_batches(2):
        solver.step({k: v.numpy() for k, v in b.items()})
        reference.step(b)
    assert_same_blobs(blobs(solver.net), blobs(reference.net))
    with pytest.raises(SolverError, match="either as keywords"):
        solver.step(b, data=b["data"])


def test_iter_size_accumulates_gradients_like_the_reference(tmp_path):
    solver = Solver(write(tmp_path, SOLVER + "iter_size: 2\n"), log=None)
    batches = make_batches(8)
    pairs = [batches[i : i + 2] for i in range(0, 8, 2)]
    for pair in pairs:
        solver.step(pair)
    assert solver.iter == 4
    assert_same_blobs(blobs(solver.net), blobs(reference_sgd(tmp_path / "net.prototxt", pairs, iter_size=2)))
    with pytest.raises(SolverError, match="iter_size is 2: step\\(\\) needs a list of 2 input dicts"):
        solver.step(**batches[0])


def test_iter_size_two_halves_equal_one_full_batch(tmp_path):
    # Without BatchNorm (whose statistics depend on the batch), two half batches with iter_size 2
    # give the gradient of the full batch (SoftmaxWithLoss averages per pass, the solver divides by 2).
    net = "\n".join(line for line in NET.splitlines() if '"bn1"' not in line)
    net = net.replace("dim: 8 dim: 3", "dim: 4 dim: 3").replace("shape { dim: 8 } }", "shape { dim: 4 } }")
    full = Solver(write(tmp_path, SOLVER, net), log=None)
    half = Solver(write(tmp_path, SOLVER + "iter_size: 2\n", net, name="half.prototxt"), log=None)
    for b in make_batches(3):
        full.step(**b)
        half.step([{k: v[:4] for k, v in b.items()}, {k: v[4:] for k, v in b.items()}])
    for name in full.net.params:
        for x, y in zip(full.net.params[name], half.net.params[name]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_shared_parameters_are_one_tensor_and_train_as_one(tmp_path):
    net = caffenorm.load(write(tmp_path, SOLVER, SHARED_NET).parent / "net.prototxt", phase="train")
    assert net.params["ip1"][0] is net.params["ip2"][0]
    assert net.params["ip1"][1] is not net.params["ip2"][1]
    assert sum(1 for _ in net.parameters()) == 5  # w, b1, b2, ip3's two
    # The shared blob's gradient is the sum over both uses.
    batch = make_batches(1, shape=(4,), classes=3)[0]
    net(**batch)
    net.loss().backward()
    w = net.params["ip1"][0]
    plain = caffenorm.load(tmp_path / "net.prototxt", phase="train")
    with torch.no_grad():
        for name in ("ip1", "ip2", "ip3"):
            for x, y in zip(plain.params[name], net.params[name]):
                x.copy_(y)
    plain.params["ip2"][0].requires_grad_(True)
    # Un-share: give ip2 its own copy, then compare the summed gradients.
    from caffenorm.caffe.builder import set_blob

    set_blob(plain.layer("ip2"), 0, torch.nn.Parameter(w.detach().clone()))
    plain(**batch)
    plain.loss().backward()
    torch.testing.assert_close(w.grad, plain.params["ip1"][0].grad + plain.params["ip2"][0].grad)
    # Trained by the solver: still one tensor, and it moved.
    solver = Solver(tmp_path / "solver.prototxt", log=None)
    start = solver.net.params["ip1"][0].detach().clone()
    for b in make_batches(3, shape=(4,), classes=3):
        solver.step(**b)
    assert solver.net.params["ip1"][0] is solver.net.params["ip2"][0]
    assert not torch.equal(start, solver.net.params["ip1"][0])
    assert len(solver.optimizer.caffe_history()) == 5


def test_lr_mult_zero_freezes(tmp_path):
    solver = Solver(write(tmp_path, SOLVER, SHARED_NET), log=None)
    frozen = [t.detach().clone() for t in solver.net.params["ip3"]]
    assert not any(t.requires_grad for t in solver.net.params["ip3"])
    assert all(t.requires_grad for t in solver.net.params["ip1"])
    for b in make_batches(4, shape=(4,), classes=3):
        solver.step(**b)
    # weight_decay is on, but Caffe's local rate is 0: the blobs do not move.
    assert all(torch.equal(a, b) for a, b in zip(frozen, solver.net.params["ip3"]))


def test_bad_sharing_is_a_clear_net_definition_error(tmp_path):
    bad = SHARED_NET.replace('num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }\nlayer { name: "ip3"',
                             'num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }\nlayer { name: "ip3"')
    (tmp_path / "bad.prototxt").write_text(bad)
    with pytest.raises(NetDefinitionError, match=r"Cannot share param 'w' owned by layer 'ip1' with layer 'ip2'.*"
                                                 r"\(4, 4\).*\(5, 4\)"):
        caffenorm.load(tmp_path / "bad.prototxt", phase="train")
    lr = SHARED_NET.replace('param { name: "w" } param { name: "b2" }', 'param { name: "w" lr_mult: 2 } param { name: "b2" }')
    (tmp_path / "lr.prototxt").write_text(lr.replace('param { name: "w" } param { name: "b1" }',
                                                     'param { name: "w" lr_mult: 1 } param { name: "b1" }'))
    with pytest.raises(NetDefinitionError, match="Shared param 'w' has mismatched lr_mult: 1 .* vs 2"):
        caffenorm.load(tmp_path / "lr.prototxt", phase="train")


def test_load_takes_a_parsed_net_parameter(tmp_path):
    write(tmp_path, SOLVER)
    message = text_format.Parse(NET, schema.NetParameter())
    net = caffenorm.load(message, phase="train", seed=7)
    assert_same_blobs(blobs(net), blobs(caffenorm.load(tmp_path / "net.prototxt", phase="train", seed=7)))
    assert text_format.MessageToString(message) == text_format.MessageToString(text_format.Parse(NET, schema.NetParameter()))


def test_caffe_backward_reaches_every_normalize_layer(tmp_path):
    write(tmp_path, SOLVER)
    assert not caffenorm.load(tmp_path / "net.prototxt").layer("l2").caffe_backward
    assert caffenorm.load(tmp_path / "net.prototxt", caffe_backward=True).layer("l2").caffe_backward
    solver = Solver(tmp_path / "solver.prototxt", caffe_backward=True, log=None)
    assert all(net.layer("l2").caffe_backward for net in solver.nets)


# -- display, tests, snapshots ------------------------------------------------------------------------


def test_display_prints_caffe_lines_and_smooths_the_loss(tmp_path):
    lines: list[str] = []
    solver = Solver(write(tmp_path, SOLVER + "display: 2\naverage_loss: 3\n"), log=lines.append)
    losses = [solver.step(**b) for b in make_batches(6)]
    assert solver.smoothed_loss == pytest.approx(np.mean(losses[-3:]), rel=1e-6)
    assert re.fullmatch(r"Iteration 0 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.e+-]+", lines[0])
    assert re.fullmatch(r"    Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)", lines[1])
    assert lines[2] == "Iteration 0, lr = 0.05"
    assert "Iteration 4, lr = 0.025" in lines and not any(line.startswith("Iteration 1") for line in lines)


def test_test_nets_share_the_train_weights_and_average_as_caffe(tmp_path):
    solver = Solver(write(tmp_path, SOLVER + 'test_iter: 3\ntest_interval: 2\ntest_compute_loss: true\n'), log=None)
    (test_net,) = solver.test_nets
    assert test_net.phase == "TEST" and "acc" in test_net.outputs and "acc" not in solver.net.outputs
    for name in solver.net.params:
        assert all(a is b for a, b in zip(solver.net.params[name], test_net.params[name])), name
    train = make_batches(3, seed=1)
    for b in train:
        solver.step(**b)
    batches = make_batches(3, seed=2)
    (scores,) = solver.test(batches)
    expected = {}
    with torch.no_grad():
        for i, b in enumerate(batches):
            out = test_net(**b)
            for k, v in out.items():
                expected[k] = v.clone() if i == 0 else expected[k] + v  # float32 sums, in Caffe's order
    assert scores.keys() == {"loss", "acc"} and scores.iteration == 3
    for k, total in expected.items():
        assert torch.equal(scores[k], total / 3)
    assert scores.loss == pytest.approx(float(scores["loss"]), rel=1e-6)
    # A list restarts at each test; an iterator continues (Caffe's data cursor); a callable is called.
    assert torch.equal(solver.test(batches)[0]["acc"], scores["acc"])
    stream = iter(batches * 2)
    first, second = solver.test(stream)[0], solver.test(stream)[0]
    assert torch.equal(first["loss"], second["loss"])
    assert torch.equal(solver.test(lambda: iter(batches))[0]["loss"], scores["loss"])
    with pytest.raises(SolverError, match="ran out after 1 batch"):
        solver.test(batches[:1])


def test_solve_follows_caffes_cadence(tmp_path):
    body = SOLVER.replace("max_iter: 10", "max_iter: 7") + (
        'test_iter: 1\ntest_interval: 3\ndisplay: 3\nsnapshot: 5\nsnapshot_prefix: "snaps/toy"\n')
    (tmp_path / "snaps").mkdir()
    lines: list[str] = []
    solver = Solver(write(tmp_path, body), log=lines.append, test_data=make_batches(1, seed=3))
    seen = []
    loss = solver.solve(itertools.cycle(make_batches(4)), callback=lambda s: seen.append(s.iter))
    assert seen == list(range(1, 8)) and solver.iter == 7 and np.isfinite(loss)
    assert [int(m) for m in re.findall(r"Iteration (\d+), Testing net", "\n".join(lines))] == [0, 3, 6]
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [
        "toy_iter_5.caffemodel", "toy_iter_5.solverstate", "toy_iter_7.caffemodel", "toy_iter_7.solverstate"]
    assert lines[-1] == "Optimization Done."
    with pytest.raises(SolverError, match="ran out at iteration 5"):
        Solver(tmp_path / "solver.prototxt", log=None, test_data=make_batches(1)).solve(make_batches(5))


def test_snapshot_then_resume_continues_bit_for_bit(tmp_path):
    (tmp_path / "snaps").mkdir()
    path = write(tmp_path, SOLVER.replace("max_iter: 10", "max_iter: 100")
                 + 'snapshot_prefix: "snaps/toy"\ntype: "Adam"\nmomentum2: 0.99\n'.replace("momentum: 0.9\n", ""))
    batches = make_batches(10)
    whole = Solver(path, log=None)
    for b in batches:
        whole.step(**b)
    first = Solver(path, log=None)
    for b in batches[:6]:
        first.step(**b)
    model, state_path = first.snapshot()
    assert (model.name, state_path.name) == ("toy_iter_6.caffemodel", "toy_iter_6.solverstate")
    resumed = Solver(path, resume=state_path, log=None)
    assert resumed.iter == 6 and resumed.lr == first.lr
    for b in batches[6:]:
        resumed.step(**b)
    assert_same_blobs(blobs(resumed.net), blobs(whole.net))  # every parameter and BatchNorm blob
    assert all(torch.equal(a, b) for a, b in zip(resumed.optimizer.caffe_history(), whole.optimizer.caffe_history()))
    # The files are Caffe's: the caffemodel loads in caffenorm.load, the state is a SolverState.
    loaded = caffenorm.load(tmp_path / "net.prototxt", model, phase="train")
    assert_same_blobs(blobs(loaded), blobs(first.net))
    state = solver_schema.SolverState.FromString(state_path.read_bytes())
    learnable = optim.learnable_blobs(first.net, include_buffers=True)
    assert (state.iter, state.learned_net, state.current_step) == (6, str(model), 5 // 3)
    assert len(state.history) == 2 * len(learnable)  # Adam: m then v, BatchNorm's blobs included


def test_a_state_of_another_net_is_refused(tmp_path):
    (tmp_path / "snaps").mkdir()
    base = SOLVER + 'snapshot_prefix: "snaps/a"\n'
    solver = Solver(write(tmp_path, base), log=None)
    solver.step(**make_batches(1)[0])
    _, state = solver.snapshot()
    other = tmp_path / "other"
    other.mkdir()
    wider = write(other, SOLVER, NET.replace("num_output: 6", "num_output: 7"))
    with pytest.raises(SolverError, match=r"a_iter_1.solverstate: history blob 0 \(layer 'conv1', blob 0\) has shape "
                                          r"\(6, 3, 3, 3\), this net's is \(7, 3, 3, 3\)"):
        Solver(wider, resume=state, log=None)
    adam = write(other, SOLVER + 'type: "Adam"\n', name="adam.prototxt")
    with pytest.raises(SolverError, match=r"holds 10 history blobs but this net's Adam solver keeps 20 \(10 learnable blobs\)"):
        Solver(adam, resume=state, log=None)
    with pytest.raises(SolverError, match="not both"):
        Solver(adam, resume=state, weights="x.caffemodel", log=None)
    (tmp_path / "junk.solverstate").write_bytes(b"\xff\xff\xff")
    with pytest.raises(SolverError, match="not a Caffe .solverstate"):
        Solver(write(tmp_path, base), resume=tmp_path / "junk.solverstate", log=None)


def test_weights_finetune_from_a_caffemodel(tmp_path):
    (tmp_path / "snaps").mkdir()
    source = Solver(write(tmp_path, SOLVER + 'snapshot_prefix: "snaps/a"\n'), log=None)
    for b in make_batches(2):
        source.step(**b)
    model, _ = source.snapshot()
    tuned = Solver(tmp_path / "solver.prototxt", weights=str(model), log=None)
    assert_same_blobs(blobs(tuned.net), blobs(source.net))
    assert tuned.iter == 0


# -- the command line ----------------------------------------------------------------------------------

TRAIN_NET = NET.replace(
    """layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 8 dim: 3 dim: 8 dim: 8 } shape { dim: 8 } } }""",
    """layer { name: "toy" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "toy_train_lmdb" backend: LMDB batch_size: 16 } }
layer { name: "toy" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "toy_test_lmdb" backend: LMDB batch_size: 25 } }""",
)

TRAIN_SOLVER = """net: "net.prototxt"
test_iter: 4
test_interval: 100
base_lr: 0.05
lr_policy: "inv"
gamma: 0.0001
power: 0.75
momentum: 0.9
weight_decay: 0.0005
display: 100
average_loss: 20
max_iter: 300
snapshot: 150
snapshot_prefix: "out/toy"
random_seed: 1
"""


def toy_arrays(tmp_path: Path) -> tuple[Path, Path]:
    """Two separable classes of 3x8x8 uint8 'images' (the data layers' scale maps them to [0, 1))."""
    rng = np.random.default_rng(0)
    files = []
    for name, n in (("train", 320), ("test", 100)):
        y = rng.integers(0, 2, n)
        x = 128 + 30 * rng.standard_normal((n, 3, 8, 8)) + (y * 50 - 25)[:, None, None, None]
        np.savez(tmp_path / f"{name}.npz", data=np.clip(x, 0, 255).astype(np.uint8), label=y)
        files.append(tmp_path / f"{name}.npz")
    return files[0], files[1]


def test_cli_trains_a_small_net_to_a_low_loss(tmp_path, capsys):
    solver = write(tmp_path, TRAIN_SOLVER, TRAIN_NET)
    (tmp_path / "out").mkdir()
    train, test = toy_arrays(tmp_path)
    assert main(["train", "--solver", str(solver), "--data", str(train), "--test-data", f"data={test}",
                 "--test-data", f"label={test}"]) == 0
    out = capsys.readouterr().out
    final = float(re.search(r"Iteration 300, loss = ([\d.e+-]+)", out).group(1))
    first = float(re.search(r"Iteration 0 \(.*\), loss = ([\d.e+-]+)", out).group(1))
    accuracies = [float(a) for a in re.findall(r"Test net output #1: acc = ([\d.e+-]+)", out)]
    assert final < 0.05 < first and accuracies[-1] == 1.0 and len(accuracies) == 4  # at 0, 100, 200, 300
    shapes = {"data": (1, 3, 8, 8), "label": (1,)}
    net = caffenorm.load(tmp_path / "net.prototxt", tmp_path / "out" / "toy_iter_300.caffemodel", input_shapes=shapes)
    assert net.params["bn1"][2].item() > 1  # BatchNorm statistics trained and saved
    # Resuming from the middle snapshot reaches the same weights.
    assert main(["train", "--solver", str(solver), "--data", str(train), "--no-test",
                 "--snapshot", str(tmp_path / "out" / "toy_iter_150.solverstate")]) == 0
    capsys.readouterr()
    again = caffenorm.load(tmp_path / "net.prototxt", tmp_path / "out" / "toy_iter_300.caffemodel", input_shapes=shapes)
    assert_same_blobs(blobs(again), blobs(net))


def test_cli_names_the_data_layer_without_arrays(tmp_path, capsys):
    solver = write(tmp_path, TRAIN_SOLVER, TRAIN_NET)
    (tmp_path / "out").mkdir()
    train, _ = toy_arrays(tmp_path)
    assert main(["train", "--solver", str(solver)]) == 1
    err = capsys.readouterr().err
    assert "layer 'toy' (Data): train net: no array for 'data', 'label'" in err and "'toy_train_lmdb'" in err
    assert main(["train", "--solver", str(solver), "--data", str(train)]) == 1
    err = capsys.readouterr().err
    assert "test net #0" in err and "'toy_test_lmdb'" in err and "--test-data data=FILE.npz" in err
    assert main(["train", "--solver", str(tmp_path / "nope.prototxt")]) == 1
    assert "nope.prototxt: no such file" in capsys.readouterr().err


def test_cli_snapshots_and_stops_on_sigint(tmp_path, capsys, monkeypatch):
    solver = write(tmp_path, TRAIN_SOLVER.replace("max_iter: 300", "max_iter: 100000"), TRAIN_NET)
    (tmp_path / "out").mkdir()
    train, _ = toy_arrays(tmp_path)
    step = Solver.step

    def interrupted(self, *args, **kwargs):
        if self.iter == 5:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Solver, "step", interrupted)
    assert main(["train", "--solver", str(solver), "--data", str(train), "--no-test"]) == 0
    out = capsys.readouterr().out
    assert "interrupted: snapshotting" in out and "Optimization stopped early." in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy_iter_6.caffemodel", "toy_iter_6.solverstate"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
