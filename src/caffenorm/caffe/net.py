"""``caffenorm.load`` and ``Net``: a Caffe net as an ``nn.Module``, run blob by blob like Caffe.

Layers run in prototxt order over a dictionary of named blobs.  An in-place layer (top == bottom)
rebinds the name to its output, so ``net.blobs`` holds, like Caffe, the last value written to each
name; nothing is modified in place, so autograd sees an ordinary graph.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf.message import Message
from torch import Tensor, nn

from caffenorm.caffe import io, schema
from caffenorm.caffe.layers.input import InputLayer
from caffenorm.caffe.registry import BuildContext, get_converter
from caffenorm.caffe.spec import LayerSpec, layer_specs, parse_phase
from caffenorm.caffe.fillers import fill
from caffenorm.caffe.upgrade import upgrade_layer, upgrade_net
from caffenorm.errors import (
    BlobError,
    CaffemodelError,
    CaffeNormError,
    InputShapeError,
    NetDefinitionError,
)
from caffenorm.nn import BatchNorm, BatchNormScale, Scale
from caffenorm.nn._base import CaffeLayer

__all__ = ["Net", "load", "read_net"]

PathLike = str | os.PathLike[str]


def _wrap(spec: LayerSpec, err: Exception, shapes: Sequence[Any]) -> CaffeNormError:
    """Re-raise an error from a layer's module with the layer's location."""
    if isinstance(err, CaffeNormError):
        message = str(err)
        if spec.where() in message:
            return err
        return type(err)(f"{spec.where()}: {message}")
    return InputShapeError(f"{spec.where()}: cannot run on bottoms of shapes {list(shapes)}: {err}")


def _meta_shapes(module: CaffeLayer, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Top shapes of ``module`` for bottoms of ``shapes``, computed on the meta device (nothing
    is allocated, and the module's own tensors are not touched)."""
    state = {
        name: torch.empty(t.shape, dtype=t.dtype, device="meta")
        for name, t in (*module.named_parameters(), *module.named_buffers())
    }
    args = tuple(torch.empty(s, device="meta") for s in shapes)
    with torch.no_grad():
        out = torch.func.functional_call(module, state, args)
    outs = out if isinstance(out, tuple) else (out,)
    return [tuple(o.shape) for o in outs]


class Net(nn.Module):
    """A Caffe net.  Build it with :func:`caffenorm.load`.

    Attributes:
        inputs: names of the blobs the caller feeds (Input and data layers' tops), in order.
        outputs: names of the blobs no layer consumes: what ``forward`` returns.
        loss_weights: loss blob name -> its weight in the objective (``net.loss()``).
        input_shapes: the declared shape of each input (``None`` where the prototxt has none).
        blobs: after a forward, every blob name -> the tensor Caffe would hold under that name.
        layer_outputs: after a forward with ``record_layer_outputs = True``, every layer name ->
            its outputs (unlike ``blobs``, not overwritten by later in-place layers).
        fuse_batch_norm_scale: run a BatchNorm and the per-channel Scale that rewrites its top in
            place as one kernel (:class:`caffenorm.BatchNormScale`: the same function and blob
            updates).  Default True; recording layer outputs turns it off for that forward.
        unused_weights: caffemodel layers with blobs that match no layer of this net.
        layers: ``nn.ModuleDict`` of the layer modules ('.' in names becomes '/').
    """

    def __init__(
        self,
        net_param: Message,
        specs: Sequence[LayerSpec],
        phase: str,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        seed: int = 0,
        defer_fillers: bool = False,
    ) -> None:
        super().__init__()
        self.phase = parse_phase(phase)
        self._net_param = net_param
        self._specs = list(specs)
        self.layers = nn.ModuleDict()
        self._keys: list[str] = []
        self.inputs: list[str] = []
        self.input_shapes: dict[str, tuple[int, ...] | None] = {}
        self.blobs: dict[str, Tensor] = {}
        self.record_layer_outputs = False
        self.layer_outputs: dict[str, tuple[Tensor, ...]] = {}
        self.unused_weights: list[str] = []
        overrides = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        self._generator = torch.Generator().manual_seed(seed)
        # With a caffemodel coming, fillers run only for the layers it has no weights for.
        self._deferred_fills: dict[str, list[tuple[Tensor, Message]]] = {}
        shapes: dict[str, tuple[int, ...] | None] = {}
        producer: dict[str, LayerSpec] = {}
        later = {top: s for s in reversed(self._specs) for top in s.tops}
        for spec in self._specs:
            self._check_wiring(spec, producer, later)
            bottom_shapes = [shapes[b] for b in spec.bottoms]
            ctx = BuildContext(spec, bottom_shapes, self.phase, self._generator, [] if defer_fillers else None)
            try:
                module = get_converter(spec)(spec, ctx)
            except CaffeNormError as err:
                raise _wrap(spec, err, bottom_shapes) from None
            self._add(spec, module)
            if ctx.deferred_fills:
                self._deferred_fills[spec.name] = ctx.deferred_fills
            if isinstance(module, InputLayer):
                if len(module.shapes) != len(spec.tops):
                    raise NetDefinitionError(
                        f"{spec.where()}: declares {len(module.shapes)} shapes for {len(spec.tops)} tops"
                    )
                for top, declared in zip(spec.tops, module.shapes):
                    shape = overrides.pop(top, declared)
                    if shape is not None:
                        ctx.check_elements(shape, f"input {top!r}")
                    shapes[top] = shape
                    self.inputs.append(top)
                    self.input_shapes[top] = shape
            else:
                for top, shape in zip(spec.tops, self._infer(spec, module, bottom_shapes)):
                    if shape is not None:
                        ctx.check_elements(shape, f"top {top!r}")
                    shapes[top] = shape
            for top in spec.tops:
                producer[top] = spec
        if overrides:
            raise NetDefinitionError(
                f"input_shapes names {sorted(overrides)}, which are not inputs of this net; inputs: {self.inputs}"
            )
        self.blob_shapes = shapes
        self.outputs = self._outputs()
        self.loss_weights = self._loss_weights()
        self.fuse_batch_norm_scale = True
        # Kept out of the module tree: the fused modules only reference the layers' own modules.
        self._fused: dict[int, BatchNormScale] = self._fusable_pairs()
        self.train(self.phase == "TRAIN")

    # -- building -------------------------------------------------------------------------------

    def _check_wiring(self, spec: LayerSpec, producer: dict[str, LayerSpec], later: dict[str, LayerSpec]) -> None:
        for bottom in spec.bottoms:
            if bottom in producer:
                continue
            source = later.get(bottom)
            if source is not None and source is not spec:
                raise NetDefinitionError(
                    f"{spec.where()}: bottom {bottom!r} is only produced later, by {source.where()}; "
                    "Caffe runs layers in prototxt order"
                )
            raise NetDefinitionError(
                f"{spec.where()}: bottom {bottom!r} is not produced by any layer (nor declared as an input)"
            )
        for i, top in enumerate(spec.tops):
            in_place = i < len(spec.bottoms) and spec.bottoms[i] == top
            if top in producer and not in_place:
                raise NetDefinitionError(
                    f"{spec.where()}: top {top!r} is already produced by {producer[top].where()}; Caffe only "
                    "allows a second writer in place (bottom == top at the same position)"
                )

    def _add(self, spec: LayerSpec, module: CaffeLayer) -> None:
        if not isinstance(module, CaffeLayer):
            raise TypeError(f"converter for {spec.type} returned {type(module).__name__}, not a CaffeLayer")
        key = spec.name.replace(".", "/") or f"layer{len(self._keys)}"
        if key in self.layers:
            raise NetDefinitionError(f"{spec.where()}: a layer named {spec.name!r} already exists; names must be unique")
        self.layers[key] = module
        self._keys.append(key)

    def _infer(self, spec: LayerSpec, module: CaffeLayer, shapes: list[tuple[int, ...] | None]) -> list[Any]:
        if any(s is None for s in shapes) or not getattr(module, "shape_inference", True):
            return [None] * len(spec.tops)
        if module.same_shape:  # element-wise layers: no need to run anything
            return [shapes[0]] * len(spec.tops)
        try:
            tops = _meta_shapes(module, shapes)  # type: ignore[arg-type]
        except CaffeNormError as err:
            raise _wrap(spec, err, shapes) from None
        except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as err:
            raise NetDefinitionError(f"{spec.where()}: does not fit bottoms of shapes {shapes}: {err}") from None
        if len(tops) != len(spec.tops):
            raise NetDefinitionError(f"{spec.where()}: produces {len(tops)} outputs for {len(spec.tops)} tops")
        return tops

    def _fusable_pairs(self) -> dict[int, BatchNormScale]:
        """BatchNorm layers followed by a per-channel Scale that rewrites their top in place:
        Caffe's output of the BatchNorm is then never visible, so the pair can run as one kernel."""
        pairs = {}
        for i in range(len(self._specs) - 1):
            bn_spec, scale_spec = self._specs[i], self._specs[i + 1]
            bn, scale = self.layers[self._keys[i]], self.layers[self._keys[i + 1]]
            if not (isinstance(bn, BatchNorm) and isinstance(scale, Scale)) or len(bn_spec.tops) != 1:
                continue
            top = bn_spec.tops[0]
            if scale_spec.bottoms != (top,) or scale_spec.tops != (top,):
                continue
            if scale.scale_from_input or scale.axis != 1 or scale.shape != (bn.channels,):
                continue
            pairs[i] = BatchNormScale(bn, scale)
        return pairs

    def _fusable(self, index: int) -> bool:
        """The pair is still the net's own two layers (not replaced since) and has no hooks."""
        pair = self._fused[index]
        same = pair.batch_norm is self.layers[self._keys[index]] and pair.scale is self.layers[self._keys[index + 1]]
        return same and not pair.hooked()

    def _loss_weights(self) -> dict[str, float]:
        """Caffe's rule: a ``*Loss`` layer's first top weighs 1 unless ``loss_weight`` says otherwise;
        any layer may give its tops weights with ``loss_weight`` (one per top)."""
        weights: dict[str, float] = {}
        for spec in self._specs:
            given = list(spec.param.loss_weight)
            if given and len(given) != len(spec.tops):
                raise NetDefinitionError(f"{spec.where()}: {len(given)} loss_weight values for {len(spec.tops)} tops")
            if not given and spec.type.endswith("Loss") and spec.tops:
                given = [1.0] + [0.0] * (len(spec.tops) - 1)
            for top, w in zip(spec.tops, given):
                if w:
                    weights[top] = float(w)
        return weights

    def loss(self) -> Tensor:
        """The objective Caffe's solver minimises, from the last forward: the sum of every loss top
        times its ``loss_weight`` (see ``net.loss_weights``)."""
        if not self.loss_weights:
            raise NetDefinitionError("this net has no loss layer (no top with a loss_weight); load the train phase?")
        missing = [t for t in self.loss_weights if t not in self.blobs]
        if missing:
            raise NetDefinitionError(f"run a forward first: no value yet for the loss blobs {missing}")
        return sum((w * self.blobs[t].sum() for t, w in self.loss_weights.items()), torch.zeros(()))

    def _outputs(self) -> list[str]:
        """Caffe's rule: blobs produced (or fed) and not consumed by any later layer."""
        available: dict[str, None] = {}
        for spec in self._specs:
            for bottom in spec.bottoms:
                available.pop(bottom, None)
            for top in spec.tops:
                available[top] = None
        return list(available)

    # -- weights ----------------------------------------------------------------------------------

    def load_caffemodel(
        self, path: PathLike, strict: bool = True, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
    ) -> None:
        """Copy the blobs of a ``.caffemodel`` into the layers, matching layers by name.

        Layers of this net that need blobs and find none are an error with ``strict`` (else they
        keep their fillers, with a warning); caffemodel layers with blobs that match no layer are
        listed in ``unused_weights`` and warned about.
        """
        modules = {spec.name: (spec, self.layers[key]) for spec, key in zip(self._specs, self._keys)}
        loaded, unused = set(), []
        layers = io.iter_caffemodel_layers(path)
        for index, entry in enumerate(progress(layers) if progress else layers):
            layer = upgrade_layer(entry, f"{path}: layer entry {index}")
            if not len(layer.blobs):
                continue
            if layer.name not in modules:
                unused.append(layer.name)
                continue
            spec, module = modules[layer.name]
            arrays = [io.blob_to_array(b, f"{path}: layer {spec.name!r} blob {i}") for i, b in enumerate(layer.blobs)]
            del layer, entry  # one layer's blobs in memory at a time
            try:
                module.load_caffe_blobs(arrays)
            except BlobError as err:
                raise BlobError(f"{spec.where()}: weights from {path}: {err}") from None
            loaded.add(spec.name)
        missing = [name for name, (_, m) in modules.items() if m.caffe_blobs() and name not in loaded]
        self._apply_fills(missing)
        self._deferred_fills.clear()
        self.unused_weights = unused
        if missing:
            message = (
                f"{path}: has no weights for {len(missing)} layer(s) that need them: {', '.join(missing)} "
                "(was it trained with a different prototxt?)"
            )
            if strict:
                raise CaffemodelError(message + "; pass strict=False to keep their fillers")
            warnings.warn(message + "; they keep the prototxt's fillers", stacklevel=2)
        if self.unused_weights:
            warnings.warn(
                f"{path}: weights of {len(self.unused_weights)} layer(s) match no layer of this net and are "
                f"unused: {', '.join(self.unused_weights)}",
                stacklevel=2,
            )

    def _apply_fills(self, names: Iterable[str]) -> None:
        """Run the deferred fillers of the layers ``names``, in net order (so seeds reproduce)."""
        wanted = set(names)
        for spec in self._specs:
            if spec.name in wanted:
                for tensor, filler in self._deferred_fills.get(spec.name, ()):
                    fill(tensor, filler, self._generator)

    # -- running ------------------------------------------------------------------------------------

    def forward(self, *args: Tensor, **inputs: Tensor) -> dict[str, Tensor]:
        """Run the net.  ``net(x)`` when it has one input, else ``net(name=tensor, ...)``.

        Returns the output blobs by name; every blob is in ``net.blobs`` afterwards.
        """
        if args:
            if len(args) != 1 or len(self.inputs) != 1 or inputs:
                raise InputShapeError(
                    f"pass inputs by name: net({', '.join(f'{n}=...' for n in self.inputs)})"
                )
            inputs = {self.inputs[0]: args[0]}
        missing = [n for n in self.inputs if n not in inputs]
        unknown = [n for n in inputs if n not in self.inputs]
        if missing or unknown:
            expected = ", ".join(f"{n} {self.input_shapes[n]}" for n in self.inputs)
            raise InputShapeError(f"the net's inputs are: {expected}; missing {missing}, unknown {unknown}")
        blobs: dict[str, Tensor] = {}
        self.layer_outputs = {}
        fuse = self.fuse_batch_norm_scale and not self.record_layer_outputs
        skip = -1
        for index, (spec, key) in enumerate(zip(self._specs, self._keys)):
            if index == skip:
                continue
            module = self.layers[key]
            if fuse and index in self._fused and self._fusable(index):
                module, skip = self._fused[index], index + 1  # the Scale rewrites this top in place
            if isinstance(module, InputLayer):
                for top in spec.tops:
                    blobs[top] = self._as_tensor(top, inputs[top])
                continue
            bottoms = [blobs[b] for b in spec.bottoms]
            try:
                out = module(*bottoms)
            except (CaffeNormError, RuntimeError, ValueError, IndexError) as err:
                raise _wrap(spec, err, [tuple(b.shape) for b in bottoms]) from None
            outs = out if isinstance(out, tuple) else (out,)
            if len(outs) != len(spec.tops):
                raise NetDefinitionError(f"{spec.where()}: produced {len(outs)} outputs for {len(spec.tops)} tops")
            for top, value in zip(spec.tops, outs):
                blobs[top] = value
            if self.record_layer_outputs:
                self.layer_outputs[spec.name] = outs
        self.blobs = blobs
        return {name: blobs[name] for name in self.outputs}

    def _dtype(self) -> torch.dtype | None:
        """The floating dtype of the net's tensors (None for a net without any)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return None

    def _as_tensor(self, name: str, value: Any) -> Tensor:
        net_dtype = self._dtype()
        dtype = net_dtype or torch.float32
        if isinstance(value, np.ndarray):
            if not (np.issubdtype(value.dtype, np.number) and not np.iscomplexobj(value)):
                raise InputShapeError(f"input {name!r} is a numpy array of {value.dtype}, expected real numbers")
            # Arrays are data: converted to the net's dtype, as Caffe copies them into its blobs.
            value = torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
        if not isinstance(value, Tensor):
            raise InputShapeError(f"input {name!r} must be a tensor or numpy array, got {type(value).__name__}")
        if not value.is_floating_point():
            raise InputShapeError(f"input {name!r} is a {value.dtype} tensor; pass floating-point data (x.float())")
        if net_dtype is not None and value.dtype != net_dtype:
            raise InputShapeError(
                f"input {name!r} is a {value.dtype} tensor but the net's weights are {dtype}; pass "
                f"x.to({dtype}) or convert the net (net.to({value.dtype}))"
            )
        # Like reshaping a Caffe input blob, any shape is accepted; each layer checks what it needs.
        return value

    # -- Caffe's views ------------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, list[Tensor]]:
        """Layer name -> its blobs in Caffe's order and shapes (the tensors themselves)."""
        out = {}
        for spec, key in zip(self._specs, self._keys):
            blobs = self.layers[key].caffe_blobs()
            if blobs:
                out[spec.name] = blobs
        return out

    @property
    def layer_specs(self) -> list[LayerSpec]:
        return list(self._specs)

    def layer(self, name: str) -> CaffeLayer:
        """The module of the layer called ``name``."""
        for spec, key in zip(self._specs, self._keys):
            if spec.name == name:
                return self.layers[key]  # type: ignore[return-value]
        raise KeyError(f"no layer named {name!r}")

    def save(self, prototxt: PathLike, caffemodel: PathLike) -> None:
        """Write the net definition and its weights back in Caffe's formats."""
        definition = schema.NetParameter()
        definition.CopyFrom(self._net_param)
        for layer in definition.layer:
            layer.ClearField("blobs")
        io.write_prototxt(definition, prototxt)
        weights = schema.NetParameter(name=self._net_param.name)
        for spec, key in zip(self._specs, self._keys):
            layer = weights.layer.add()
            layer.CopyFrom(spec.param)
            layer.ClearField("blobs")
            for blob in self.layers[key].caffe_blobs():
                io.array_to_blob(blob.detach().cpu().numpy(), layer.blobs.add())
        io.write_caffemodel(weights, caffemodel)

    def extra_repr(self) -> str:
        return f"phase={self.phase}, inputs={self.inputs}, outputs={self.outputs}"


def read_net(
    prototxt: PathLike, phase: str = "test", level: int = 0, stages: Sequence[str] = ()
) -> tuple[Message, list[LayerSpec]]:
    """Read and upgrade a prototxt; return it and the layers of ``phase``/``level``/``stages``.

    As Caffe's ``Net(file, phase, level, stages)``: the file's own ``state`` stages are kept and
    the given ones added; its phase and level are replaced.
    """
    path = Path(prototxt)
    net_param, lines = io.read_prototxt(path)
    if net_param.input or net_param.input_shape or net_param.input_dim:
        lines = [None, *lines]  # the upgrade prepends an Input layer that has no line of its own
    upgrade_net(net_param, str(path))
    all_stages = [*net_param.state.stage, *stages]
    specs = layer_specs(net_param, lines, str(path), phase, level, all_stages)
    if not specs:
        raise NetDefinitionError(f"{path}: no layers for phase {parse_phase(phase)}")
    return net_param, specs


def load(
    prototxt: PathLike,
    caffemodel: PathLike | None = None,
    phase: str = "test",
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    strict: bool = True,
    seed: int = 0,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> Net:
    """Build a :class:`Net` from a prototxt and (optionally) a caffemodel.

    Args:
        prototxt: the net definition (text; V1 ``layers`` and legacy ``input:`` headers are upgraded).
        caffemodel: the trained weights (binary); without it, layers are initialised from the
            prototxt's fillers with ``seed``.
        phase: ``"test"`` (inference: stored BatchNorm statistics, no dropout) or ``"train"``
            (the TRAIN layers, training mode).  ``net.train()``/``net.eval()`` switch later.
        input_shapes: shapes for inputs the prototxt does not declare (or to override them).
        level, stages: Caffe's ``NetState`` for ``include``/``exclude`` rules.
        strict: with a caffemodel, layers needing weights that it lacks are an error.
        seed: seed of the fillers.
        progress: a wrapper such as ``tqdm.tqdm`` to show progress while weights load.
    """
    net_param, specs = read_net(prototxt, phase, level, stages)
    net = Net(net_param, specs, phase, input_shapes=input_shapes, seed=seed, defer_fillers=caffemodel is not None)
    if caffemodel is not None:
        net.load_caffemodel(caffemodel, strict=strict, progress=progress)
    return net
