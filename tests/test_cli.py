"""The caffenorm command, run in-process through ``cli.main``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import caffenorm
from caffenorm.cli import example_model, main


def test_run_without_a_model_uses_the_bundled_example(capsys):
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "bundled example" in out and "prob: shape (1, 10), top 5 per image" in out
    assert "input data: shape (1, 3, 32, 32) (random normal, seed 0)" in out


def test_bundled_example_uses_every_normalization_layer():
    net = caffenorm.load(*example_model())
    types = {s.type for s in net.layer_specs}
    assert {"LRN", "BatchNorm", "Scale", "Normalize"} <= types
    regions = {s.param.lrn_param.norm_region for s in net.layer_specs if s.type == "LRN"}
    assert regions == {0, 1}
    assert net.params["bn2"][2].item() > 1  # real accumulated statistics, not a fresh layer


def test_info_prints_layers_shapes_and_parameter_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "norm1       LRN" in out and "1x16x32x32" in out
    assert "14,730 learnable parameters + 65 BatchNorm statistics" in out and "outputs ['prob']" in out


def test_compare_opencv_names_norm1_as_the_only_cause_and_writes_the_report(tmp_path, capsys):
    pytest.importorskip("cv2")
    report = tmp_path / "parity.html"
    assert main(["run", "--compare", "opencv", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    # The example's first LRN has k = 2, which OpenCV's Caffe importer drops; the layers before agree
    # and the 13 after it only inherit its difference.
    assert "1 cause of difference: norm1 (LRN); 13 later layers only inherit a difference" in out
    assert "ignores LRN's k" in out and "follows from norm1" in out
    assert "DIVERGES" not in out
    conv1 = next(line for line in out.splitlines() if line.startswith("conv1 "))
    assert conv1.rstrip().endswith("ok")
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "norm1" in page and "<svg" in page


def test_run_reads_npy_and_image_inputs(tmp_path, capsys):
    proto, model = example_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(proto), str(model), "--input", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "input data: shape (2, 3, 32, 32)" in out and "\n#1     1 " in out
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    assert main(["run", str(proto), str(model), "--input", str(tmp_path / "x.png"), "--mean", "104,117,123"]) == 0
    assert "input data: shape (1, 3, 32, 32)" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "LRN" bottom: "x" top: "y" }\n')
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"caffenorm: error: {bad}:1: layer 'a' (LRN): bottom 'x' is not produced by any layer (nor declared as an input)"
    ]
    assert main(["--debug", "info", str(bad)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_info_lists_unsupported_layers(tmp_path, capsys):
    proto = tmp_path / "u.prototxt"
    proto.write_text('input: "d" input_shape { dim: 1 dim: 2 }\nlayer { name: "x" type: "Frobnicate" bottom: "d" top: "e" }\n')
    assert main(["info", str(proto)]) == 1
    out = capsys.readouterr().out
    assert "1 unsupported layer(s)" in out and "layer 'x' (Frobnicate)" in out


def test_python_dash_m_and_layers_command():
    out = subprocess.run([sys.executable, "-m", "caffenorm", "layers"], capture_output=True, text=True, check=True).stdout
    assert {"LRN", "BatchNorm", "Scale", "Bias", "Normalize", "PriorBox", "DetectionOutput"} <= set(out.split())


def test_readme_layer_table_is_generated_from_the_registry():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_layers_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_usage_errors_exit_with_2(tmp_path, capsys):
    proto, _ = example_model()
    assert main(["run", str(proto), "--compare", "opencv"]) == 2
    assert "needs a caffemodel" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--input-shape", "data=a,b"])
    assert exit_info.value.code == 2


def test_bad_npy_input_is_a_one_line_error(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    assert main(["run", "--input", str(tmp_path / "s.npy")]) == 1
    assert "expected an array of real numbers" in capsys.readouterr().err


def test_compare_on_a_model_opencv_cannot_run_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("cv2")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "caffe"))
    from netutil import write_model

    text = ('input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
            'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { tiles: 2 } }\n')
    proto, model = write_model(tmp_path, text, {})
    assert main(["run", str(proto), str(model), "--compare", "opencv"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caffenorm: error: OpenCV dnn")


@pytest.mark.parametrize("to, suffixes", [("onnx", [".onnx"]), ("ncnn", [".param", ".bin"])])
def test_convert_writes_a_checked_model_of_the_bundled_example(tmp_path, capsys, to, suffixes):
    pytest.importorskip("onnxruntime" if to == "onnx" else "ncnn")
    out = tmp_path / f"example{suffixes[0]}"
    assert main(["convert", "--to", to, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all blobs agree" in printed and "prob" in printed
    assert all(out.with_suffix(s).is_file() for s in suffixes)


def test_convert_writes_detection_output_for_ncnn_as_the_custom_layer(tmp_path, capsys):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "caffe"))
    import zoo

    pytest.importorskip("onnxruntime")
    pytest.importorskip("ncnn")
    proto, model, _ = zoo.write("ssd", tmp_path)
    assert main(["convert", str(proto), str(model), "--to", "ncnn", "-o", str(tmp_path / "ssd.param")]) == 0
    out = capsys.readouterr().out
    assert "all blobs agree" in out and "CaffeDetectionOutput" in out and "register_custom_layers" in out
    assert "CaffeDetectionOutput" in (tmp_path / "ssd.param").read_text()
    assert main(["convert", str(proto), str(model), "--to", "onnx", "-o", str(tmp_path / "ssd.onnx")]) == 0
    assert "all blobs agree" in capsys.readouterr().out
    cut = "mbox_loc,mbox_conf_flatten,mbox_priorbox"
    args = ["convert", str(proto), str(model), "--to", "onnx", "-o", str(tmp_path / "ssd.onnx"), "--outputs", cut]
    assert main(args) == 0
    assert "all blobs agree" in capsys.readouterr().out
