"""Caffe's solver messages, ``SolverParameter`` and ``SolverState``, built at import time like
:mod:`caffenorm.caffe.schema` (a table of facts turned into a proto2 ``FileDescriptorProto``).

The table is added to the net schema's *private* descriptor pool as a second file that depends
on the first (:func:`caffenorm.caffe.schema.extend`), so ``SolverParameter.net_param`` and
``train_net_param`` hold :class:`caffenorm.caffe.schema.NetParameter` itself (the same class:
a net read inline from a solver file goes through the same builder as one read from a
prototxt), and ``SolverState.history`` holds ``schema.BlobProto``.

Field numbers (and defaults) come from BVLC/caffe ``src/caffe/proto/caffe.proto`` (master).
The weiliu89/caffe ``ssd`` branch numbers a few fields differently: its ``eval_type`` is 41 and
``ap_version`` 42, where BVLC has ``layer_wise_reduce`` (41) and ``weights`` (42), and it adds
``plateau_winsize`` (43) and ``show_per_class_result`` (44).  A solver file is protobuf *text*,
where only field names matter, so both flavours parse with one table: the shared fields keep
BVLC's numbers and SSD's four extra fields get free numbers (SSD's number + 1000: 1041-1044).
Only a *binary* SSD ``SolverParameter`` (which nobody writes; Caffe reads solvers as text)
would be misread.  ``SolverState``'s SSD additions (``minimum_loss`` 5, ``iter_last_event`` 6)
collide with nothing and keep their numbers, so binary SSD ``.solverstate`` files parse too.

Usage::

    from google.protobuf import text_format
    from caffenorm.caffe import solver_schema

    param = text_format.Parse(text, solver_schema.SolverParameter())
    state = solver_schema.SolverState.FromString(solverstate_bytes)
"""

from __future__ import annotations

from google.protobuf.message import Message

from caffenorm.caffe import schema
from caffenorm.caffe.schema import msg

__all__ = ["DESCRIPTOR", "SSD_RENUMBERED", "SolverParameter", "SolverState"]

_FILE_NAME = "caffenorm/caffe/caffe_solver.proto"  # a name in the private pool, not a real file

# SSD (weiliu89/caffe, branch ssd) field -> (its own number, the number used here).
SSD_RENUMBERED: dict[str, tuple[int, int]] = {
    "eval_type": (41, 1041),
    "ap_version": (42, 1042),
    "plateau_winsize": (43, 1043),
    "show_per_class_result": (44, 1044),
}

_MESSAGES = {
    "SolverParameter": msg(
        (1, "train_net", "string"),
        (2, "test_net", "repeated string"),
        (3, "test_iter", "repeated int32"),
        (4, "test_interval", "int32", 0),
        (5, "base_lr", "float"),
        (6, "display", "int32"),
        (7, "max_iter", "int32"),
        (8, "lr_policy", "string"),
        (9, "gamma", "float"),
        (10, "power", "float"),
        (11, "momentum", "float"),
        (12, "weight_decay", "float"),
        (13, "stepsize", "int32"),
        (14, "snapshot", "int32", 0),
        (15, "snapshot_prefix", "string"),
        (16, "snapshot_diff", "bool", False),
        (17, "solver_mode", "SolverMode", "GPU"),
        (18, "device_id", "int32", 0),
        (19, "test_compute_loss", "bool", False),
        (20, "random_seed", "int64", -1),
        (21, "train_net_param", "NetParameter"),
        (22, "test_net_param", "repeated NetParameter"),
        (23, "debug_info", "bool", False),
        (24, "net", "string"),
        (25, "net_param", "NetParameter"),
        (26, "train_state", "NetState"),
        (27, "test_state", "repeated NetState"),
        (28, "snapshot_after_train", "bool", True),
        (29, "regularization_type", "string", "L2"),
        (30, "solver_type", "SolverType", "SGD"),  # deprecated: upgraded to `type`
        (31, "delta", "float", 1e-8),
        (32, "test_initialization", "bool", True),
        (33, "average_loss", "int32", 1),
        (34, "stepvalue", "repeated int32"),
        (35, "clip_gradients", "float", -1.0),
        (36, "iter_size", "int32", 1),
        (37, "snapshot_format", "SnapshotFormat", "BINARYPROTO"),
        (38, "rms_decay", "float", 0.99),
        (39, "momentum2", "float", 0.999),
        (40, "type", "string", "SGD"),
        (41, "layer_wise_reduce", "bool", True),  # BVLC; SSD's 41 is eval_type (below)
        (42, "weights", "repeated string"),  # BVLC; SSD's 42 is ap_version (below)
        # SSD fork, renumbered (see the module docstring and SSD_RENUMBERED)
        (1041, "eval_type", "string", "classification"),
        (1042, "ap_version", "string", "Integral"),
        (1043, "plateau_winsize", "repeated int32"),
        (1044, "show_per_class_result", "bool", False),
        SnapshotFormat="HDF5=0 BINARYPROTO=1",
        SolverMode="CPU=0 GPU=1",
        SolverType="SGD=0 NESTEROV=1 ADAGRAD=2 RMSPROP=3 ADADELTA=4 ADAM=5",
    ),
    "SolverState": msg(
        (1, "iter", "int32"),
        (2, "learned_net", "string"),
        (3, "history", "repeated BlobProto"),
        (4, "current_step", "int32", 0),
        # SSD fork (its "plateau" lr_policy); same numbers, no collision with BVLC
        (5, "minimum_loss", "float", 1e38),
        (6, "iter_last_event", "int32", 0),
    ),
}

DESCRIPTOR, _CLASSES = schema.extend(_FILE_NAME, _MESSAGES)

SolverParameter: type[Message] = _CLASSES["SolverParameter"]
SolverState: type[Message] = _CLASSES["SolverState"]
