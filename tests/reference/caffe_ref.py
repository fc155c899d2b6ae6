"""Deliberately simple float64 numpy reference for Caffe's normalization layers.

This module is the independent test oracle for ``caffenorm``.  It is written
straight from the formulas in ``shared/reference/semantics.md`` (sections 1.1,
2.1, 2.2, 3.1, 4), which in turn cite the Caffe sources:

* LRN            -- BVLC/caffe src/caffe/layers/lrn_layer.cpp (+ pooling_layer.cpp,
                    power_layer.cpp for the WITHIN_CHANNEL sub-layer chain)
* BatchNorm      -- BVLC/caffe src/caffe/layers/batch_norm_layer.cpp
* Scale / Bias   -- BVLC/caffe src/caffe/layers/scale_layer.cpp, bias_layer.cpp
* Normalize      -- weiliu89/caffe (branch ssd) src/caffe/layers/normalize_layer.cpp

Design rules: clarity over speed.  Every input is cast to float64 on entry,
every reduction is an explicit Python loop over the window / channel / position,
and there is no torch import.  Shapes the reference does not define raise a
plain ``ValueError``.
"""

import itertools
import math

import numpy as np

__all__ = [
    "lrn",
    "lrn_backward",
    "batch_norm",
    "batch_norm_backward",
    "scale",
    "scale_backward",
    "bias",
    "bias_backward",
    "normalize",
    "normalize_backward",
    "normalize_backward_caffe",
]

ACROSS_CHANNELS = "ACROSS_CHANNELS"
WITHIN_CHANNEL = "WITHIN_CHANNEL"


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _f64(a, name):
    """Cast to a float64 ndarray (always a fresh copy)."""
    try:
        return np.array(a, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise ValueError(f"{name}: cannot convert to float64 array") from exc


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_b} shape {b.shape} != {name_a} shape {a.shape}")


# --------------------------------------------------------------------------
# LRN  (BVLC lrn_layer.cpp)
# --------------------------------------------------------------------------

def _lrn_check(x, local_size, norm_region):
    if x.ndim != 4:
        raise ValueError(f"LRN needs a 4-D (N, C, H, W) input, got ndim={x.ndim}")
    if not _is_int(local_size) or local_size < 1:
        raise ValueError(f"local_size must be a positive int, got {local_size!r}")
    if local_size % 2 != 1:
        # lrn_layer.cpp LayerSetUp: CHECK_EQ(size_ % 2, 1)
        raise ValueError(f"LRN only supports odd local_size, got {local_size}")
    if norm_region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
        raise ValueError(f"unknown norm_region {norm_region!r}")


def _lrn_window(j, norm_region, p, shape):
    """List of input indices (n, c, h, w) in the (clipped) window of output j.

    ACROSS: channels max(0, c-p) .. min(C-1, c+p) at the same (n, h, w).
    WITHIN: the (2p+1) x (2p+1) spatial square around (h, w) in the same
            (n, c) plane, only the in-image positions (padding contributes 0).
    """
    _, C, H, W = shape
    n, c, h, w = j
    out = []
    if norm_region == ACROSS_CHANNELS:
        for cc in range(max(0, c - p), min(C - 1, c + p) + 1):
            out.append((n, cc, h, w))
    else:
        for hh in range(max(0, h - p), min(H - 1, h + p) + 1):
            for ww in range(max(0, w - p), min(W - 1, w + p) + 1):
                out.append((n, c, hh, ww))
    return out


def _lrn_scale(x, local_size, alpha, k, norm_region):
    """The per-element LRN denominator base ("scale_" in Caffe), before ^-beta.

    ACROSS: scale_j = k + alpha/n   * sum_{i in W(j)} x_i^2
    WITHIN: scale_j = 1 + alpha/n^2 * sum_{i in W(j)} x_i^2   (k ignored)
    """
    p = (local_size - 1) // 2
    if norm_region == ACROSS_CHANNELS:
        base, coeff = float(k), alpha / local_size
    else:
        # WITHIN: Power(power=-beta, scale=alpha, shift=1) after an AVE pool
        # whose divisor is always n*n (pool_size computed before clipping).
        base, coeff = 1.0, alpha / (local_size * local_size)
    s = np.empty_like(x)
    for j in itertools.product(*(range(d) for d in x.shape)):
        acc = 0.0
        for i in _lrn_window(j, norm_region, p, x.shape):
            acc += x[i] * x[i]
        s[j] = base + coeff * acc
    return s


def lrn(x, local_size=5, alpha=1.0, beta=0.75, k=1.0, norm_region=ACROSS_CHANNELS):
    """Caffe LRN forward (CAFFE engine, CPU).

    Formula (p = (n-1)/2, n = local_size, odd only):

    * ACROSS_CHANNELS:
      ``y[n,c,h,w] = x[n,c,h,w] * (k + alpha/n * sum_{c'=max(0,c-p)}^{min(C-1,c+p)} x[n,c',h,w]^2) ** -beta``
    * WITHIN_CHANNEL:
      ``y[n,c,h,w] = x[n,c,h,w] * (1 + alpha/n^2 * sum_{|dh|<=p,|dw|<=p, in image} x[n,c,h+dh,w+dw]^2) ** -beta``
      -- k is ignored (shift hard-coded to 1) and the divisor is always n^2,
      padding included.

    Follows BVLC/caffe src/caffe/layers/lrn_layer.cpp ``CrossChannelForward_cpu``
    (ACROSS) and the Split/Power/Pooling(AVE, pad=p)/Power(shift=1)/Eltwise
    chain built in ``LayerSetUp`` (WITHIN), with pooling_layer.cpp's
    pool_size = n*n.  Input must be 4-D.
    """
    x = _f64(x, "x")
    _lrn_check(x, local_size, norm_region)
    alpha, beta, k = float(alpha), float(beta), float(k)
    s = _lrn_scale(x, local_size, alpha, k, norm_region)
    y = np.empty_like(x)
    for j in itertools.product(*(range(d) for d in x.shape)):
        y[j] = x[j] * s[j] ** (-beta)
    return y


def lrn_backward(x, dy, local_size=5, alpha=1.0, beta=0.75, k=1.0,
                 norm_region=ACROSS_CHANNELS):
    """Exact gradient of :func:`lrn` w.r.t. x, given the upstream gradient dy.

    With s_j the LRN scale of output j and c = alpha/n (ACROSS) or alpha/n^2
    (WITHIN):

        y_j = x_j * s_j^-beta,   s_j = base + c * sum_{i in W(j)} x_i^2
        dy_j/dx_i = [i == j] * s_j^-beta
                    - 2 * beta * c * x_j * x_i * s_j^(-beta-1) * [i in W(j)]
        dx_i = sum_{j : i in W(j)} dy_j * dy_j/dx_i

    The sum runs over every output j whose (clipped) window contains i; it is
    written out as loops.  Caffe's ``CrossChannelBackward_cpu`` computes the
    same quantity as ``dx_i = g_i s_i^-beta - (2 alpha beta/n) x_i
    sum_{j in W(i)} g_j y_j / s_j``; the WITHIN backward is the chained
    backward of the sub-layers, i.e. also the exact gradient.
    """
    x = _f64(x, "x")
    dy = _f64(dy, "dy")
    _lrn_check(x, local_size, norm_region)
    _same_shape(x, dy, "x", "dy")
    alpha, beta, k = float(alpha), float(beta), float(k)
    p = (local_size - 1) // 2
    if norm_region == ACROSS_CHANNELS:
        c_coef = alpha / local_size
    else:
        c_coef = alpha / (local_size * local_size)
    s = _lrn_scale(x, local_size, alpha, k, norm_region)
    N, C, H, W = x.shape

    dx = np.zeros_like(x)
    for i in itertools.product(range(N), range(C), range(H), range(W)):
        n_i, c_i, h_i, w_i = i
        # candidate outputs j: every element that could share a window with i
        if norm_region == ACROSS_CHANNELS:
            cands = [(n_i, cj, h_i, w_i) for cj in range(C)]
        else:
            cands = [(n_i, c_i, hj, wj) for hj in range(H) for wj in range(W)]
        acc = 0.0
        for j in cands:
            if i not in _lrn_window(j, norm_region, p, x.shape):
                continue
            d = 0.0
            if j == i:
                d += s[j] ** (-beta)
            d -= 2.0 * beta * c_coef * x[j] * x[i] * s[j] ** (-beta - 1.0)
            acc += dy[j] * d
        dx[i] = acc
    return dx


# --------------------------------------------------------------------------
# BatchNorm  (BVLC batch_norm_layer.cpp)
# --------------------------------------------------------------------------

def _bn_check(x, mean_sum, var_sum, factor):
    if x.ndim < 2:
        raise ValueError(f"BatchNorm needs ndim >= 2 (N, C, ...), got ndim={x.ndim}")
    if x.size == 0:
        raise ValueError("BatchNorm of an empty input is not defined")
    C = x.shape[1]
    if mean_sum.shape != (C,):
        raise ValueError(f"mean_sum must have shape ({C},), got {mean_sum.shape}")
    if var_sum.shape != (C,):
        raise ValueError(f"var_sum must have shape ({C},), got {var_sum.shape}")
    if factor.shape not in ((), (1,)):
        raise ValueError(f"factor must be a scalar or shape (1,), got {factor.shape}")
    return float(factor.reshape(()))


def _bn_channel_indices(shape, c):
    """All indices of x (N, C, *spatial) that belong to channel c."""
    ranges = [range(shape[0]), [c]] + [range(d) for d in shape[2:]]
    return list(itertools.product(*ranges))


def _bn_global_stats(mean_sum, var_sum, s):
    """f = 0 if s == 0 else 1/s; mu = f*mean_sum; var = f*var_sum."""
    f = 0.0 if s == 0 else 1.0 / s
    return f * mean_sum, f * var_sum


def _bn_batch_stats(x):
    """Per-channel batch mean and BIASED variance over N x spatial."""
    C = x.shape[1]
    mean = np.zeros(C)
    var = np.zeros(C)
    for c in range(C):
        idx = _bn_channel_indices(x.shape, c)
        m = len(idx)
        acc = 0.0
        for i in idx:
            acc += x[i]
        mean[c] = acc / m
        acc = 0.0
        for i in idx:
            acc += (x[i] - mean[c]) ** 2
        var[c] = acc / m
    return mean, var


def batch_norm(x, mean_sum, var_sum, factor, *, use_global_stats,
               moving_average_fraction=0.999, eps=1e-5):
    """Caffe BatchNorm forward (no affine term) -> (y, new_mean_sum, new_var_sum, new_factor).

    Blobs: mean_sum = blobs_[0] (C,), var_sum = blobs_[1] (C,), factor = blobs_[2].

    * use_global_stats=True:  f = 0 if factor == 0 else 1/factor,
      mu = f*mean_sum, var = f*var_sum, ``y = (x - mu) / sqrt(var + eps)``.
      Blobs are returned unchanged (as float64 copies, factor as shape (1,)).
      factor == 0 gives mu = var = 0 and y = x / sqrt(eps) (no NaN).
    * use_global_stats=False: per-channel batch mean and biased variance over
      N and all spatial positions, ``y = (x - mean) / sqrt(var + eps)``;
      with m = N * prod(spatial) and lam = moving_average_fraction:
      ``new_factor = lam*factor + 1``, ``new_mean_sum = lam*mean_sum + mean``,
      ``new_var_sum = lam*var_sum + (m/(m-1) if m > 1 else 1) * var``.

    Follows BVLC/caffe src/caffe/layers/batch_norm_layer.cpp ``Forward_cpu``.
    """
    x = _f64(x, "x")
    mean_sum = _f64(mean_sum, "mean_sum")
    var_sum = _f64(var_sum, "var_sum")
    factor = _f64(factor, "factor")
    s = _bn_check(x, mean_sum, var_sum, factor)
    lam = float(moving_average_fraction)
    eps = float(eps)
    C = x.shape[1]

    if use_global_stats:
        mu, var = _bn_global_stats(mean_sum, var_sum, s)
        new_mean_sum, new_var_sum, new_factor = mean_sum, var_sum, np.array([s])
    else:
        mu, var = _bn_batch_stats(x)
        m = x.size // C
        corr = m / (m - 1) if m > 1 else 1.0
        new_factor = np.array([lam * s + 1.0])
        new_mean_sum = np.zeros(C)
        new_var_sum = np.zeros(C)
        for c in range(C):
            new_mean_sum[c] = lam * mean_sum[c] + mu[c]
            new_var_sum[c] = lam * var_sum[c] + corr * var[c]

    y = np.empty_like(x)
    for c in range(C):
        denom = math.sqrt(var[c] + eps)
        for i in _bn_channel_indices(x.shape, c):
            y[i] = (x[i] - mu[c]) / denom
    return y, new_mean_sum, new_var_sum, new_factor


def batch_norm_backward(x, dy, mean_sum, var_sum, factor, *, use_global_stats, eps=1e-5):
    """Caffe BatchNorm backward -> dx.

    * global stats (statistics are constants): ``dx = dy / sqrt(var + eps)``
      with var = f*var_sum as in the forward.
    * batch stats: ``dx = (dy - mean(dy) - mean(dy * xhat) * xhat) / sqrt(var + eps)``
      with xhat = (x - mean)/sqrt(var + eps), means per channel over N x spatial.

    Follows BVLC/caffe src/caffe/layers/batch_norm_layer.cpp ``Backward_cpu``.
    """
    x = _f64(x, "x")
    dy = _f64(dy, "dy")
    mean_sum = _f64(mean_sum, "mean_sum")
    var_sum = _f64(var_sum, "var_sum")
    factor = _f64(factor, "factor")
    s = _bn_check(x, mean_sum, var_sum, factor)
    _same_shape(x, dy, "x", "dy")
    eps = float(eps)
    C = x.shape[1]
    dx = np.empty_like(x)

    if use_global_stats:
        _, var = _bn_global_stats(mean_sum, var_sum, s)
        for c in range(C):
            denom = math.sqrt(var[c] + eps)
            for i in _bn_channel_indices(x.shape, c):
                dx[i] = dy[i] / denom
        return dx

    mu, var = _bn_batch_stats(x)
    for c in range(C):
        idx = _bn_channel_indices(x.shape, c)
        m = len(idx)
        denom = math.sqrt(var[c] + eps)
        xhat = {i: (x[i] - mu[c]) / denom for i in idx}
        mean_dy = 0.0
        mean_dy_xhat = 0.0
        for i in idx:
            mean_dy += dy[i]
            mean_dy_xhat += dy[i] * xhat[i]
        mean_dy /= m
        mean_dy_xhat /= m
        for i in idx:
            dx[i] = (dy[i] - mean_dy - mean_dy_xhat * xhat[i]) / denom
    return dx


# --------------------------------------------------------------------------
# Scale / Bias  (BVLC scale_layer.cpp, bias_layer.cpp)
# --------------------------------------------------------------------------

def _param_axis(x, p, axis, pname):
    """Canonical start axis of a Scale/Bias parameter p inside x.

    p.ndim is num_axes.  For a 0-d p the axis is irrelevant (Caffe sets
    axis_ = 0).  Otherwise axis is canonicalised (axis + x.ndim if negative),
    must lie in [0, x.ndim), and p.shape must equal x.shape[axis:axis+p.ndim].
    """
    if not _is_int(axis):
        raise ValueError(f"axis must be an int, got {axis!r}")
    if p.ndim == 0:
        return 0
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ValueError(f"axis {axis} out of range for a {x.ndim}-D input")
    if ax + p.ndim > x.ndim or tuple(x.shape[ax:ax + p.ndim]) != p.shape:
        raise ValueError(
            f"{pname} shape {p.shape} does not match x.shape[{ax}:{ax + p.ndim}]"
            f" = {tuple(x.shape[ax:ax + p.ndim])} (x.shape={x.shape})")
    return ax


def _param_index(i, ax, ndim):
    """Index into the parameter for the x element at index i."""
    return tuple(i[ax:ax + ndim])


def scale(x, gamma, axis=1, bias=None):
    """Caffe Scale forward: ``y = x * broadcast(gamma) (+ broadcast(bias))``.

    gamma.ndim is num_axes (0 for a scalar of shape ()); gamma.shape must equal
    x.shape[axis:axis+gamma.ndim] (negative axis canonicalised as axis+x.ndim;
    ignored for 0-d gamma).  Element-wise, with outer/inner the axes before /
    after the gamma span: ``y[o, d, i] = x[o, d, i] * gamma[d] (+ bias[d])``.
    bias, if given, must have gamma's shape (Scale's internal Bias layer uses
    the same axis and num_axes).

    Follows BVLC/caffe src/caffe/layers/scale_layer.cpp ``Forward_cpu`` and
    bias_layer.cpp ``Forward_cpu``.
    """
    x = _f64(x, "x")
    gamma = _f64(gamma, "gamma")
    ax = _param_axis(x, gamma, axis, "gamma")
    if bias is not None:
        bias = _f64(bias, "bias")
        if bias.shape != gamma.shape:
            raise ValueError(f"bias shape {bias.shape} != gamma shape {gamma.shape}")
    y = np.empty_like(x)
    for i in itertools.product(*(range(d) for d in x.shape)):
        g = _param_index(i, ax, gamma.ndim)
        v = x[i] * gamma[g]
        if bias is not None:
            v += bias[g]
        y[i] = v
    return y


def scale_backward(x, gamma, dy, axis=1, has_bias=False):
    """Caffe Scale backward -> (dx, dgamma, dbias or None).

    ``dx = dy * broadcast(gamma)``;
    ``dgamma[d] = sum_{outer, inner} dy[o, d, i] * x[o, d, i]`` (shape of gamma);
    ``dbias[d] = sum_{outer, inner} dy[o, d, i]`` if has_bias else None.

    Follows BVLC/caffe src/caffe/layers/scale_layer.cpp ``Backward_cpu`` and
    bias_layer.cpp ``Backward_cpu`` (returned fresh, i.e. not accumulated).
    """
    x = _f64(x, "x")
    gamma = _f64(gamma, "gamma")
    dy = _f64(dy, "dy")
    _same_shape(x, dy, "x", "dy")
    ax = _param_axis(x, gamma, axis, "gamma")
    dx = np.empty_like(x)
    dgamma = np.zeros_like(gamma)
    dbias = np.zeros_like(gamma) if has_bias else None
    for i in itertools.product(*(range(d) for d in x.shape)):
        g = _param_index(i, ax, gamma.ndim)
        dx[i] = dy[i] * gamma[g]
        dgamma[g] += dy[i] * x[i]
        if has_bias:
            dbias[g] += dy[i]
    return dx, dgamma, dbias


def bias(x, beta, axis=1):
    """Caffe Bias forward: ``y = x + broadcast(beta)``, shape rules as :func:`scale`.

    Follows BVLC/caffe src/caffe/layers/bias_layer.cpp ``Forward_cpu``.
    """
    x = _f64(x, "x")
    beta = _f64(beta, "beta")
    ax = _param_axis(x, beta, axis, "beta")
    y = np.empty_like(x)
    for i in itertools.product(*(range(d) for d in x.shape)):
        y[i] = x[i] + beta[_param_index(i, ax, beta.ndim)]
    return y


def bias_backward(x, beta, dy, axis=1):
    """Caffe Bias backward -> (dx, dbeta): ``dx = dy``, ``dbeta[d] = sum_{outer,inner} dy``.

    Follows BVLC/caffe src/caffe/layers/bias_layer.cpp ``Backward_cpu``.
    """
    x = _f64(x, "x")
    beta = _f64(beta, "beta")
    dy = _f64(dy, "dy")
    _same_shape(x, dy, "x", "dy")
    ax = _param_axis(x, beta, axis, "beta")
    dx = np.empty_like(x)
    dbeta = np.zeros_like(beta)
    for i in itertools.product(*(range(d) for d in x.shape)):
        dx[i] = dy[i]
        dbeta[_param_index(i, ax, beta.ndim)] += dy[i]
    return dx, dbeta


# --------------------------------------------------------------------------
# Normalize  (weiliu89/caffe ssd normalize_layer.cpp)
# --------------------------------------------------------------------------

def _norm_prepare(x, s):
    """Check shapes; return (x4 (N,C,H,W) float64, original shape, s)."""
    if not 2 <= x.ndim <= 4:
        raise ValueError(f"Normalize needs a 2-D..4-D input, got ndim={x.ndim}")
    C = x.shape[1]
    if s.shape not in ((), (C,)):
        raise ValueError(f"scale must have shape () or ({C},), got {s.shape}")
    shape = x.shape
    x4 = x.reshape(tuple(shape) + (1,) * (4 - x.ndim))
    return x4, shape


def _norm_scale_of(s, c):
    """s (shared, shape ()) or s[c] (per channel)."""
    return s[()] if s.ndim == 0 else s[c]


def _norm_regions(x4, across_spatial):
    """List of regions; each region is the list of (n,c,h,w) indices sharing one norm."""
    N, C, H, W = x4.shape
    regions = []
    if across_spatial:
        for n in range(N):
            regions.append([(n, c, h, w) for c in range(C) for h in range(H) for w in range(W)])
    else:
        for n in range(N):
            for h in range(H):
                for w in range(W):
                    regions.append([(n, c, h, w) for c in range(C)])
    return regions


def _norm_of(x4, region, eps):
    """norm = sqrt(sum_{region} x^2 + eps)  -- eps INSIDE the sqrt."""
    acc = 0.0
    for i in region:
        acc += x4[i] * x4[i]
    return math.sqrt(acc + eps)


def normalize(x, scale, *, across_spatial=True, eps=1e-10):
    """SSD Normalize forward: ``y = scale_c * x / norm``.

    x has 2..4 axes (N, C[, H[, W]]); missing trailing axes count as size 1.
    scale has shape () (channel_shared) or (C,).

    * across_spatial=True:  per sample n, ``norm_n = sqrt(sum_{c,h,w} x^2 + eps)``
    * across_spatial=False: per (n, h, w), ``norm = sqrt(sum_c x^2 + eps)``

    eps is INSIDE the sqrt, so an all-zero region gives y = 0 (no NaN).
    Follows weiliu89/caffe (ssd) src/caffe/layers/normalize_layer.cpp ``Forward_cpu``.
    """
    x = _f64(x, "x")
    s = _f64(scale, "scale")
    x4, shape = _norm_prepare(x, s)
    eps = float(eps)
    y4 = np.empty_like(x4)
    for region in _norm_regions(x4, across_spatial):
        nrm = _norm_of(x4, region, eps)
        for i in region:
            y4[i] = _norm_scale_of(s, i[1]) * x4[i] / nrm
    return y4.reshape(shape)


def normalize_backward(x, scale, dy, *, across_spatial=True, eps=1e-10):
    """TRUE gradient of :func:`normalize` -> (dx, dscale).

    Within each region R (the same region as the forward norm n):
        ``dx_j = s_j dy_j / n - x_j * (sum_{c in R} s_c dy_c x_c) / n^3``
    dscale: shape () -> ``sum_all dy * x / n``;
            shape (C,) -> ``dscale_c = sum_{n, positions} dy * x / n`` for channel c.

    This is what autograd of the forward gives; it is NOT Caffe's backward when
    the per-channel scales differ (see :func:`normalize_backward_caffe`).
    """
    x = _f64(x, "x")
    s = _f64(scale, "scale")
    dy = _f64(dy, "dy")
    _same_shape(x, dy, "x", "dy")
    x4, shape = _norm_prepare(x, s)
    g4 = dy.reshape(x4.shape)
    eps = float(eps)
    dx4 = np.empty_like(x4)
    ds = np.zeros_like(s)
    for region in _norm_regions(x4, across_spatial):
        nrm = _norm_of(x4, region, eps)
        dot = 0.0
        for i in region:
            dot += _norm_scale_of(s, i[1]) * g4[i] * x4[i]
        for j in region:
            dx4[j] = (_norm_scale_of(s, j[1]) * g4[j] / nrm
                      - x4[j] * dot / nrm ** 3)
            if s.ndim == 0:
                ds[()] += g4[j] * x4[j] / nrm
            else:
                ds[j[1]] += g4[j] * x4[j] / nrm
    return dx4.reshape(shape), ds


def normalize_backward_caffe(x, scale, dy, *, across_spatial=True, eps=1e-10):
    """Caffe SSD's own Normalize backward, reproduced exactly -> (dx, dscale).

    Within each region R (same as the forward norm n):
        ``dx_j = s_j * (dy_j - x_j * (sum_{i in R} x_i dy_i) / n^2) / n``
    which equals the true gradient only when s is uniform over the channels.
    dscale = sum(y * dy) / s: shared -> one scalar over everything;
    per-channel -> per channel over N and positions.  Divides by s on purpose
    (inf/nan when s == 0, as Caffe).

    Follows weiliu89/caffe (ssd) src/caffe/layers/normalize_layer.cpp ``Backward_cpu``.
    """
    x = _f64(x, "x")
    s = _f64(scale, "scale")
    dy = _f64(dy, "dy")
    _same_shape(x, dy, "x", "dy")
    x4, shape = _norm_prepare(x, s)
    g4 = dy.reshape(x4.shape)
    y4 = normalize(x4, s, across_spatial=across_spatial, eps=eps)
    eps = float(eps)
    dx4 = np.empty_like(x4)
    ydy = np.zeros_like(s)  # sum of y * dy (shared or per channel)
    for region in _norm_regions(x4, across_spatial):
        nrm = _norm_of(x4, region, eps)
        dot = 0.0
        for i in region:
            dot += x4[i] * g4[i]
        for j in region:
            dx4[j] = _norm_scale_of(s, j[1]) * (g4[j] - x4[j] * dot / nrm ** 2) / nrm
            if s.ndim == 0:
                ydy[()] += y4[j] * g4[j]
            else:
                ydy[j[1]] += y4[j] * g4[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        ds = np.asarray(ydy / s, dtype=np.float64)
    return dx4.reshape(shape), ds
