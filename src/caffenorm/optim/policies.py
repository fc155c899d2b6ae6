r"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``, ``src/caffe/solvers/sgd_solver.cpp``).

With :math:`i` the iteration being computed (Caffe's ``iter_``, from 0) and :math:`b` = ``base_lr``:

=============  ======================================================================================
``fixed``      :math:`b`
``step``       :math:`b\,\gamma^{\lfloor i / \text{stepsize}\rfloor}`
``exp``        :math:`b\,\gamma^{i}`
``inv``        :math:`b\,(1 + \gamma i)^{-\text{power}}` (Caffe forms :math:`\gamma i` in float32: a
               proto ``float`` times an ``int``)
``multistep``  :math:`b\,\gamma^{s(i)}`, :math:`s` = Caffe's ``current_step_``, which advances by at
               most one per iteration, whenever ``iter >= stepvalue[current_step]``
``poly``       :math:`b\,(1 - i/\text{max\_iter})^{\text{power}}`
``sigmoid``    :math:`b\,/\,(1 + e^{-\gamma (i - \text{stepsize})})`
=============  ======================================================================================

Everything else is float64, as in Caffe's double solver (its float solver rounds the result to
float32, and takes inv's power in float).  Caffe keeps ``base_lr``, ``gamma`` and ``power`` as proto
``float`` s: pass the values protobuf returns for a ``solver.prototxt`` (already float32 values) for
Caffe's rates bit for bit.
Powers, exponentials and divisions follow C (IEEE) semantics: a negative base to a fractional power
is NaN, ``1/0`` is inf, never a Python exception.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from caffenorm.errors import LayerConfigError

__all__ = ["POLICIES", "CaffeLRLambda", "c_exp", "c_pow", "caffe_lr_lambda", "current_step", "learning_rate"]

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_WHERE = "SolverParameter"


def _int(name: str, value: object, policy: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise LayerConfigError(
            f"{_WHERE}: {name}={value!r} is not allowed for lr_policy {policy!r}; Caffe's {name} is an int32"
        ) from None


def _real(name: str, value: object, policy: str) -> float:
    if value is None:
        raise LayerConfigError(
            f"{_WHERE}: lr_policy {policy!r} needs {name}; give {name}= (Caffe reads it from the solver.prototxt)"
        )
    try:
        if isinstance(value, (str, bytes, bool)):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LayerConfigError(f"{_WHERE}: {name}={value!r} is not a number (lr_policy {policy!r})") from None


def _gamma(gamma: object, policy: str) -> float:
    g = _real("gamma", gamma, policy)
    if not g >= 0:  # CHECK_GE(gamma, 0); NaN fails it too
        raise LayerConfigError(
            f"{_WHERE}: gamma={g!r} is not allowed for lr_policy {policy!r}; Caffe requires gamma >= 0"
        )
    return g


def _stepsize(stepsize: object, policy: str) -> int:
    if stepsize is None:
        raise LayerConfigError(f"{_WHERE}: lr_policy {policy!r} needs stepsize; give stepsize= (a positive int)")
    s = _int("stepsize", stepsize, policy)
    if s <= 0:  # CHECK_GT(stepsize, 0)
        raise LayerConfigError(
            f"{_WHERE}: stepsize={s} is not allowed for lr_policy {policy!r}; Caffe requires stepsize > 0"
        )
    return s


def _stepvalues(stepvalue: object, policy: str) -> tuple[int, ...]:
    try:
        values = tuple(stepvalue)  # type: ignore[call-overload]
    except TypeError:
        values = (stepvalue,)
    if not values:
        raise LayerConfigError(
            f"{_WHERE}: lr_policy 'multistep' needs stepvalue (the iterations at which the rate is multiplied "
            "by gamma), got none; give stepvalue=[...]"
        )
    return tuple(_int("stepvalue", v, policy) for v in values)


@dataclass
class CaffeLRLambda:
    """A policy as the multiplier of ``base_lr``: ``lr(i) = base_lr * policy(i)``, exactly the
    product Caffe forms.  For :class:`torch.optim.lr_scheduler.LambdaLR` (a callable object, so
    ``LambdaLR.state_dict()`` saves it); build it with :func:`caffe_lr_lambda`."""

    lr_policy: str = "fixed"
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    max_iter: int = 0
    # The iterations at which multistep's current_step_ advances (see _multistep_changes).
    _changes: tuple[int, ...] = field(default=(), repr=False)

    def __call__(self, iteration: int) -> float:
        return _factor(self, _iteration(iteration))

    def current_step(self, iteration: int) -> int:
        """Caffe's ``current_step_`` after ``GetLearningRate`` ran at ``iteration``."""
        i = _iteration(iteration)
        if self.lr_policy == "step":
            return i // self.stepsize
        if self.lr_policy == "multistep":
            return sum(1 for t in self._changes if t <= i)
        return 0


def _iteration(iteration: object) -> int:
    try:
        if isinstance(iteration, bool):
            raise TypeError
        i = operator.index(iteration)  # type: ignore[arg-type]
    except TypeError:
        raise LayerConfigError(f"{_WHERE}: iteration={iteration!r} is not allowed; give an int >= 0") from None
    if i < 0:
        raise LayerConfigError(f"{_WHERE}: iteration={i} is not allowed; Caffe's iterations count from 0")
    return i


def _multistep_changes(stepvalue: Sequence[int]) -> tuple[int, ...]:
    """The iterations at which Caffe's ``current_step_`` increments when ``GetLearningRate`` runs
    once per iteration from 0: ``if (current_step_ < n && iter_ >= stepvalue[current_step_])
    current_step_++`` -- an ``if``, not a ``while``, so it moves at most once per iteration
    (repeated or decreasing stepvalues take one iteration each)."""
    changes = []
    last = -1
    for value in stepvalue:
        last = max(last + 1, value)
        changes.append(last)
    return tuple(changes)


def c_pow(x: float, y: float) -> float:
    """C's ``pow`` on doubles: ``math.pow`` (the C library's), with C's results where Python raises
    (a negative base to a fractional power is NaN, ``0 ** -1`` is inf, overflow is inf)."""
    try:
        return math.pow(x, y)
    except (ValueError, OverflowError):
        with np.errstate(all="ignore"):
            return float(np.power(np.float64(x), np.float64(y)))


def c_exp(x: float) -> float:
    """C's ``exp`` on doubles (inf on overflow)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _factor(policy: CaffeLRLambda, i: int) -> float:
    """The factor Caffe multiplies ``base_lr()`` by at iteration ``i`` (float64, C semantics)."""
    kind = policy.lr_policy
    if kind == "fixed":
        return 1.0
    if kind == "step":
        # current_step_ = iter_ / stepsize (ints); pow(gamma, current_step_)
        return c_pow(policy.gamma, float(i // policy.stepsize))
    if kind == "exp":
        return c_pow(policy.gamma, float(i))
    if kind == "inv":
        # pow(Dtype(1) + gamma() * iter_, -power()): gamma() is a float and iter_ an int, so their
        # product is a float (float32), then widened.
        with np.errstate(all="ignore"):
            product = float(np.float32(policy.gamma) * np.float32(i))
        return c_pow(1.0 + product, -policy.power)
    if kind == "multistep":
        step = sum(1 for t in policy._changes if t <= i)
        return c_pow(policy.gamma, float(step))
    if kind == "poly":
        return c_pow(1.0 - float(i) / float(policy.max_iter), policy.power)
    if kind == "sigmoid":
        return 1.0 / (1.0 + c_exp(-policy.gamma * (float(i) - float(policy.stepsize))))
    raise AssertionError(kind)  # validated in caffe_lr_lambda


def caffe_lr_lambda(
    *,
    lr_policy: str = "fixed",
    gamma: float | None = None,
    power: float | None = None,
    stepsize: int | None = None,
    stepvalue: Sequence[int] = (),
    max_iter: int | None = None,
) -> CaffeLRLambda:
    """A Caffe policy as a multiplier of ``base_lr``, for :class:`torch.optim.lr_scheduler.LambdaLR`.

    ``LambdaLR(optimizer, caffe_lr_lambda(lr_policy="step", gamma=0.1, stepsize=1000))`` with one
    ``scheduler.step()`` after each ``optimizer.step()`` gives each iteration Caffe's rate
    (``initial_lr * factor``, the product Caffe forms; see the module docstring).  The fields are
    those of ``SolverParameter``; only those the policy reads are required (step: gamma, stepsize;
    exp: gamma; inv: gamma, power; multistep: gamma, stepvalue; poly: power, max_iter; sigmoid:
    gamma, stepsize).

    Raises:
        LayerConfigError: an unknown policy, a missing field, or a value Caffe refuses (stepsize <= 0
            for step/sigmoid, gamma < 0, multistep without stepvalue, max_iter <= 0 for poly).
    """
    if not isinstance(lr_policy, str) or lr_policy not in POLICIES:
        raise LayerConfigError(
            f"{_WHERE}: lr_policy={lr_policy!r} is not a Caffe learning-rate policy; allowed: {', '.join(POLICIES)}"
        )
    out = CaffeLRLambda(lr_policy)
    if lr_policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        out.gamma = _gamma(gamma, lr_policy)
    if lr_policy in ("inv", "poly"):
        out.power = _real("power", power, lr_policy)
    if lr_policy in ("step", "sigmoid"):
        out.stepsize = _stepsize(stepsize, lr_policy)
    if lr_policy == "multistep":
        out.stepvalue = _stepvalues(stepvalue, lr_policy)
        out._changes = _multistep_changes(out.stepvalue)
    if lr_policy == "poly":
        if max_iter is None:
            raise LayerConfigError(f"{_WHERE}: lr_policy 'poly' needs max_iter; give max_iter= (a positive int)")
        m = _int("max_iter", max_iter, lr_policy)
        if m <= 0:
            # Caffe divides by max_iter: 0 gives NaN/inf rates (its solver never runs an iteration then).
            raise LayerConfigError(
                f"{_WHERE}: max_iter={m} is not allowed for lr_policy 'poly'; the rate decays to 0 at max_iter, "
                "which must be > 0"
            )
        out.max_iter = m
    return out


def learning_rate(
    iteration: int,
    *,
    base_lr: float,
    lr_policy: str = "fixed",
    gamma: float | None = None,
    power: float | None = None,
    stepsize: int | None = None,
    stepvalue: Sequence[int] = (),
    max_iter: int | None = None,
) -> float:
    """Caffe's learning rate at ``iteration`` (``SGDSolver::GetLearningRate``), in float64.

    ``base_lr * caffe_lr_lambda(...)(iteration)``: see the module docstring for the formulas and
    :func:`caffe_lr_lambda` for the fields and errors.  ``multistep`` reproduces Caffe's stateful
    ``current_step_`` as it evolves when the rate is computed once per iteration from 0 (which is
    also what a resumed Caffe solver continues from).
    """
    policy = caffe_lr_lambda(
        lr_policy=lr_policy, gamma=gamma, power=power, stepsize=stepsize, stepvalue=stepvalue, max_iter=max_iter
    )
    i = _iteration(iteration)
    base = _real("base_lr", base_lr, lr_policy)
    return base * _factor(policy, i)


def current_step(
    iteration: int, *, lr_policy: str = "fixed", stepsize: int | None = None, stepvalue: Sequence[int] = ()
) -> int:
    """Caffe's ``current_step_`` right after ``GetLearningRate`` ran at ``iteration``: ``iter /
    stepsize`` for step, the multistep counter, 0 for the other policies.

    A ``.solverstate`` written at ``iter = n`` (after ``n`` updates) holds ``current_step(n - 1)``
    (0 when ``n == 0``).
    """
    if lr_policy == "step":
        return _iteration(iteration) // _stepsize(stepsize, lr_policy)
    if lr_policy == "multistep":
        return sum(1 for t in _multistep_changes(_stepvalues(stepvalue, lr_policy)) if t <= _iteration(iteration))
    if lr_policy not in POLICIES:
        raise LayerConfigError(
            f"{_WHERE}: lr_policy={lr_policy!r} is not a Caffe learning-rate policy; allowed: {', '.join(POLICIES)}"
        )
    _iteration(iteration)
    return 0
