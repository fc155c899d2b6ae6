"""The ``BatchNorm`` module: Caffe's three blobs as buffers; the math is in the functional."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from caffenorm._tracing import is_fx_proxy, is_tracing
from caffenorm.errors import LayerConfigError
from caffenorm.functional._checks import check_real, compute_dtype
from caffenorm.functional.batch_norm import batch_norm, global_stats
from caffenorm.nn._base import CaffeLayer, setting_repr
from caffenorm.nn.scale import Scale

__all__ = ["BatchNorm", "BatchNormScale"]

torch.fx.wrap("batch_norm")  # one node under torch.fx tracing

# Blob dtypes the statistics cache can checksum through numpy (BatchNorm's blobs are float32 or
# float64: they stay float32 under half()).
_CHECKSUMMED = (torch.float32, torch.float64)


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

    Precision: the blobs are *sums* (res10's first variance sum is 3.6e6, beyond float16's 65504),
    so ``module.half()``, ``module.to(torch.bfloat16)`` and autocast keep them in float32 and the
    statistics are computed in float32; the output has the input's dtype.  In evaluation on the CPU
    the mean and variance derived from the blobs are cached until the blobs' contents change.
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

    def global_stats(self, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        """The stored mean and variance in ``dtype``, derived from the blobs once per change of
        their contents, or None where the functional should derive them itself.

        The cache is keyed on a checksum of the blobs' bytes, so no way of writing them (in
        place, ``.data``, a numpy view, ``load_state_dict``) can leave it stale; on the CPU the
        checksum costs less than the derivation (~3 us against ~10 us per layer).  On other
        devices reading the bytes would synchronise with the device, so the statistics are
        derived at each forward there; so they are while a tracer records the forward, so that
        the derivation is part of the traced program rather than a constant.
        """
        blobs = (self.mean_sum, self.var_sum, self.scale_factor)
        if is_tracing() or any(t.device.type != "cpu" or t.dtype not in _CHECKSUMMED for t in blobs):
            return None
        key = (dtype, torch.is_inference_mode_enabled(), *((t.dtype, zlib.crc32(t.detach().numpy())) for t in blobs))
        cached = self.__dict__.get("_stats_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, global_stats(*blobs, dtype))
            self.__dict__["_stats_cache"] = cached
        return cached[1]  # type: ignore[no-any-return]

    def _stats_for(self, input: Tensor) -> tuple[Tensor, Tensor] | None:
        """The cached statistics for ``input``'s compute dtype (None under torch.fx, where the
        functional is one opaque node)."""
        return None if is_fx_proxy(input) else self.global_stats(compute_dtype(input))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """Keep the blobs float32 when the module is converted to float16/bfloat16: they are sums
        that overflow float16.  Device moves and float64 conversions apply as usual."""
        before = {name: self._buffers[name] for name in self.blob_attrs}
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype in (torch.float16, torch.bfloat16):
                self._buffers[name] = old.to(device=new.device, dtype=torch.float32)
        self.__dict__.pop("_stats_cache", None)
        return out

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        """``load_state_dict(..., assign=True)`` puts the given tensors in place: keep the blobs
        float32 there too."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for name in self.blob_attrs:
            blob = self._buffers.get(name)
            if blob is not None and blob.dtype in (torch.float16, torch.bfloat16):
                self._buffers[name] = blob.float()

    def forward(self, input: Tensor) -> Tensor:
        use_global = self.uses_global_stats()
        return batch_norm(
            input,
            self.mean_sum,
            self.var_sum,
            self.scale_factor,
            use_global,
            self.moving_average_fraction,
            self.eps,
            stats=self._stats_for(input) if use_global else None,
        )

    def caffe_settings(self) -> dict[str, Any]:
        return {
            "use_global_stats": self.use_global_stats,
            "moving_average_fraction": self.moving_average_fraction,
            "eps": self.eps,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, use_global_stats={self.use_global_stats}, "
            f"moving_average_fraction={setting_repr(self.moving_average_fraction)}, eps={setting_repr(self.eps)}"
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
        if self.hooked():
            return scale(bn(input))  # the fused kernel would bypass the layers' own hooks
        use_global = bn.uses_global_stats()
        return batch_norm(
            input,
            bn.mean_sum,
            bn.var_sum,
            bn.scale_factor,
            use_global,
            bn.moving_average_fraction,
            bn.eps,
            scale.weight,
            scale.bias,
            stats=bn._stats_for(input) if use_global else None,
        )

    def hooked(self) -> bool:
        """Whether either layer has forward hooks (which the fused kernel would bypass)."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in (self.batch_norm, self.scale))

    def caffe_blobs(self) -> list[Tensor]:
        return self.batch_norm.caffe_blobs() + self.scale.caffe_blobs()

    def _blob_names(self) -> list[str]:
        return self.batch_norm._blob_names() + [f"scale.{n}" for n in self.scale._blob_names()]
