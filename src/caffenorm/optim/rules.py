r"""Caffe's solvers as :class:`torch.optim.Optimizer` subclasses: one ``step()`` is one iteration of
``SGDSolver::ApplyUpdate`` (``src/caffe/solvers/sgd_solver.cpp``) with the subclass's
``ComputeUpdateValue`` (``nesterov_solver.cpp``, ``adagrad_solver.cpp``, ``rmsprop_solver.cpp``,
``adadelta_solver.cpp``, ``adam_solver.cpp``; declarations in ``include/caffe/sgd_solvers.hpp``).

Caffe's order, for rate :math:`r` (the group's ``lr``, which a scheduler or the Solver sets to
``GetLearningRate()`` for this iteration) and every learnable blob :math:`w` with diff :math:`g`:

1. ``ClipGradients``: if ``clip_gradients`` :math:`c \ge 0` and the L2 norm :math:`\|G\|` of *all*
   blobs' diffs together exceeds it, every diff is scaled by :math:`c/\|G\|`;
2. ``Normalize``: :math:`g \leftarrow g \cdot (1/\text{iter\_size})` when ``iter_size`` > 1 (the
   Solver sums the gradients of ``iter_size`` forward/backward passes; clipping sees that sum);
3. ``Regularize`` with :math:`\lambda` = ``weight_decay`` :math:`\times` ``decay_mult`` (skipped when
   0): L2 :math:`g \leftarrow g + \lambda w`, L1 :math:`g \leftarrow g + \lambda\,\mathrm{sign}(w)`
   (Caffe's sign: 0 for NaN);
4. ``ComputeUpdateValue`` with the local rate :math:`\rho = r \times` ``lr_mult``: the rule of each
   class below turns :math:`g` into the update :math:`u` (keeping its history);
5. ``Net::Update``: :math:`w \leftarrow w - u`.

Differences from torch's optimizers that matter: the rate is *inside* SGD's history
(:math:`h \leftarrow \mu h + \rho g`, so a rate change only affects new gradients, where
``torch.optim.SGD`` rescales the whole momentum); weight decay is added to the gradient before the
adaptive rules see it; AdaDelta multiplies by the local rate; Adam's bias correction is folded into
the rate.

Details kept exactly:

* ``lr_mult`` 0: Caffe does not back-propagate into the blob (``param_propagate_down`` false), so
  its diff is 0 whatever ``.grad`` holds, and then runs the rule with :math:`\rho = 0`: the blob's
  history is kept as Caffe keeps it and its data does not move (with a history Caffe itself wrote).
* ``.grad`` None is a zero diff (Caffe always has one); ``.grad`` itself is never modified.
* Float32 parameters follow Caffe's float solver: every scalar (rate, local rate, decay, momentum
  factors, Adam's correction) is a float32 where Caffe's ``Dtype`` is; float64 parameters follow
  its double solver.  Caffe's solver.prototxt fields are proto ``float`` s: for bit-identical
  results pass the values protobuf returns for them (float32 values), as the Solver does.
* The CPU code path is reproduced, not the CUDA kernels (which compute in ``float`` even in
  Caffe's double solver and associate a few products differently).
* NaN and inf propagate as in Caffe.

``optimizer.iteration`` is Caffe's ``iter_`` (0 before the first step; Adam's :math:`t` is
``iteration + 1``); ``caffe_history()`` / ``load_caffe_history()`` are the ``.solverstate``'s
history blobs.  Param-group keys: ``lr_mult`` and ``decay_mult`` (default 1), ``names`` (used in
messages) and ``caffe_index`` (each parameter's position in the net's learnable blobs, which
orders ``caffe_history()``), all set by :func:`caffenorm.optim.param_groups`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from caffenorm.errors import BlobError, LayerConfigError
from caffenorm.nn._base import _legacy_match
from caffenorm.optim.policies import c_pow

__all__ = ["SGD", "AdaDelta", "AdaGrad", "Adam", "CaffeOptimizer", "Nesterov", "RMSProp"]

# A numpy scalar type: Caffe's Dtype for a parameter's dtype (float32 for float32 and narrower).
Real = type[np.floating]

_REGULARIZATION_TYPES = ("L2", "L1")
_INTEGRAL = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _dtype_scalar(dtype: torch.dtype) -> Real:
    return np.float64 if dtype == torch.float64 else np.float32  # type: ignore[return-value]


def _caffe_sign(x: Tensor) -> Tensor:
    """``caffe_cpu_sign``: ``(0 < x) - (x < 0)``, so NaN has sign 0 (written out rather than relying on
    ``torch.sign``'s NaN behaviour on every backend)."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


class CaffeOptimizer(Optimizer):
    """What Caffe's solvers share (``SGDSolver::ApplyUpdate``); subclasses give the rule.

    Not used directly: see :class:`SGD`, :class:`Nesterov`, :class:`AdaGrad`, :class:`RMSProp`,
    :class:`AdaDelta`, :class:`Adam` and the module docstring.
    """

    caffe_type: ClassVar[str] = ""
    # State keys of the history blobs, in the order Caffe's history_ holds them: one set of N blobs
    # per key (AdaDeltaPreSolve / AdamPreSolve append a second set after SGDSolver::PreSolve's).
    history_keys: ClassVar[tuple[str, ...]] = ("history",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
        **rule: Any,
    ) -> None:
        defaults = {
            "lr": self._real("lr", lr),
            "weight_decay": self._real("weight_decay", weight_decay),
            "regularization_type": self._regularization(regularization_type),
            "lr_mult": 1.0,
            "decay_mult": 1.0,
            **rule,
        }
        # Solver-wide settings (Caffe has one norm over all blobs, one iter_size): attributes, not
        # group keys.
        self.clip_gradients = self._real("clip_gradients", clip_gradients)
        self.iter_size = self._iter_size(iter_size)
        self._iteration = 0
        super().__init__(params, defaults)

    # -- settings -----------------------------------------------------------------------------------

    @classmethod
    def _real(cls, name: str, value: object) -> float:
        try:
            if isinstance(value, (str, bytes, bool)):
                raise TypeError
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise LayerConfigError(f"{cls.caffe_type}: {name}={value!r} is not a number") from None

    @classmethod
    def _regularization(cls, value: object) -> str:
        if value not in _REGULARIZATION_TYPES:
            raise LayerConfigError(
                f"{cls.caffe_type}: regularization_type={value!r} is not allowed; Caffe knows 'L2' "
                "(diff += decay * w) and 'L1' (diff += decay * sign(w))"
            )
        return value  # type: ignore[return-value]

    @classmethod
    def _iter_size(cls, value: object) -> int:
        try:
            if isinstance(value, bool):
                raise TypeError
            n = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            n = 0
        if n < 1:
            raise LayerConfigError(
                f"{cls.caffe_type}: iter_size={value!r} is not allowed; give a positive int (the number of "
                "forward/backward passes whose gradients are summed per iteration)"
            )
        return n

    @property
    def iteration(self) -> int:
        """Caffe's ``iter_``: the number of updates made (set it when resuming)."""
        return self._iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        try:
            if isinstance(value, bool):
                raise TypeError
            n = operator.index(value)
        except TypeError:
            n = -1
        if n < 0:
            raise LayerConfigError(f"{self.caffe_type}: iteration={value!r} is not allowed; give an int >= 0")
        self._iteration = n

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("lr", "weight_decay", "lr_mult", "decay_mult"):
            if key in param_group and not isinstance(param_group[key], Tensor):
                param_group[key] = self._real(key, param_group[key])
        if "regularization_type" in param_group:
            self._regularization(param_group["regularization_type"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in ("names", "caffe_index"):
            if key in group and len(group[key]) != len(group["params"]):
                raise LayerConfigError(
                    f"{self.caffe_type}: param group key {key!r} has {len(group[key])} entries for "
                    f"{len(group['params'])} params"
                )

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"iteration"`` (Caffe's ``iter_``)."""
        out = super().state_dict()
        out["iteration"] = self._iteration
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        iteration = state_dict.pop("iteration", None)
        super().load_state_dict(state_dict)
        if iteration is not None:
            self.iteration = int(iteration)

    # -- Caffe's order and history ------------------------------------------------------------------

    def _entries(self) -> list[tuple[Tensor, dict[str, Any], str]]:
        """(parameter, its group, its name) in the net's learnable-blob order: by ``caffe_index``
        when every group has it, else groups in order and each group's params in order."""
        entries = []
        keys = []
        indexed = all("caffe_index" in g for g in self.param_groups)
        for group in self.param_groups:
            names = group.get("names")
            for j, p in enumerate(group["params"]):
                entries.append((p, group, str(names[j]) if names is not None else f"param {len(entries)}"))
                if indexed:
                    keys.append(int(group["caffe_index"][j]))
        if indexed:
            if len(set(keys)) != len(keys):
                raise LayerConfigError(
                    f"{self.caffe_type}: the param groups' caffe_index values repeat; each learnable blob needs "
                    "its own position (use caffenorm.optim.param_groups(net))"
                )
            entries = [entries[k] for k in sorted(range(len(entries)), key=keys.__getitem__)]
        return entries

    def _history(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        for key in self.history_keys:
            if key not in state:
                # SGDSolver::PreSolve: history blobs of the parameter's shape, zero-filled.
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def caffe_history(self) -> list[Tensor]:
        """The history blobs in Caffe's ``.solverstate`` order: for each history set (one for SGD,
        Nesterov, AdaGrad, RMSProp; two for AdaDelta and Adam, the second appended after the first
        as ``AdaDeltaPreSolve``/``AdamPreSolve`` do) one blob per learnable parameter in the net's
        order.  The state tensors themselves (clone them to keep a copy); zeros before any step."""
        entries = self._entries()
        return [self._history(p)[key] for key in self.history_keys for p, _, _ in entries]

    @torch.no_grad()
    def load_caffe_history(self, blobs: Sequence[Any]) -> None:
        """Copy ``blobs`` (tensors or array-likes, Caffe's ``.solverstate`` order, see
        :meth:`caffe_history`) into the history, checking count and shapes first (old 4-D
        ``(1, 1, 1, C)``-style shapes are accepted); nothing changes on error.

        Raises:
            BlobError: the wrong number of blobs, or a blob whose shape is not its parameter's.
        """
        entries = self._entries()
        sets = len(self.history_keys)
        expected = sets * len(entries)
        if len(blobs) != expected:
            per = f"{sets} per learnable blob x {len(entries)} blobs" if sets > 1 else "one per learnable blob"
            raise BlobError(f"{self.caffe_type}: got {len(blobs)} history blobs, expected {expected} ({per})")
        arrays = []
        for i, blob in enumerate(blobs):
            p, _, name = entries[i % len(entries)]
            value = blob.detach() if isinstance(blob, Tensor) else torch.as_tensor(np.asarray(blob))
            got, want = tuple(value.shape), tuple(p.shape)
            if got != want and not _legacy_match(got, want):
                raise BlobError(
                    f"{self.caffe_type}: history blob {i} ({self.history_keys[i // len(entries)]} of {name}) has "
                    f"shape {got}, expected {want}; was the solver state saved for a different net or solver type?"
                )
            if value.is_complex() or not (value.is_floating_point() or value.dtype in _INTEGRAL):
                raise BlobError(f"{self.caffe_type}: history blob {i} ({name}) has dtype {value.dtype}, expected reals")
            arrays.append(value.reshape(want))
        for i, value in enumerate(arrays):
            p = entries[i % len(entries)][0]
            self._history(p)[self.history_keys[i // len(entries)]].copy_(value)

    # -- the iteration ------------------------------------------------------------------------------

    def _grad(self, p: Tensor, group: dict[str, Any]) -> Tensor | None:
        if float(group["lr_mult"]) == 0 or p.grad is None:
            return None  # a zero diff (see the module docstring)
        if p.grad.is_sparse:
            raise RuntimeError(f"{self.caffe_type}: sparse gradients are not supported (Caffe's diffs are dense)")
        return p.grad

    def _clip_scale(self, grads: list[Tensor | None], params: list[Tensor]) -> Tensor:
        """``ClipGradients``: ``c / ||G||`` when the global norm exceeds ``c``, else exactly 1 (a
        tensor, so that no value is read back to the host)."""
        acc = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        device = params[0].device
        sumsq = torch.zeros((), dtype=acc, device=device)
        for g in grads:
            if g is None:
                continue
            v = g.reshape(-1)
            if v.dtype not in (torch.float32, torch.float64):
                v = v.float()
            # Blob::sumsq_diff (a dot product per blob), summed over the blobs in Dtype.
            sumsq = sumsq + torch.dot(v, v).to(device=device, dtype=acc)
        norm = torch.sqrt(sumsq)
        clip = torch.tensor(float(_dtype_scalar(acc)(self.clip_gradients)), dtype=acc, device=device)
        return torch.where(norm > clip, clip / norm, torch.ones((), dtype=acc, device=device))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Caffe iteration (``ApplyUpdate``) with the gradients in ``.grad``; then
        ``iteration += 1``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        entries = self._entries()
        if not entries:
            self._iteration += 1
            return loss
        grads = [self._grad(p, group) for p, group, _ in entries]
        scale = self._clip_scale(grads, [p for p, _, _ in entries]) if self.clip_gradients >= 0 else None
        for (p, group, _), grad in zip(entries, grads):
            R = _dtype_scalar(p.dtype)
            state = self._history(p)
            diff = torch.zeros_like(p, memory_format=torch.preserve_format) if grad is None else grad.clone()
            if diff.dtype != p.dtype:
                diff = diff.to(p.dtype)
            if scale is not None:
                diff.mul_(scale.to(device=diff.device, dtype=diff.dtype))
            # Normalize: caffe_scal(Dtype(1.) / iter_size): a multiplication, as Caffe does it.
            if self.iter_size > 1:
                diff.mul_(float(R(1.0) / R(self.iter_size)))
            # Regularize: local_decay = weight_decay * decay_mult, skipped when 0 (NaN counts as set).
            local_decay = R(float(group["weight_decay"])) * R(float(group["decay_mult"]))
            if local_decay:
                if group["regularization_type"] == "L2":
                    diff.add_(p, alpha=float(local_decay))
                else:
                    diff.add_(_caffe_sign(p), alpha=float(local_decay))
            rate = R(float(group["lr"]))
            local_rate = R(rate * R(float(group["lr_mult"])))
            update = self._update(p, diff, state, group, local_rate, R)
            # Net::Update -> Blob::Update: data = data - diff (caffe_axpy with -1).
            p.sub_(update)
        self._iteration += 1
        return loss

    def _update(
        self, p: Tensor, diff: Tensor, state: dict[str, Tensor], group: dict[str, Any], local_rate: np.floating, R: Real
    ) -> Tensor:
        """``ComputeUpdateValue``: the update from the regularised ``diff`` (which it may reuse)."""
        raise NotImplementedError


class SGD(CaffeOptimizer):
    r"""Caffe's ``SGD`` solver (``SGDSolver::ComputeUpdateValue``, ``sgd_solver.cpp``).

    .. math::
        h \leftarrow \mu h + \rho g,\qquad u = h,\qquad w \leftarrow w - u

    with :math:`\rho = r \cdot` ``lr_mult`` (the rate is inside the history: unlike
    ``torch.optim.SGD``, whose :math:`w \leftarrow w - r(\mu b + g)` rescales all past gradients
    when the rate changes).  History: one blob per learnable parameter (:math:`h`).

    Args:
        params: tensors or param groups (see :func:`caffenorm.optim.param_groups`).
        lr: the rate :math:`r` of the coming iteration (``GetLearningRate()``; a scheduler or the
            Solver sets it each iteration).
        momentum: :math:`\mu`.  Default: 0 (caffe.proto has no default).
        weight_decay, regularization_type, clip_gradients, iter_size: see the module docstring.
            Defaults: 0, ``"L2"``, -1 (off), 1.
    """

    caffe_type = "SGD"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            momentum=self._real("momentum", momentum),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        h = state["history"]
        # caffe_cpu_axpby(local_rate, diff, momentum, history): history = local_rate*diff + momentum*history
        h.mul_(float(R(float(group["momentum"])))).add_(diff, alpha=float(local_rate))
        return h  # caffe_copy(history -> diff)


class Nesterov(CaffeOptimizer):
    r"""Caffe's ``Nesterov`` solver (``NesterovSolver::ComputeUpdateValue``, ``nesterov_solver.cpp``).

    .. math::
        h' = \mu h + \rho g,\qquad u = (1 + \mu)\,h' - \mu h,\qquad h \leftarrow h'

    History: one blob per learnable parameter (:math:`h`).  Arguments as :class:`SGD`.
    """

    caffe_type = "Nesterov"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            momentum=self._real("momentum", momentum),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        h = state["history"]
        momentum = R(float(group["momentum"]))
        update = h.clone()  # "save history momentum for stepping back"
        h.mul_(float(momentum)).add_(diff, alpha=float(local_rate))
        # caffe_cpu_axpby(1 + momentum, history, -momentum, update)
        return update.mul_(float(-momentum)).add_(h, alpha=float(R(R(1.0) + momentum)))


class _NoMomentum(CaffeOptimizer):
    def _check_momentum(self, momentum: object) -> None:
        if self._real("momentum", momentum) != 0:
            # AdaGradSolver / RMSPropSolver::constructor_sanity_check: CHECK_EQ(0, momentum)
            raise LayerConfigError(
                f"{self.caffe_type}: momentum={momentum!r} is not allowed; Caffe's {self.caffe_type} solver "
                f"requires momentum 0 ('Momentum cannot be used with {self.caffe_type}.')"
            )


class AdaGrad(_NoMomentum):
    r"""Caffe's ``AdaGrad`` solver (``AdaGradSolver::ComputeUpdateValue``, ``adagrad_solver.cpp``).

    .. math::
        h \leftarrow h + g^2,\qquad u = \rho\,\frac{g}{\sqrt{h} + \delta}

    History: one blob per learnable parameter (:math:`h`, the sum of squared diffs).

    Args:
        delta: :math:`\delta`.  Default: 1e-8 (caffe.proto).
        momentum: must be 0, as Caffe checks (accepted so that every solver field can be passed).
        Others as :class:`SGD`.
    """

    caffe_type = "AdaGrad"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        delta: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        self._check_momentum(momentum)
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            delta=self._real("delta", delta),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        h = state["history"]
        h.add_(diff * diff)  # caffe_powx(diff, 2) then caffe_add(update, history)
        # caffe_powx(history, 0.5): the history is a sum of squares (>= +0), where pow(x, 0.5) == sqrt(x)
        update = torch.sqrt(h).add_(float(R(float(group["delta"]))))
        # caffe_div(diff, update), then caffe_cpu_axpby(local_rate, update, 0, diff)
        return diff.div_(update).mul_(float(local_rate))


class RMSProp(_NoMomentum):
    r"""Caffe's ``RMSProp`` solver (``RMSPropSolver::ComputeUpdateValue``, ``rmsprop_solver.cpp``).

    .. math::
        h \leftarrow (1 - d)\,g^2 + d\,h,\qquad u = \rho\,\frac{g}{\sqrt{h} + \delta}

    with :math:`d` = ``rms_decay``.  History: one blob per learnable parameter (:math:`h`).

    Args:
        rms_decay: :math:`d`, in [0, 1) as Caffe checks.  Default: 0.99 (caffe.proto).
        delta: :math:`\delta`.  Default: 1e-8 (caffe.proto).
        momentum: must be 0, as Caffe checks.
        Others as :class:`SGD`.
    """

    caffe_type = "RMSProp"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        rms_decay: float = 0.99,
        delta: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        self._check_momentum(momentum)
        decay = self._real("rms_decay", rms_decay)
        if not 0 <= decay < 1:
            raise LayerConfigError(
                f"{self.caffe_type}: rms_decay={rms_decay!r} is not allowed; Caffe requires 0 <= rms_decay < 1"
            )
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            rms_decay=decay,
            delta=self._real("delta", delta),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        h = state["history"]
        decay = R(float(group["rms_decay"]))
        # caffe_cpu_axpby(1 - rms_decay, diff^2, rms_decay, history)
        h.mul_(float(decay)).add_(diff * diff, alpha=float(R(R(1.0) - decay)))
        update = torch.sqrt(h).add_(float(R(float(group["delta"]))))  # history >= +0: sqrt == pow(., 0.5)
        return diff.div_(update).mul_(float(local_rate))


class AdaDelta(CaffeOptimizer):
    r"""Caffe's ``AdaDelta`` solver (``AdaDeltaSolver::ComputeUpdateValue``, ``adadelta_solver.cpp``).

    .. math::
        h_g \leftarrow (1-\mu)\,g^2 + \mu\,h_g,\qquad
        v = g\,\sqrt{\frac{h_u + \delta}{h_g + \delta}},\qquad
        h_u \leftarrow (1-\mu)\,v^2 + \mu\,h_u,\qquad u = \rho\,v

    Caffe's AdaDelta multiplies by the local rate too (``base_lr: 1.0`` in its examples).  History:
    two sets, :math:`h_g` for every learnable parameter, then :math:`h_u` for every one
    (``AdaDeltaPreSolve`` appends the second set to ``history_``).

    Args:
        momentum: :math:`\mu`.  Default: 0 (caffe.proto has no default; Caffe's example uses 0.95).
        delta: :math:`\delta`.  Default: 1e-8 (caffe.proto).
        Others as :class:`SGD`.
    """

    caffe_type = "AdaDelta"
    history_keys = ("history", "update_history")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.0,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            momentum=self._real("momentum", momentum),
            delta=self._real("delta", delta),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        h, h2 = state["history"], state["update_history"]
        momentum, delta = R(float(group["momentum"])), float(R(float(group["delta"])))
        one_minus = float(R(R(1.0) - momentum))
        h.mul_(float(momentum)).add_(diff * diff, alpha=one_minus)  # history of gradients
        update = torch.add(h2, delta)  # caffe_add(temp = delta, history of updates)
        update.div_(torch.add(h, delta)).sqrt_()  # caffe_div, then caffe_powx(., 0.5): the ratio is >= +0
        diff.mul_(update)  # caffe_mul(diff, update) -> diff
        h2.mul_(float(momentum)).add_(diff * diff, alpha=one_minus)  # history of updates
        return diff.mul_(float(local_rate))  # caffe_cpu_scale(local_rate, diff)


class Adam(CaffeOptimizer):
    r"""Caffe's ``Adam`` solver (``AdamSolver::ComputeUpdateValue``, ``adam_solver.cpp``).

    With :math:`t` = ``iteration + 1``, :math:`\beta_1` = ``momentum``, :math:`\beta_2` =
    ``momentum2``, :math:`\hat\epsilon` = ``delta``:

    .. math::
        m \leftarrow (1-\beta_1)\,g + \beta_1 m,\qquad v \leftarrow (1-\beta_2)\,g^2 + \beta_2 v,\\
        c = \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t},\qquad
        u = (\rho\,c)\,\frac{m}{\sqrt{v} + \hat\epsilon}

    (:math:`c` in float64, then rounded to the parameter's Caffe ``Dtype``; the bias correction
    scales the rate, so :math:`\hat\epsilon` is not corrected, unlike ``torch.optim.Adam``.)
    History: two sets, :math:`m` for every learnable parameter, then :math:`v` for every one
    (``AdamPreSolve`` appends the second set).

    Args:
        momentum: :math:`\beta_1`.  Default: 0 (caffe.proto has no default; Caffe's examples use 0.9).
        momentum2: :math:`\beta_2`.  Default: 0.999 (caffe.proto).
        delta: :math:`\hat\epsilon`.  Default: 1e-8 (caffe.proto).
        Others as :class:`SGD`.
    """

    caffe_type = "Adam"
    history_keys = ("m", "v")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.0,
        momentum2: float = 0.999,
        delta: float = 1e-8,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        super().__init__(
            params,
            lr,
            weight_decay=weight_decay,
            regularization_type=regularization_type,
            clip_gradients=clip_gradients,
            iter_size=iter_size,
            momentum=self._real("momentum", momentum),
            momentum2=self._real("momentum2", momentum2),
            delta=self._real("delta", delta),
        )

    def _update(self, p, diff, state, group, local_rate, R):  # type: ignore[no-untyped-def]
        m, v = state["m"], state["v"]
        beta1, beta2 = R(float(group["momentum"])), R(float(group["momentum2"]))
        t = self._iteration + 1
        # const Dtype correction = std::sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1.) - pow(beta1, t)):
        # pow(Dtype, int) is computed in double; the quotient is rounded to Dtype.
        with np.errstate(all="ignore"):
            numerator = np.sqrt(np.float64(1.0 - c_pow(float(beta2), float(t))))
            correction = R(numerator / np.float64(1.0 - c_pow(float(beta1), float(t))))
            scale = R(local_rate * correction)
        m.mul_(float(beta1)).add_(diff, alpha=float(R(R(1.0) - beta1)))
        v.mul_(float(beta2)).add_(diff * diff, alpha=float(R(R(1.0) - beta2)))
        update = torch.sqrt(v).add_(float(R(float(group["delta"]))))  # v >= +0: sqrt == pow(., 0.5)
        return torch.div(m, update, out=update).mul_(float(scale))  # caffe_div(m, t), caffe_cpu_scale
