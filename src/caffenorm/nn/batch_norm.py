"""The ``BatchNorm`` module: Caffe's three blobs as buffers; the math is in the functional."""

from __future__ import annotations

import torch
from torch import Tensor

from caffenorm.errors import LayerConfigError
from caffenorm.functional._checks import check_real
from caffenorm.functional.batch_norm import batch_norm
from caffenorm.nn._base import CaffeLayer
from caffenorm.nn.scale import Scale

__all__ = ["BatchNorm", "BatchNormScale"]

torch.fx.wrap("batch_norm")  # one node under torch.fx tracing


class BatchNorm(CaffeLayer):
    r"""Caffe's BatchNorm (``batch_norm_layer.cpp``): normalisation only, no affine term.

    Caffe keeps three blobs: a running *sum* of means, a running *sum* of variances and a scale
    factor :math:`s`.  The statistics are the sums divided by :math:`s`, and :math:`s = 0` means
    zero statistics (:math:`y = x/\sqrt{\epsilon}`), never a division by zero:

    .. math::
        f = \begin{cases}0 & s = 0\\ 1/s & \text{otherwise}\end{cases},\quad
        y = \frac{x - f\,b_0}{\sqrt{f\,b_1 + \epsilon}}

    With batch statistics the input is normalised by the batch mean and the *biased* batch
    variance (eps inside the sqrt), and the blobs are updated as Caffe does, with
    :math:`\lambda` = ``moving_average_fraction`` and :math:`m` = values per channel:

    .. math::
        s \leftarrow \lambda s + 1,\quad b_0 \leftarrow \lambda b_0 + \mu,\quad
        b_1 \leftarrow \lambda b_1 + \tfrac{m}{m-1}\sigma^2 \;(\text{no factor when } m = 1)

    This is a bias-corrected moving average, unlike torch's ``momentum`` rule, so converting to
    ``nn.BatchNorm`` running stats is exact only for inference.  Follow with :class:`Scale`
    (``bias_term=True``) for the affine part, as Caffe models do.

    Args:
        channels: number of channels ``C`` (dimension 1 of the input).
        use_global_stats: ``True`` normalises with the stored statistics, ``False`` with batch
            statistics; ``None`` follows ``module.training`` like Caffe follows the phase (train:
            batch statistics, eval: stored).  Default: None
        moving_average_fraction: :math:`\lambda`.  Default: 0.999
        eps: added to the variance inside the sqrt, must be >= 0.  Default: 1e-5

    Shape:
        - Input: :math:`(N, C, *)`, at least 2-D (Caffe's layer takes any such blob)
        - Output: same shape as the input

    Blobs (Caffe order): ``mean_sum`` :math:`(C)`, ``var_sum`` :math:`(C)`, ``scale_factor`` :math:`(1)`,
    all zero-initialised as in Caffe.
    """

    caffe_type = "BatchNorm"
    blob_attrs = ("mean_sum", "var_sum", "scale_factor")
    same_shape = True
    mean_sum: Tensor
    var_sum: Tensor
    scale_factor: Tensor

    def __init__(
        self,
        channels: int,
        use_global_stats: bool | None = None,
        moving_average_fraction: float = 0.999,
        eps: float = 1e-5,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise LayerConfigError(f"BatchNorm: channels={channels!r} must be a positive integer")
        if use_global_stats is not None and not isinstance(use_global_stats, bool):
            raise LayerConfigError(f"BatchNorm: use_global_stats={use_global_stats!r} must be True, False or None")
        self.channels = channels
        self.use_global_stats = use_global_stats
        self.moving_average_fraction = check_real("BatchNorm", "moving_average_fraction", moving_average_fraction)
        self.eps = check_real("BatchNorm", "eps", eps, minimum=0.0)
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("mean_sum", torch.zeros(channels, **kw))
        self.register_buffer("var_sum", torch.zeros(channels, **kw))
        self.register_buffer("scale_factor", torch.zeros(1, **kw))

    def uses_global_stats(self) -> bool:
        """Whether the next forward normalises with the stored statistics."""
        return (not self.training) if self.use_global_stats is None else self.use_global_stats

    def forward(self, input: Tensor) -> Tensor:
        return batch_norm(
            input,
            self.mean_sum,
            self.var_sum,
            self.scale_factor,
            self.uses_global_stats(),
            self.moving_average_fraction,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, use_global_stats={self.use_global_stats}, "
            f"moving_average_fraction={self.moving_average_fraction}, eps={self.eps}"
        )


class BatchNormScale(CaffeLayer):
    r"""A :class:`BatchNorm` and the per-channel :class:`Scale` after it, run as one kernel.

    Caffe models put ``Scale {bias_term: true}`` after every BatchNorm, usually in place.  As two
    modules the pair costs two extra full-size tensors (the normalised input and its gradient);
    fused, forward and backward cost what ``nn.BatchNorm2d(affine=True)`` costs.  The result is
    the same function (Caffe's blob updates included); only the intermediate normalised tensor,
    which an in-place chain overwrites in Caffe too, is never materialised.

    The two modules are kept as submodules and share their tensors, so ``batch_norm.mean_sum``,
    ``scale.weight`` etc. are the very blobs of the original layers.

    Args:
        batch_norm: the BatchNorm layer.
        scale: a Scale over the channel axis (``axis=1``, ``num_axes=1``, shape ``(C,)``) with a
            learned scale.

    Blobs: ``caffe_blobs()`` is the BatchNorm's three blobs followed by the Scale's.
    """

    caffe_type = "BatchNorm+Scale"
    same_shape = True

    def __init__(self, batch_norm: BatchNorm, scale: Scale) -> None:
        super().__init__()
        channels = batch_norm.channels
        if scale.scale_from_input or scale.axis != 1 or scale.shape != (channels,):
            raise LayerConfigError(
                f"BatchNormScale: cannot fuse {scale!r} into {batch_norm!r}; the Scale must be learned, "
                f"span the channel axis (axis=1, num_axes=1) and have shape ({channels},)"
            )
        self.batch_norm = batch_norm
        self.scale = scale

    def forward(self, input: Tensor) -> Tensor:
        bn, scale = self.batch_norm, self.scale
        return batch_norm(
            input,
            bn.mean_sum,
            bn.var_sum,
            bn.scale_factor,
            bn.uses_global_stats(),
            bn.moving_average_fraction,
            bn.eps,
            scale.weight,
            scale.bias,
        )

    def hooked(self) -> bool:
        """Whether either layer has forward hooks (which the fused kernel would bypass)."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in (self.batch_norm, self.scale))

    def caffe_blobs(self) -> list[Tensor]:
        return self.batch_norm.caffe_blobs() + self.scale.caffe_blobs()

    def _blob_names(self) -> list[str]:
        return self.batch_norm._blob_names() + [f"scale.{n}" for n in self.scale._blob_names()]
