"""The per-image DetectionOutput as caffenorm computed it before the batched version: one image and
one class at a time, NMS by :func:`caffenorm.caffe.ops.detection._nms_sorted`.  Kept verbatim as
the oracle of "the same rows, bit for bit" (it was checked against the float64 reference, OpenCV
and real Caffe rows while it was the implementation); the batched one must equal it exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from caffenorm.caffe.ops.detection import (
    _bbox_size,
    _blob_2d,
    _check_detection_settings,
    _detection_shapes,
    _nms_sorted,
    _select,
    decode_boxes,
)


def detection_output_per_image(
    loc: Tensor,
    conf: Tensor,
    prior: Tensor,
    *,
    num_classes: int,
    share_location: bool = True,
    background_label_id: int = 0,
    nms_threshold: float = 0.3,
    top_k: int = -1,
    eta: float = 1.0,
    keep_top_k: int = -1,
    confidence_threshold: float | None = None,
    code_type: str | int = "CENTER_SIZE",
    variance_encoded_in_target: bool = False,
) -> Tensor:
    """SSD's ``DetectionOutput`` (``DetectionOutputLayer::Forward_cpu``): ``(1, 1, num_kept, 7)``.

    Inputs: ``loc`` ``(N, P*L*4)`` with ``L = 1`` if ``share_location`` else ``num_classes``
    (per prior, per loc class, 4 values); ``conf`` ``(N, P*num_classes)`` (softmaxed, per
    prior then class); ``prior`` ``(1, 2, P*4)`` from :func:`prior_box` (boxes, variances).

    Per image: decode every prior with :func:`decode_boxes` (no clipping); for every class
    ``c != background_label_id`` (ascending), :func:`nms` of that class's boxes (the shared
    ones, or class ``c``'s) with ``score > confidence_threshold`` (None: ``-FLT_MAX``),
    ``top_k`` (-1: all), ``nms_threshold`` and ``eta``.  If ``keep_top_k > -1`` and the
    image has more than ``keep_top_k`` detections, keep the ``keep_top_k`` best-scoring ones
    over all classes.  Rows ``[image_id, label, score, xmin, ymin, xmax, ymax]``: images in
    order, then labels ascending, then descending score (see the module docstring).  If no
    image has a detection: ``(1, 1, N, 7)`` of -1 with column 0 = the image index.

    Ties: Caffe cuts ``keep_top_k`` with ``std::sort`` (not stable), so which of several
    *equal* scores survive at the cut is unspecified there; we keep the first in (label, NMS)
    order.  Boxes and scores are float32 internally (as Caffe's); the result has the dtype of
    ``loc`` (float32 for non-float input).  Not differentiable: runs without autograd.
    """
    (num_classes, background_label_id, nms_threshold, top_k, eta, keep_top_k, confidence_threshold, code) = (
        _check_detection_settings(
            num_classes,
            share_location,
            background_label_id,
            nms_threshold,
            top_k,
            eta,
            keep_top_k,
            confidence_threshold,
            code_type,
        )
    )
    with torch.no_grad():
        num_priors, num_loc, n = _detection_shapes(loc, conf, prior, num_classes, share_location)
        loc2 = _blob_2d("loc", loc, None, num_priors * num_loc * 4)
        conf2 = _blob_2d("conf", conf, n, num_priors * num_classes)
        out_dtype = loc.dtype if loc.is_floating_point() else torch.float32
        device = loc.device

        pri = prior.detach().to(device=device, dtype=torch.float32).reshape(2, num_priors, 4)
        # (N, L, P, 4): one set of boxes per loc class, decoded against the same priors.
        loc4 = loc2.detach().to(torch.float32).reshape(n, num_priors, num_loc, 4).transpose(1, 2)
        boxes = decode_boxes(loc4, pri[0], pri[1], code, variance_encoded_in_target)
        sizes = _bbox_size(boxes)
        scores = conf2.detach().to(device=device, dtype=torch.float32).reshape(n, num_priors, num_classes)

        per_image: list[Tensor] = []
        for i in range(n):
            labels: list[Tensor] = []
            indices: list[Tensor] = []
            for c in range(num_classes):
                if c == background_label_id:
                    continue
                lc = 0 if share_location else c
                cls_scores = scores[i, :, c]
                idx = _select(cls_scores, confidence_threshold, top_k)
                cand = boxes[i, lc][idx]
                kept = _nms_sorted(cand, sizes[i, lc][idx], nms_threshold, eta)
                keep_idx = idx[torch.tensor(kept, dtype=torch.long, device=device)]
                indices.append(keep_idx)
                labels.append(torch.full_like(keep_idx, c))
            lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
            idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
            sc = scores[i, idx, lab]
            if keep_top_k > -1 and idx.numel() > keep_top_k:
                best = torch.sort(sc, descending=True, stable=True).indices[:keep_top_k]
                # Regroup by label (std::map order); within a label the sorted (score) order stays.
                regroup = torch.sort(lab[best], stable=True).indices
                best = best[regroup]
                lab, idx, sc = lab[best], idx[best], sc[best]
            lc_idx = torch.zeros_like(lab) if share_location else lab
            det = boxes[i][lc_idx, idx]
            rows = torch.cat(
                [
                    torch.full((idx.numel(), 1), float(i), dtype=torch.float32, device=device),
                    lab.to(torch.float32).unsqueeze(1),
                    sc.unsqueeze(1),
                    det,
                ],
                dim=1,
            )
            per_image.append(rows)
        out = torch.cat(per_image) if per_image else torch.zeros((0, 7), dtype=torch.float32, device=device)
        if out.shape[0] == 0:
            out = torch.full((n, 7), -1.0, dtype=torch.float32, device=device)
            out[:, 0] = torch.arange(n, dtype=torch.float32, device=device)
        return out.to(out_dtype).view(1, 1, out.shape[0], 7)
