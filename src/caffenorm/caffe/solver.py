"""``caffenorm.Solver``: Caffe's solver (``solver.cpp``, ``sgd_solver.cpp``) driving caffenorm nets.

A solver file (``solver.prototxt``, a ``SolverParameter`` in protobuf text) names a train net and
test nets, the update rule (``type``) and its constants, the learning-rate policy and the
cadence of display, testing and snapshots.  :class:`Solver` reads it, builds the nets (the train
net in phase TRAIN, test nets in TEST sharing the train net's tensors by layer name) and an
optimizer from :mod:`caffenorm.optim`, and reproduces Caffe's loop:

* **one iteration** (``Solver::Step`` body + ``SGDSolver::ApplyUpdate``): zero the gradients;
  ``iter_size`` forward/backward passes of the train net, each backpropagating Caffe's objective
  ``L = sum_t w_t * sum(top_t)`` (``net.loss()``), so the gradients accumulate; the reported loss
  is ``(sum_i L_i) / iter_size``; the rate ``lr = learning_rate(iter, policy...)``; the
  optimizer's step (clip, divide by ``iter_size``, regularise, update); ``iter += 1``;
* **display** every ``display`` iterations: the loss smoothed over the last ``average_loss``
  iterations (``Solver::UpdateSmoothedLoss``) and the train net's outputs, in Caffe's words;
* **tests** every ``test_interval`` iterations (and before the first unless
  ``test_initialization: false``): each test net run ``test_iter`` times, each output element
  summed over the runs and divided by ``test_iter`` (``Solver::Test``);
* **snapshots** every ``snapshot`` iterations and after training: ``<prefix>_iter_N.caffemodel``
  (the train net, Caffe's ``NetParameter`` with blobs) and ``<prefix>_iter_N.solverstate``
  (``SolverState``: ``iter``, ``learned_net``, ``current_step``, the optimizer's history blobs),
  which Caffe itself can resume from, and from which :class:`Solver` resumes bit for bit.

Data: Caffe's data layers read LMDB/HDF5/image lists; here their tops are the nets' inputs and
the caller feeds them (``solver.step(data=x, label=y)``; ``solver.solve(batches, test_data=...)``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message
from torch import Tensor

from caffenorm.caffe import io, schema, writer
from caffenorm.caffe.builder import select_layers
from caffenorm.caffe.net import Net, load_parsed
from caffenorm.caffe.solver_schema import SolverParameter, SolverState
from caffenorm.caffe.spec import LayerSpec
from caffenorm.errors import CaffeNormError, Location, SolverError

__all__ = ["LR_POLICIES", "SOLVER_TYPES", "Solver", "TestScores", "read_solver", "solver_nets"]

PathLike = str | os.PathLike[str]
Batch = Mapping[str, Any]

# Caffe's solver registry names (case-sensitive, as SolverRegistry's lookup) and the deprecated
# SolverParameter.solver_type enum values they replace (upgrade_proto.cpp UpgradeSolverType).
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_OPTIMIZER_FIELDS = (
    "momentum", "momentum2", "delta", "rms_decay", "weight_decay", "regularization_type", "clip_gradients", "iter_size",
)


# ------------------------------------------------------------------------------------------------
# Reading and checking a solver file
# ------------------------------------------------------------------------------------------------


def _field_line(text: str, field: str) -> int | None:
    """The line where ``field`` is first set in prototxt ``text`` (for messages)."""
    match = re.search(rf"^[ \t]*{re.escape(field)}[ \t]*[:{{]", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


class _Reader:
    """A parsed solver and what its messages need: the file, its text, the directory relative
    paths start from."""

    def __init__(self, param: Message, source: str, text: str, directory: Path | None) -> None:
        self.param = param
        self.source = source
        self.text = text
        self.directory = directory
        self.prefix_default = False  # snapshot_prefix was not given: Caffe's default applies

    def error(self, field: str, message: str, near: str | None = None) -> SolverError:
        """An error about ``field``, located at its line (or, when it is not set, at the line of
        the field ``near`` that needs it)."""
        line = None
        if self.text:
            line = _field_line(self.text, field) or (_field_line(self.text, near) if near else None)
        return SolverError(f"{field}: {message}", location=Location(self.source, line))


def read_solver(solver: PathLike | Message) -> Message:
    """Read a solver file into a ``SolverParameter`` (upgraded and checked as :class:`Solver`
    does: ``solver_type`` becomes ``type``, ``snapshot_prefix`` gets Caffe's default)."""
    return _read(solver).param


def _read(solver: PathLike | Message) -> _Reader:
    if isinstance(solver, Message):
        if solver.DESCRIPTOR.full_name != "caffe.SolverParameter":
            raise SolverError(f"expected a caffe.SolverParameter message, got {solver.DESCRIPTOR.full_name}")
        param = SolverParameter()
        param.CopyFrom(solver)
        reader = _Reader(param, "<SolverParameter>", "", None)
    else:
        path = Path(solver)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "no such file"
            raise SolverError(f"{path}: {what}; expected a solver prototxt (SolverParameter text)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SolverError(f"{path}: cannot read the solver file as text: {err}") from None
        param = SolverParameter()
        try:
            text_format.Parse(text, param)
        except text_format.ParseError as err:
            message = re.sub(r"^\d+:\d+\s*:\s*", "", str(err))
            message = re.sub(r"^'[^\n]*?': ", "", message)
            hint = ""
            unknown = re.search(r'has no field named "(\w+)"', message)
            if unknown:
                close = difflib.get_close_matches(unknown.group(1), SolverParameter.DESCRIPTOR.fields_by_name, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else " (a field of a Caffe fork, or a typo)"
            raise SolverError(f"{message}{hint}", location=Location(str(path), err.GetLine() or None,
                                                                    err.GetColumn() or None)) from None
        reader = _Reader(param, str(path), text, path.resolve().parent)
    _upgrade(reader, solver)
    _check(reader)
    return reader


def _upgrade(reader: _Reader, solver: PathLike | Message) -> None:
    """Caffe's ``UpgradeSolverAsNeeded`` and ``UpgradeSnapshotPrefixProperty``."""
    param = reader.param
    if param.HasField("solver_type"):
        if param.HasField("type"):
            raise reader.error("solver_type", "the deprecated solver_type (enum) and type (string) are both given; "
                                              "keep only type")
        names = dict(zip(range(len(SOLVER_TYPES)), SOLVER_TYPES))
        param.type = names[param.solver_type]
        param.ClearField("solver_type")
    if isinstance(solver, Message):
        return
    path = Path(solver)
    if not param.HasField("snapshot_prefix"):
        # Caffe: the solver file's path without its extension.
        param.snapshot_prefix = str(path.with_suffix(""))
        reader.prefix_default = True


def _check(reader: _Reader) -> None:
    """Everything Caffe CHECKs (at construction or at its first use), as errors naming the file,
    the field and the value."""
    p, err = reader.param, reader.error
    if p.type not in SOLVER_TYPES:
        close = difflib.get_close_matches(p.type, SOLVER_TYPES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise err("type", f"unknown solver type {p.type!r}{hint} (known types: {', '.join(SOLVER_TYPES)})")
    policy = p.lr_policy
    if not p.HasField("lr_policy"):
        raise err("lr_policy", f"is not set; Caffe needs one of {', '.join(LR_POLICIES)}")
    if policy == "plateau":
        raise err("lr_policy", "'plateau' (an SSD-fork policy driven by the smoothed loss) is not supported; "
                               f"use one of {', '.join(LR_POLICIES)}")
    if policy not in LR_POLICIES:
        raise err("lr_policy", f"unknown learning rate policy {policy!r}; known: {', '.join(LR_POLICIES)}")
    if policy in ("step", "sigmoid") and p.stepsize <= 0:
        raise err("stepsize", f"stepsize={p.stepsize} with lr_policy {policy!r}; Caffe requires stepsize > 0",
                  "lr_policy")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
        raise err("gamma", f"gamma={p.gamma:g} with lr_policy {policy!r}; Caffe requires gamma >= 0", "lr_policy")
    if policy == "multistep" and not p.stepvalue:
        # Caffe itself would keep base_lr forever: certainly not what the file means.
        raise err("lr_policy", "'multistep' without any stepvalue; give the iterations at which the rate drops "
                               "(stepvalue: 1000 stepvalue: 2000 ...)")
    if policy == "poly" and p.max_iter <= 0:
        raise err("max_iter", f"max_iter={p.max_iter} with lr_policy 'poly' (rate = base_lr (1 - iter/max_iter)^power); "
                              "Caffe divides by it", "lr_policy")
    if p.iter_size < 1:
        raise err("iter_size", f"iter_size={p.iter_size}; it must be >= 1 (the number of forward/backward passes "
                               "whose gradients are accumulated per iteration)")
    if p.average_loss < 1:
        raise err("average_loss", f"average_loss={p.average_loss}; Caffe requires >= 1")
    for field in ("display", "max_iter", "snapshot", "test_interval"):
        if getattr(p, field) < 0:
            raise err(field, f"{field}={getattr(p, field)} must be >= 0")
    if p.regularization_type not in ("L1", "L2"):
        raise err("regularization_type", f"unknown regularization type {p.regularization_type!r}; use 'L1' or 'L2'")
    if p.type in ("AdaGrad", "RMSProp") and p.momentum != 0:
        raise err("momentum", f"momentum={p.momentum:g}; Caffe's {p.type} cannot use momentum (set it to 0)")
    if p.snapshot_format == p.HDF5:
        raise err("snapshot_format", "HDF5 snapshots are not supported; use BINARYPROTO (Caffe's default), which "
                                     "Caffe reads and resumes from as well")
    train = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
    if len(train) != 1:
        what = "no train net" if not train else f"{len(train)} train nets ({', '.join(train)})"
        raise err(train[1] if len(train) > 1 else "net",
                  f"{what}; give exactly one of net, net_param, train_net, train_net_param")
    test_nets = len(p.test_net_param) + len(p.test_net)
    generic = p.HasField("net") or p.HasField("net_param")
    if (generic and len(p.test_iter) < test_nets) or (not generic and len(p.test_iter) != test_nets):
        raise err("test_iter", f"{len(p.test_iter)} test_iter value(s) for {test_nets} test net(s); Caffe needs one "
                               "test_iter per test net")
    if any(n < 0 for n in p.test_iter):
        raise err("test_iter", f"test_iter {list(p.test_iter)} must be >= 0")
    if p.test_state and len(p.test_state) != len(p.test_iter):
        raise err("test_state", f"{len(p.test_state)} test_state(s) for {len(p.test_iter)} test net(s); give none "
                                "or one per test net")
    if len(p.test_iter) and p.test_interval <= 0:
        raise err("test_interval", f"test_interval={p.test_interval} with {len(p.test_iter)} test net(s); Caffe "
                                   "requires test_interval > 0 (or remove test_iter)", "test_iter")


# ------------------------------------------------------------------------------------------------
# The solver's nets
# ------------------------------------------------------------------------------------------------

_Entry = tuple[str, Message, list[int | None], str]  # (field, NetParameter, layer lines, source)


def _base_directory(reader: _Reader) -> Path:
    """Where relative paths in the solver start: the solver file's directory, unless the net
    files are only found relative to the current directory (Caffe's own convention: its tools
    run from the Caffe root, e.g. ``net: "examples/mnist/lenet_train_test.prototxt"``)."""
    here = reader.directory
    if here is None:
        return Path.cwd()
    p = reader.param
    files = [f for f in (p.net, p.train_net, *p.test_net) if f]
    if files and not all((here / f).is_file() or Path(f).is_absolute() for f in files) and all(
        (Path.cwd() / f).is_file() for f in files
    ):
        return Path.cwd()
    return here


def _net_file(reader: _Reader, base: Path, field: str, name: str) -> Path:
    path = Path(name)
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([base / path, Path.cwd() / path]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " and ".join(str(c) for c in candidates)
    raise reader.error(field, f"net file {name!r} not found (looked at {looked})")


def _net_entries(reader: _Reader, base: Path, phase: str) -> list[_Entry]:
    """(field, NetParameter, layer lines, source) of the train net or of every test net, in
    Caffe's order (``Solver::InitTrainNet``/``InitTestNets``: ``test_net_param``s, ``test_net``
    files, then ``net``/``net_param`` for the remaining ``test_iter``s)."""
    p = reader.param

    def from_file(field: str, name: str) -> _Entry:
        path = _net_file(reader, base, field, name)
        net_param, lines = io.read_prototxt(path)
        return field, net_param, lines, str(path)

    def inline(field: str, message: Message, index: int | None = None) -> _Entry:
        copy = schema.NetParameter()
        copy.CopyFrom(message)
        where = f"{field}[{index}]" if index is not None else field
        return field, copy, [], f"{reader.source}: {where}"

    if phase == "TRAIN":
        if p.HasField("train_net_param"):
            return [inline("train_net_param", p.train_net_param)]
        if p.HasField("train_net"):
            return [from_file("train_net", p.train_net)]
        if p.HasField("net_param"):
            return [inline("net_param", p.net_param)]
        return [from_file("net", p.net)]
    nets = [inline("test_net_param", m, i) for i, m in enumerate(p.test_net_param)]
    nets += [from_file("test_net", name) for name in p.test_net]
    for _ in range(len(p.test_iter) - len(nets)):
        nets.append(inline("net_param", p.net_param) if p.HasField("net_param") else from_file("net", p.net))
    return nets


def _merged_state(net_param: Message, phase: str, override: Message | None) -> tuple[str, int, list[str]]:
    """Caffe's NetState merge: the solver's phase, then the net's own ``state``, then the solver's
    ``train_state``/``test_state`` (a later phase or level wins; stages add up).  Returns the
    phase, the level and the stages beyond the net's own (which the net reader adds itself)."""
    names = {schema.TRAIN: "TRAIN", schema.TEST: "TEST"}
    level, stages = 0, []
    for state in (net_param.state, override):
        if state is None:
            continue
        if state.HasField("phase"):
            phase = names[state.phase]
        if state.HasField("level"):
            level = state.level
        stages += list(state.stage)
    return phase, level, stages[len(net_param.state.stage):]


def _states(reader: _Reader, phase: str, count: int) -> list[Message | None]:
    p = reader.param
    if phase == "TRAIN":
        return [p.train_state if p.HasField("train_state") else None]
    return [p.test_state[i] if p.test_state else None for i in range(count)]


def solver_nets(solver: PathLike | Message) -> list[tuple[str, str, list[LayerSpec]]]:
    """The nets a solver file defines, without building them: ``(label, source, layers)`` for the
    train net (label ``"train net"``) then each test net (``"test net #i"``), each with the layers
    of its phase (:class:`caffenorm.caffe.spec.LayerSpec`, NetState merged as Caffe does).  For
    tools that must know the data layers first (``caffenorm train`` sizes its batches by them)."""
    reader = _read(solver)
    base = _base_directory(reader)
    out = []
    for phase in ("TRAIN", "TEST"):
        entries = _net_entries(reader, base, phase)
        for i, ((_, net_param, lines, source), state) in enumerate(zip(entries, _states(reader, phase, len(entries)))):
            net_phase, level, stages = _merged_state(net_param, phase, state)
            _, specs = select_layers(net_param, lines, source, net_phase, level, stages)
            out.append(("train net" if phase == "TRAIN" else f"test net #{i}", source, specs))
    return out


# ------------------------------------------------------------------------------------------------
# Test results
# ------------------------------------------------------------------------------------------------


class TestScores(dict):  # type: ignore[type-arg]
    """One test net's outputs averaged over ``test_iter`` forwards, as Caffe's ``Solver::Test``
    computes them: every element of every output blob summed over the runs (in the blob's dtype)
    and divided by ``test_iter``.  A ``dict`` of output name -> tensor, plus:

    Attributes:
        net: the test net's index.
        iteration: the solver iteration it was run at.
        loss: with ``test_compute_loss: true``, the mean over the runs of the net's objective
            (``net.loss()``); else None.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, outputs: Mapping[str, Tensor], net: int, iteration: int, loss: float | None) -> None:
        super().__init__(outputs)
        self.net = net
        self.iteration = iteration
        self.loss = loss

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v.tolist() if v.numel() <= 4 else tuple(v.shape)}" for k, v in self.items())
        loss = "" if self.loss is None else f", loss={self.loss:g}"
        return f"TestScores(net={self.net}, iteration={self.iteration}, {values}{loss})"


# ------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------


@functools.cache
def _optim() -> Any:
    """The update rules, rate policies and param groups of :mod:`caffenorm.optim`, imported from
    its modules when first needed: ``caffenorm.optim`` re-exports :class:`Solver`, so neither
    package may import the other's ``__init__`` at import time."""
    import types

    # Module imports, not `from caffenorm.optim import ...`, which would import (and depend on)
    # the package's __init__.
    import caffenorm.optim.groups as groups  # noqa: PLR0402
    import caffenorm.optim.policies as policies  # noqa: PLR0402
    import caffenorm.optim.rules as rules  # noqa: PLR0402

    return types.SimpleNamespace(
        learning_rate=policies.learning_rate, current_step=policies.current_step,
        param_groups=groups.param_groups, learnable_blobs=groups.learnable_blobs,
        **{name: getattr(rules, name) for name in SOLVER_TYPES},
    )


class Solver:
    """Caffe's solver over caffenorm nets.  See the module docstring for what one iteration does.

    ::

        solver = caffenorm.Solver("solver.prototxt", weights="init.caffemodel")
        loss = solver.step(data=x, label=y)      # one iteration (iter_size > 1: a list of input dicts)
        solver.iter, solver.lr                   # Caffe's iteration counter, the rate of the next update
        solver.test(test_batches)                # each test net over test_iter batches, averaged
        solver.snapshot()                        # <prefix>_iter_N.caffemodel + .solverstate
        solver.solve(batches, test_data=...)     # Caffe's Solve: until max_iter, with display/tests/snapshots
        caffenorm.Solver("solver.prototxt", resume="..._iter_N.solverstate")   # continues bit for bit

    Args:
        solver: the solver file, or a ``SolverParameter`` message (relative paths then start at
            the current directory).
        weights: caffemodel(s) to start from (Caffe's ``--weights``: finetuning; layers it does
            not have keep their fillers, with a warning).  A list, or a comma-separated string as
            Caffe's.  Default: the solver's own ``weights`` field.
        resume: a ``.solverstate`` to continue from (Caffe's ``--snapshot``): the iteration, the
            rate schedule's step, the optimizer's history and the weights of its ``learned_net``.
            Not together with ``weights``.
        input_shapes: shapes of train-net inputs the net does not declare (data layers read
            their shapes from their sources; give e.g. ``{"data": (64, 1, 28, 28), "label": (64,)}``).
            The batch size only serves shape inference: any batch size runs.
        test_input_shapes: the same for the test nets: one mapping for all, or a list with one
            per test net.  Default: ``input_shapes``.
        test_data: the test nets' inputs, used by :meth:`test` and :meth:`solve` when they are not
            given one (see :meth:`test` for the forms it takes).
        caffe_backward: give every Normalize layer Caffe's own (approximate) backward, as
            ``caffenorm.load(..., caffe_backward=True)``.
        device: where the nets (and so the optimizer's history) live; inputs are moved there.
            Caffe's ``solver_mode`` and ``device_id`` are ignored: this argument decides.
        precision: the nets' CUDA precision policy (see :func:`caffenorm.load`).
        log: called with each line Caffe would log (display, tests, snapshots); ``print`` by
            default, ``None`` for silence.

    Attributes:
        param: the ``SolverParameter`` (upgraded: ``type`` set, ``snapshot_prefix`` resolved).
        net: the train net (phase TRAIN).
        test_nets: the test nets (phase TEST), sharing the train net's tensors by layer name.
        optimizer: the :mod:`caffenorm.optim` optimizer for ``param.type``.
        smoothed_loss: the loss averaged over the last ``average_loss`` iterations.
        notes: what was read but is not applied (``solver_mode``, ``snapshot_diff``, ...).

    Randomness: ``random_seed`` (when >= 0) seeds torch's global generator (dropout) as Caffe
    seeds its own, and the fillers; a negative seed (Caffe's clock seed) fills with seed 0, so
    runs are reproducible unless told otherwise.
    """

    def __init__(
        self,
        solver: PathLike | Message,
        *,
        weights: PathLike | Sequence[PathLike] | None = None,
        resume: PathLike | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        test_input_shapes: Mapping[str, Sequence[int]] | Sequence[Mapping[str, Sequence[int]]] | None = None,
        test_data: Any = None,
        caffe_backward: bool = False,
        device: torch.device | str | None = None,
        precision: str = "highest",
        log: Callable[[str], Any] | None = print,
    ) -> None:
        reader = _read(solver)
        self._reader = reader
        self.param: Message = reader.param
        self.source = reader.source
        self.log = log
        self.notes: list[str] = []
        self.test_data = test_data
        self.caffe_backward = bool(caffe_backward)
        p = self.param
        if weights is not None and resume is not None:
            raise SolverError("give weights to finetune or a solverstate to resume, not both (as Caffe's "
                              "--weights/--snapshot)", location=Location(self.source))
        self._note_ignored()
        self._seed = int(p.random_seed) if p.random_seed >= 0 else 0
        if p.random_seed >= 0:
            torch.manual_seed(int(p.random_seed))
        self._base = _base_directory(reader)
        self._prefix = self._snapshot_prefix()
        # -- nets ----------------------------------------------------------------------------------
        self.net: Net = self._train_net(input_shapes, precision)
        if not self.net.loss_weights:
            raise SolverError(f"the train net ({self.net.graph.source}) has no loss (no *Loss layer and no "
                              "loss_weight): there is nothing to minimise", location=Location(self.source))
        self.test_nets: list[Net] = self._test_nets(input_shapes, test_input_shapes, precision)
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            for net in (self.net, *self.test_nets):
                net.to(self.device)
        for net in self.test_nets:
            net.share_trained_layers_with(self.net)
        # -- weights -------------------------------------------------------------------------------
        if weights is None and p.weights and resume is None:
            weights = [w.strip() for entry in p.weights for w in entry.split(",") if w.strip()]
        if weights is not None:
            self._load_weights(weights)
        # -- the update rule -----------------------------------------------------------------------
        self.optimizer = self._make_optimizer()
        self.smoothed_loss = 0.0
        self._losses: list[float] = []
        self._smoothing_start = 0
        self._requests: set[str] = set()
        self._early_exit = False
        self._last_snapshot: int | None = None
        self._timer = time.perf_counter()
        self._timer_iter = 0
        if resume is not None:
            self.restore(resume)

    # -- construction ------------------------------------------------------------------------------

    def _note_ignored(self) -> None:
        p = self.param
        if p.HasField("solver_mode") or p.HasField("device_id"):
            self.notes.append(f"solver_mode {p.SolverMode.Name(p.solver_mode)} / device_id {p.device_id} are ignored: "
                              "the nets run where Solver(device=...) puts them")
        if p.snapshot_diff:
            self.notes.append("snapshot_diff is ignored: snapshots hold the blobs' data, not their gradients")
        if p.HasField("eval_type") and p.eval_type != "classification":
            self.notes.append(f"eval_type {p.eval_type!r} (SSD) is not reproduced: test() averages the test nets' "
                              "outputs as for classification")
        if self.log is not None:
            for note in self.notes:
                self.log(f"note: {note}")

    def _snapshot_prefix(self) -> Path:
        """``snapshot_prefix`` (relative to the base directory; a directory gets the solver file's
        stem appended, as Caffe's ``UpgradeSnapshotPrefixProperty``)."""
        p = self.param
        if self._reader.prefix_default:
            return Path(p.snapshot_prefix)
        prefix = Path(p.snapshot_prefix) if p.snapshot_prefix else Path("")
        if not prefix.is_absolute():
            prefix = self._base / prefix
        if prefix.is_dir() and self._reader.directory is not None:
            prefix = prefix / Path(self.source).stem
        if p.snapshot > 0 and not prefix.parent.is_dir():
            raise self._reader.error("snapshot_prefix", f"cannot write snapshots to {prefix}_iter_N: the directory "
                                                        f"{prefix.parent} does not exist")
        return prefix

    def _build(self, entry: _Entry, phase: str, state: Message | None,
               shapes: Mapping[str, Sequence[int]] | None, precision: str) -> Net:
        _, net_param, lines, source = entry
        phase, level, stages = _merged_state(net_param, phase, state)
        tops = {t for layer in net_param.layer for t in layer.top} | set(net_param.input)
        tops |= {t for layer in net_param.layers for t in layer.top}
        wanted = {k: v for k, v in (shapes or {}).items() if k in tops}
        try:
            return load_parsed(net_param, lines, source, None, phase, input_shapes=wanted, level=level,
                               stages=stages, seed=self._seed, precision=precision,
                               caffe_backward=self.caffe_backward)
        except CaffeNormError as err:
            if "pass input_shapes" in err.message:
                err.message += " (Solver(input_shapes=...) / test_input_shapes=...)"
            raise

    def _train_net(self, shapes: Mapping[str, Sequence[int]] | None, precision: str) -> Net:
        p = self.param
        (entry,) = _net_entries(self._reader, self._base, "TRAIN")
        return self._build(entry, "TRAIN", p.train_state if p.HasField("train_state") else None, shapes, precision)

    def _test_nets(self, shapes: Any, test_shapes: Any, precision: str) -> list[Net]:
        p = self.param
        entries = _net_entries(self._reader, self._base, "TEST")
        if test_shapes is None:
            per_net = [shapes] * len(entries)
        elif isinstance(test_shapes, Mapping):
            per_net = [test_shapes] * len(entries)
        else:
            per_net = list(test_shapes)
            if len(per_net) != len(entries):
                raise SolverError(f"test_input_shapes has {len(per_net)} entries for {len(entries)} test net(s)",
                                  location=Location(self.source))
        return [
            self._build(entry, "TEST", p.test_state[i] if p.test_state else None, per_net[i], precision)
            for i, entry in enumerate(entries)
        ]

    def _load_weights(self, weights: PathLike | Sequence[PathLike]) -> None:
        """Caffe's ``LoadNetWeights`` (``CopyTrainedLayersFrom``): layers matched by name; layers
        the file lacks keep their fillers (finetuning).  Test-net layers the train net does not
        have take their weights from the file too."""
        files = [w.strip() for w in str(weights).split(",")] if isinstance(weights, (str, os.PathLike)) else list(weights)
        for name in files:
            path = Path(name)
            if not path.is_absolute() and not path.is_file() and (self._base / path).is_file():
                path = self._base / path
            self.net.load_caffemodel(path, strict=False)
            train_layers = {n.name for n in self.net.graph.layer_nodes()}
            for net in self.test_nets:
                if any(n.module.caffe_blobs() and n.name not in train_layers for n in net.graph.layer_nodes()):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        net.load_caffemodel(path, strict=False)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        optim = _optim()
        p = self.param
        cls = getattr(optim, p.type)
        accepted = inspect.signature(cls).parameters
        has_var_kw = any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepted.values())
        kwargs: dict[str, Any] = {"lr": self._rate(0)}
        for field in _OPTIMIZER_FIELDS:
            if field in accepted or has_var_kw:
                kwargs[field] = getattr(p, field)
        # BatchNorm's statistics are included (lr_mult 0, never moved) because Caffe's
        # learnable_params_ lists them: the history then has Caffe's length, so Caffe resumes from
        # our .solverstate files and we from its.
        return cls(optim.param_groups(self.net, include_buffers=True), **kwargs)  # type: ignore[no-any-return]

    # -- Caffe's counters --------------------------------------------------------------------------

    @property
    def iter(self) -> int:
        """Caffe's ``iter_``: the number of updates applied so far."""
        return int(self.optimizer.iteration)

    @iter.setter
    def iter(self, value: int) -> None:
        self.optimizer.iteration = int(value)

    @property
    def lr(self) -> float:
        """The rate the next update uses (the policy at the current iteration)."""
        return self._rate(self.iter)

    @property
    def max_iter(self) -> int:
        return int(self.param.max_iter)

    @property
    def current_step(self) -> int:
        """Caffe's ``current_step_`` as the last ``GetLearningRate`` left it (``step``:
        ``iter / stepsize``; ``multistep``: the number of stepvalues passed, one per iteration at
        most; 0 otherwise): what a solverstate records."""
        p = self.param
        if self.iter == 0 or p.lr_policy not in ("step", "multistep"):
            return 0
        return int(_optim().current_step(self.iter - 1, lr_policy=p.lr_policy, stepsize=p.stepsize,
                                         stepvalue=list(p.stepvalue)))

    def _rate(self, iteration: int) -> float:
        """``SGDSolver::GetLearningRate`` at ``iteration`` (:func:`caffenorm.optim.learning_rate`,
        with the solver's proto-float fields, so the rate is Caffe's to the bit)."""
        p = self.param
        return float(
            _optim().learning_rate(
                iteration, base_lr=p.base_lr, lr_policy=p.lr_policy, gamma=p.gamma, power=p.power,
                stepsize=p.stepsize, stepvalue=list(p.stepvalue), max_iter=p.max_iter,
            )
        )

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    # -- one iteration -----------------------------------------------------------------------------

    def _passes(self, inputs: Any, feeds: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        size = self.param.iter_size
        if inputs is None:
            passes: list[Mapping[str, Any]] = [feeds]
        elif feeds:
            raise SolverError("pass the inputs either as keywords (step(data=x, label=y)) or as one argument, not both")
        elif isinstance(inputs, Mapping):
            passes = [inputs]
        elif isinstance(inputs, (list, tuple)) and all(isinstance(x, Mapping) for x in inputs):
            passes = list(inputs)
        elif isinstance(inputs, (Tensor, np.ndarray)) and len(self.net.inputs) == 1:
            passes = [{self.net.inputs[0]: inputs}]
        else:
            raise SolverError(f"step() takes the train net's inputs ({', '.join(self.net.inputs)}) as keywords, a dict, "
                              f"or a list of iter_size={size} dicts; got {type(inputs).__name__}")
        if len(passes) != size:
            how = "keywords or one dict" if size == 1 else f"a list of {size} input dicts"
            raise SolverError(f"iter_size is {size}: step() needs {how} (one per forward/backward pass), got "
                              f"{len(passes)}", location=Location(self.source, _field_line(self._reader.text, "iter_size")))
        return passes

    def step(self, inputs: Any = None, /, **feeds: Any) -> float:
        """Run one Caffe iteration on the train net; return its loss (averaged over ``iter_size``).

        ``solver.step(data=x, label=y)`` feeds the train net's inputs (data layers' tops) by name;
        with ``iter_size > 1`` pass a list of ``iter_size`` such dicts, one per forward/backward
        pass.  The gradients of the passes accumulate and the optimizer divides them by
        ``iter_size`` (Caffe's ``Normalize``), so two passes over halves of a batch equal one pass
        over the batch for losses normalised per pass.  Displays every ``display`` iterations.
        Does not test or snapshot (:meth:`solve` does, at their intervals).
        """
        passes = self._passes(inputs, feeds)
        p = self.param
        display = p.display > 0 and self.iter % p.display == 0
        self.optimizer.zero_grad(set_to_none=True)
        # Caffe sums the passes' losses in the net's Dtype (float).
        total = np.float32(0.0)
        for batch in passes:
            self.net(**self._on_device(batch))
            loss = self.net.loss()
            if loss.requires_grad:
                loss.backward()
            total += np.float32(loss.detach().float().item())
        total /= np.float32(p.iter_size)
        loss_value = float(total)
        self._smooth(loss_value)
        if display:
            self._display()
        self._apply_update(display)
        return loss_value

    def _on_device(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The inputs on the nets' device (given ``device=``), as Caffe copies data into its blobs."""
        if self.device is None:
            return batch
        return {
            k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v).to(self.device, non_blocking=True)
            if isinstance(v, (Tensor, np.ndarray)) else v
            for k, v in batch.items()
        }

    def _apply_update(self, display: bool) -> None:
        """``SGDSolver::ApplyUpdate``: the rate of this iteration, then the optimizer's step
        (which clips, normalises by iter_size, regularises, updates and counts the iteration)."""
        rate = self._rate(self.iter)
        if display:
            self._log(f"Iteration {self.iter}, lr = {rate:g}")
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        # (A blob without .grad is a zero diff for the optimizer, as Caffe's always-present diff.)
        self.optimizer.step()
        if self.param.debug_info and display:
            self._debug_update()

    def _smooth(self, loss: float) -> None:
        """``Solver::UpdateSmoothedLoss``: the mean of the last ``average_loss`` losses (float)."""
        window = self.param.average_loss
        if len(self._losses) < window:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = float(np.float32((self.smoothed_loss * (size - 1) + loss) / size))
        else:
            index = (self.iter - self._smoothing_start) % window
            self.smoothed_loss = float(np.float32(self.smoothed_loss + (loss - self._losses[index]) / window))
            self._losses[index] = loss

    def _reset_smoothing(self) -> None:
        """A new ``Solver::Step`` call: the smoothing window starts empty (as Caffe's ``losses_.clear()``)."""
        self._losses = []
        self.smoothed_loss = 0.0
        self._smoothing_start = self.iter
        self._timer = time.perf_counter()
        self._timer_iter = self.iter

    def _display(self) -> None:
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._timer_iter) / (lapse or 1.0)
        self._log(f"Iteration {self.iter} ({per_s:g} iter/s, {lapse:.4g}s/{self.param.display} iters), "
                  f"loss = {self.smoothed_loss:g}")
        self._timer, self._timer_iter = now, self.iter
        self._log_outputs("Train", self.net, {name: self.net.blobs[name] for name in self.net.outputs})
        if self.param.debug_info:
            self._debug_forward_backward()

    def _log_outputs(self, which: str, net: Net, outputs: Mapping[str, Tensor]) -> None:
        """Caffe's ``    Train net output #k: name = v (* w = wv loss)``, one line per element
        (the first 100 elements of a blob; Caffe prints them all)."""
        weights = net.loss_weights
        index = 0
        for name, value in outputs.items():
            flat = value.detach().float().reshape(-1).cpu().tolist()
            weight = weights.get(name, 0.0)
            for v in flat[:100]:
                extra = f" (* {weight:g} = {weight * v:g} loss)" if weight else ""
                self._log(f"    {which} net output #{index}: {name} = {v:g}{extra}")
                index += 1
            if len(flat) > 100:
                self._log(f"    ... {len(flat) - 100} more values of {name}")
                index += len(flat) - 100

    def _debug_forward_backward(self) -> None:
        """``debug_info``: Caffe's ``[Forward]`` lines (mean absolute value of each layer's tops,
        from ``net.blobs``: for a blob rewritten in place, its last value) and ``[Backward]``
        lines for the parameter gradients (bottom gradients are not kept by autograd)."""
        for node in self.net.graph.layer_nodes():
            for top in node.tops:
                blob = self.net.blobs.get(top)
                if blob is not None and blob.numel():
                    self._log(f"    [Forward] Layer {node.name}, top blob {top} data: "
                              f"{blob.detach().abs().float().mean().item():g}")
        for node in reversed(self.net.graph.layer_nodes()):
            for j, blob in enumerate(node.module.caffe_blobs()):
                if blob.grad is not None and blob.numel():
                    self._log(f"    [Backward] Layer {node.name}, param blob {j} diff: "
                              f"{blob.grad.abs().float().mean().item():g}")

    def _debug_update(self) -> None:
        """``debug_info``: Caffe's ``[Update]`` lines after the update, the mean absolute value of
        each learned blob and of its gradient (Caffe prints the update value there instead)."""
        for node in self.net.graph.layer_nodes():
            for j, blob in enumerate(node.module.caffe_blobs()):
                if isinstance(blob, torch.nn.Parameter) and blob.numel():
                    diff = 0.0 if blob.grad is None else blob.grad.abs().float().mean().item()
                    self._log(f"    [Update] Layer {node.name}, param {j} data: "
                              f"{blob.detach().abs().float().mean().item():g}; diff: {diff:g}")

    # -- testing -----------------------------------------------------------------------------------

    def _sources(self, test_data: Any) -> list[Any]:
        """One source per test net from ``test_data`` (see :meth:`test`)."""
        n = len(self.test_nets)
        data = self.test_data if test_data is None else test_data
        if data is None:
            raise SolverError(f"the solver has {n} test net(s) (inputs: "
                              f"{'; '.join(', '.join(net.inputs) for net in self.test_nets)}); give their inputs: "
                              "solver.test(batches), Solver(..., test_data=...), or solve(..., test=False)",
                              location=Location(self.source))
        if isinstance(data, Mapping) and data and all(isinstance(k, int) for k in data):
            missing = [i for i in range(n) if i not in data]
            if missing:
                raise SolverError(f"test_data has no source for test net(s) {missing}")
            return [data[i] for i in range(n)]
        per_net = isinstance(data, (list, tuple)) and len(data) == n and all(
            not isinstance(x, Mapping) and (callable(x) or isinstance(x, Iterable)) for x in data
        )
        if per_net:
            return list(data)
        if n == 1:
            return [data]
        raise SolverError(f"test_data: the solver has {n} test nets; give a list of {n} sources (one per test net: "
                          "each an iterable of input dicts, a callable returning one, or one input dict)")

    def _test_batches(self, index: int, source: Any) -> Iterator[Batch]:
        if isinstance(source, Mapping):
            return _repeat(source)
        if callable(source):
            return iter(source())
        if iter(source) is source:
            # An iterator continues where the last test left it, as Caffe's data cursor does.
            return source  # type: ignore[no-any-return]
        return iter(source)

    def test(self, test_data: Any = None) -> list[TestScores]:
        """Run every test net ``test_iter`` times and return its outputs averaged as Caffe does
        (``Solver::TestAll``/``Test``): each element of each output blob summed over the runs and
        divided by ``test_iter``.  Logs Caffe's ``Test net output #k`` lines.

        The test nets share the train net's tensors (re-shared at each call, as Caffe calls
        ``ShareTrainedLayersWith`` at each test), so they see the weights and BatchNorm
        statistics trained so far; they run in TEST mode, without gradients.

        ``test_data`` (default: the one given to the constructor) says where each test net's
        inputs come from.  For one test net: an iterable of input dicts (``[{"data": x,
        "label": y}, ...]``; a list is read from its start at every test, an iterator or
        generator continues where the last test stopped, as Caffe's data cursor), a callable
        returning such an iterable (called at every test), or one input dict (used for every
        run).  For several test nets: a list (or ``{index: ...}`` dict) of those, one per net.
        A source that runs out before ``test_iter`` batches is an error.
        """
        results = []
        if not self.test_nets:
            return results
        sources = self._sources(test_data)
        for index, (net, source) in enumerate(zip(self.test_nets, sources)):
            if self._early_exit:
                break
            result = self._test_net(index, net, source)
            if result is None:
                break
            results.append(result)
        return results

    def _test_net(self, index: int, net: Net, source: Any) -> TestScores | None:
        p = self.param
        runs = p.test_iter[index]
        self._log(f"Iteration {self.iter}, Testing net (#{index})")
        net.share_trained_layers_with(self.net)
        net.eval()
        batches = self._test_batches(index, source)
        sums: dict[str, Tensor] = {}
        loss_sum = np.float32(0.0)
        with torch.no_grad():
            for i in range(runs):
                if "stop" in self._requests or "snapshot" in self._requests:
                    # Caffe handles requests between test batches: snapshot now, or stop.
                    if "snapshot" in self._requests:
                        self._requests.discard("snapshot")
                        self.snapshot()
                    if "stop" in self._requests:
                        self._early_exit = True
                        self._log("Test interrupted.")
                        return None
                try:
                    batch = next(batches)
                except StopIteration:
                    raise SolverError(f"test net #{index}: its test data ran out after {i} batch(es); test_iter is "
                                      f"{runs}", location=Location(self.source, _field_line(self._reader.text,
                                                                                            "test_iter"))) from None
                outputs = net(**self._on_device(batch))
                if p.test_compute_loss and net.loss_weights:
                    loss_sum += np.float32(net.loss().item())
                for name, value in outputs.items():
                    if i == 0:
                        sums[name] = value.detach().clone()
                    else:
                        sums[name] += value.detach()
        means = {name: total / runs for name, total in sums.items()} if runs else {}
        loss = None
        if p.test_compute_loss:
            loss = float(loss_sum / np.float32(runs)) if runs else 0.0
            self._log(f"Test loss: {loss:g}")
        self._log_outputs("Test", net, means)
        return TestScores(means, index, self.iter, loss)

    # -- snapshots ---------------------------------------------------------------------------------

    def _filename(self, extension: str) -> Path:
        return Path(f"{self._prefix}_iter_{self.iter}{extension}")

    def snapshot(self) -> tuple[Path, Path]:
        """Write ``<prefix>_iter_<iter>.caffemodel`` (the train net's layers with their blobs, as
        Caffe's ``Net::ToProto``) and ``<prefix>_iter_<iter>.solverstate`` (``SolverState``:
        ``iter``, ``learned_net`` = the caffemodel's path, ``current_step``, and the optimizer's
        history blobs in Caffe's order); return the two paths.  Both load in Caffe; the caffemodel
        in :func:`caffenorm.load`; the state in ``Solver(..., resume=...)``."""
        model = self._filename(".caffemodel")
        state_path = self._filename(".solverstate")
        if not model.parent.is_dir():
            raise self._reader.error("snapshot_prefix", f"cannot write {model}: the directory {model.parent} does "
                                                        "not exist")
        self._log(f"Snapshotting to binary proto file {model}")
        io.write_caffemodel(writer.graph_to_net_parameter(self.net.graph, with_blobs=True, other_phases=False), model)
        state = SolverState(iter=self.iter, learned_net=str(model), current_step=self.current_step)
        for blob in self.optimizer.caffe_history():
            _write_blob(blob, state.history.add())
        self._log(f"Snapshotting solver state to binary proto file {state_path}")
        state_path.write_bytes(state.SerializeToString())
        self._last_snapshot = self.iter
        return model, state_path

    def restore(self, path: PathLike) -> None:
        """Continue from a ``.solverstate`` (Caffe's ``Solver::Restore``): the iteration, the rate
        schedule's ``current_step``, the optimizer's history and, when the state names one, the
        weights of its ``learned_net`` caffemodel.  The state must belong to this net and solver
        type: the number of history blobs and each one's shape are checked (nothing is changed
        when they do not fit).  ``learned_net`` is looked up as written, then beside the state."""
        path = Path(path)
        if path.suffix == ".h5" or path.name.endswith(".solverstate.h5"):
            raise SolverError(f"{path}: HDF5 solver states are not supported; resume from a BINARYPROTO .solverstate")
        if not path.is_file():
            raise SolverError(f"{path}: no such solverstate file")
        try:
            state = SolverState.FromString(path.read_bytes())
        except (DecodeError, RuntimeError, ValueError) as err:
            raise SolverError(f"{path}: not a Caffe .solverstate (SolverState): {err}") from None
        expected = [tuple(int(d) for d in h.shape) for h in self.optimizer.caffe_history()]
        got = len(state.history)
        owners = self._history_owners(len(expected))
        if got != len(expected):
            raise SolverError(
                f"{path}: holds {got} history blobs but this net's {self.param.type} solver keeps {len(expected)} "
                f"({len(owners and set(owners)) or 0} learnable blobs); was the state written for another net or "
                "solver type?",
                location=Location(self.source),
            )
        arrays = []
        for i, (blob, shape) in enumerate(zip(state.history, expected)):
            array = io.blob_to_array(blob, f"{path}: history blob {i}")
            if tuple(array.shape) != shape and not _legacy_shape(tuple(array.shape), shape):
                owner = f" (layer {owners[i][0]!r}, blob {owners[i][1]})" if owners else ""
                raise SolverError(f"{path}: history blob {i}{owner} has shape {tuple(array.shape)}, this net's is "
                                  f"{shape}; was the state written for another net?", location=Location(self.source))
            arrays.append(array.reshape(shape))
        if state.HasField("learned_net") and state.learned_net:
            self.net.load_caffemodel(self._learned_net(path, state.learned_net), strict=True)
        self.optimizer.load_caffe_history(
            [torch.as_tensor(a) for a in arrays]
        )
        # current_step follows from iter (see the property); Caffe's own states agree with it.
        self.iter = state.iter
        self._reset_smoothing()
        self._log(f"Restored solver state from {path}: iteration {self.iter}")

    def _history_owners(self, count: int) -> list[tuple[str, int]]:
        """For each history blob: (layer, blob index) of the learnable blob it belongs to (the
        history holds one or two blocks of one blob per learnable blob)."""
        try:
            blobs = _optim().learnable_blobs(self.net, include_buffers=True)
        except Exception:  # noqa: BLE001 - only for messages
            return []
        names = [(b[0], int(b[1])) for b in blobs]
        if not names or count % len(names):
            return []
        return names * (count // len(names))

    @staticmethod
    def _learned_net(state_path: Path, learned: str) -> Path:
        named = Path(learned)
        for candidate in (named, state_path.parent / named, state_path.parent / named.name):
            if candidate.is_file():
                return candidate
        raise SolverError(f"{state_path}: its learned_net {learned!r} is not found (looked as written and beside the "
                          "state)")

    # -- solving -----------------------------------------------------------------------------------

    def request_stop(self, snapshot: bool = True) -> None:
        """Ask :meth:`solve` to stop after the current iteration (or test batch), snapshotting
        first with ``snapshot`` -- what Caffe's signal handler does for ``--sigint_effect``
        (``snapshot`` / ``stop``); safe to call from a signal handler."""
        self._requests.add("stop")
        if snapshot:
            self._requests.add("snapshot")

    def request_snapshot(self) -> None:
        """Ask :meth:`solve` to snapshot after the current iteration and go on (Caffe's
        ``SolverAction::SNAPSHOT``)."""
        self._requests.add("snapshot")

    def solve(
        self,
        batches: Iterable[Batch],
        *,
        test_data: Any = None,
        test: bool = True,
        callback: Callable[[Solver], Any] | None = None,
    ) -> float:
        """Train until ``max_iter`` as Caffe's ``Solver::Solve``: at each iteration, test first when
        ``iter % test_interval == 0`` (at iteration 0 only with ``test_initialization``), then one
        :meth:`step` (display every ``display``), then snapshot when ``iter % snapshot == 0`` or
        when asked (:meth:`request_snapshot`, :meth:`request_stop`); after the last iteration a
        final snapshot (``snapshot_after_train``, unless just written), then, if due, one more
        forward of the train net to display the loss and a last test.  Returns the smoothed loss.

        ``batches``: the train net's inputs, an iterable of input dicts (``iter_size`` of them per
        iteration); it must last until ``max_iter`` (e.g. ``itertools.cycle``).  ``test_data``: as
        in :meth:`test`; ``test=False`` skips testing.  ``callback(solver)`` runs after each
        iteration (e.g. a progress bar).
        """
        p = self.param
        self._early_exit = False
        self._log(f"Solving {self.net.graph.definition.name or self.net.graph.source}")
        self._log(f"Learning Rate Policy: {p.lr_policy}")
        testing = test and bool(self.test_nets) and p.test_interval > 0
        sources = self._sources(test_data) if testing else []
        train = iter(batches)
        self._reset_smoothing()
        while self.iter < p.max_iter:
            if testing and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test(sources)
                if self._early_exit:
                    break
            self.step(self._next_passes(train))
            if callback is not None:
                callback(self)
            requests, self._requests = self._requests, set()
            if (p.snapshot and self.iter % p.snapshot == 0) or "snapshot" in requests:
                self.snapshot()
            if "stop" in requests:
                self._early_exit = True
                break
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) and self._last_snapshot != self.iter:
            self.snapshot()
        if self._early_exit:
            self._log("Optimization stopped early.")
            return self.smoothed_loss
        if p.display and self.iter % p.display == 0:
            # Caffe's last forward (no backward): only to display the loss.  In TRAIN mode it also
            # updates BatchNorm's statistics, as Caffe's does.
            try:
                batch = next(train)
            except StopIteration:
                batch = None
            if batch is not None:
                with torch.no_grad():
                    self.net(**self._on_device(batch))
                    self._smooth(float(np.float32(self.net.loss().item())))
                self._log(f"Iteration {self.iter}, loss = {self.smoothed_loss:g}")
        if testing and self.iter % p.test_interval == 0:
            self.test(sources)
        self._log("Optimization Done.")
        return self.smoothed_loss

    def _next_passes(self, train: Iterator[Batch]) -> list[Batch]:
        passes = []
        for _ in range(self.param.iter_size):
            try:
                passes.append(next(train))
            except StopIteration:
                raise SolverError(f"the training batches ran out at iteration {self.iter} (max_iter "
                                  f"{self.param.max_iter}); give an endless iterable (itertools.cycle) or lower "
                                  "max_iter", location=Location(self.source)) from None
        return passes

    # -- conveniences ------------------------------------------------------------------------------

    @property
    def nets(self) -> list[Net]:
        """The train net followed by the test nets."""
        return [self.net, *self.test_nets]

    def __repr__(self) -> str:
        return (f"Solver({self.source!r}, type={self.param.type}, iter={self.iter}/{self.param.max_iter}, "
                f"lr_policy={self.param.lr_policy}, test_nets={len(self.test_nets)})")


def _repeat(batch: Batch) -> Iterator[Batch]:
    while True:
        yield batch


def _legacy_shape(got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Old 4-D (num, channels, height, width) blobs: ``expected`` left-padded with 1s."""
    return len(got) == 4 and len(expected) <= 4 and got == (1,) * (4 - len(expected)) + expected


def _write_blob(tensor: Any, blob: Message) -> None:
    """A history tensor as Caffe's ``Blob::ToProto`` writes it: ``shape`` and ``data`` (float), or
    ``double_data`` for a float64 blob."""
    array = np.asarray(tensor.detach().cpu().numpy() if isinstance(tensor, Tensor) else tensor)
    if array.dtype == np.float64:
        blob.shape.dim[:] = list(array.shape)
        blob.double_data[:] = array.ravel().tolist()
    else:
        io.array_to_blob(array, blob)

