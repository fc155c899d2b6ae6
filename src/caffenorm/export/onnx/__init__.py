"""ONNX export of Caffe nets, exactly: :func:`to_onnx` writes a :class:`caffenorm.Net`'s graph as
an ONNX model with the ``onnx`` library (no tracing) and checks it in onnxruntime against the
eager net, blob by blob.

How it works: every module class of the graph's nodes has one small exporter (a function
``(node, ctx) -> None`` in the family modules ``norm``, ``conv``, ``pooling``, ``inner_product``,
``activation``, ``eltwise``, ``shape``, ``detection``, ``input``, ``loss``, registered with
:func:`~caffenorm.export.onnx._registry.register_exporter`) that emits ONNX nodes through an
:class:`~caffenorm.export.onnx._context.ExportContext`: unique names, initializers from the
modules' tensors, the ONNX value each Caffe blob name is bound to now (rebound by in-place layers;
the last value of a blob carries the blob's name), and shape templates in which the batch axis
stays dynamic.  :func:`mapping_table` lists what each layer maps to (the first line of each
exporter's docstring).  DetectionOutput is written in standard ops with Caffe's overlap
formula and greedy NMS (not ONNX's NonMaxSuppression, which differs) and checked against
caffenorm's layer on onnxruntime's own bottoms.  Layers that cannot be mapped exactly are refused
with an :class:`~caffenorm.ExportError` naming the layer, its type and why: the loss/accuracy
layers, a training-mode net, Pooling's MAX mask top.

Opset: 17 by default (``opset=`` takes 17 up to the installed onnx's newest).  Everything a Caffe
net needs exists at 17 with Caffe's semantics -- ``Softmax`` over one axis (13), ``LRN`` (13),
inference ``BatchNormalization`` (15), ``AveragePool`` with ``count_include_pad`` and ``Pad`` with
runtime pads (11/13), ``ReduceSumSquare`` (13) -- and later opsets add nothing a Caffe net uses
(18 moves the Reduce axes to an input, 19+ add AveragePool dilations and new types), while 17 is
what most deployed readers accept: OpenCV dnn 4.x's importer, TensorRT 8.6, onnxruntime >= 1.13
(this package's extra requires >= 1.17), torch.onnx's TorchScript exporter default.  The file is
written with the lowest IR version that carries the opset (IR 8 for 17).

For a user's own PyTorch model containing caffenorm modules, torch.onnx needs translations of the
``caffenorm::lrn`` and ``caffenorm::normalize`` ops: :func:`register_torch_onnx` (TorchScript
exporter; explicit, importing this package registers nothing) and
:func:`custom_translation_table` (dynamo exporter); see
:mod:`caffenorm.export.onnx.torch_export`.

onnx and onnxruntime are optional (``pip install caffenorm[onnx]``): importing this package does
not import them; :func:`to_onnx` raises :class:`~caffenorm.ExportError` with that command when
they are missing.
"""

from __future__ import annotations

from caffenorm.export.onnx._export import DEFAULT_OPSET, build_model, to_onnx
from caffenorm.export.onnx._families import mapping_table
from caffenorm.export.onnx._registry import register_exporter
from caffenorm.export.onnx.torch_export import custom_translation_table, register_torch_onnx, unregister_torch_onnx

__all__ = [
    "DEFAULT_OPSET",
    "build_model",
    "custom_translation_table",
    "mapping_table",
    "register_exporter",
    "register_torch_onnx",
    "to_onnx",
    "unregister_torch_onnx",
]
