"""``caffenorm run`` for real tasks: detections in the user's pixels, drawing, batches of images,
JSON/npz output, labels, and every option that does not apply said so (never ignored)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import caffenorm
from caffenorm.cli import example_model, main

sys.path.insert(0, str(Path(__file__).parent / "caffe"))
import zoo

RES10_MEAN = "104,177,123"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The astronaut (512x512 color) and the coins (303x384 gray) of scikit-image, as files."""
    cv2 = pytest.importorskip("cv2")
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(root / "astronaut.png"), data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(root / "coins.png"), data.coins())
    return root


def _face_reference(proto, model, photo: Path) -> np.ndarray:
    """The best row of res10 run directly (not through the command) on the photo resized with
    OpenCV, corners scaled by the photo's own size."""
    import cv2

    image = cv2.imread(str(photo))
    x = cv2.resize(image, (300, 300), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x -= np.array([104, 177, 123], dtype=np.float32)
    net = caffenorm.load(proto, model)
    rows = net(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])))["detection_out"][0, 0].numpy()
    best = rows[np.argmax(rows[:, 2])]
    h, w = image.shape[:2]
    return np.array([best[2], best[3] * w, best[4] * h, best[5] * w, best[6] * h])


def test_res10_prints_the_face_with_its_pixel_box_and_draws_it(photos, tmp_path, capsys):
    import cv2

    proto, model = zoo.res10_files()
    labels = tmp_path / "labels.txt"
    labels.write_text("background\nface\n")
    drawn = tmp_path / "faces.png"
    args = ["run", str(proto), str(model), "--input", str(photos / "astronaut.png"), "--mean", RES10_MEAN,
            "--labels", str(labels), "--draw", str(drawn)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resized 512x512 -> 300x300" in out
    assert "1 detection(s) with score >= 0.5 (of 126 rows the layer kept)" in out
    line = next(l for l in out.splitlines() if l.startswith("astronaut.png"))
    name, score, *box = line.split()[1:]
    want = _face_reference(proto, model, photos / "astronaut.png")
    assert name == "face" and float(score) == pytest.approx(want[0], abs=1e-4)
    assert [float(v) for v in box] == pytest.approx(want[1:], abs=0.06)
    # the face of the astronaut is at about x 180..270, y 60..180 of the 512x512 photo
    assert 150 < want[1] < 200 and 40 < want[2] < 80 and 250 < want[3] < 300 and 150 < want[4] < 200
    picture = cv2.imread(str(drawn))
    assert picture.shape == (512, 512, 3)
    _, y0, x1, y1 = (round(v) for v in want[1:])
    edge = picture[(y0 + y1) // 2, x1 - 1 : x1 + 2]
    assert (edge[:, 1] > 200).any() and (edge[:, 0] < 60).any()  # the green right edge of the box


def test_several_images_and_globs_are_one_batch_in_each_images_pixels(photos, capsys):
    proto, model = zoo.res10_files()
    pattern = str(photos / "*.png")
    assert main(["run", str(proto), str(model), "--input", pattern, "--mean", RES10_MEAN, "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the JSON document only
    assert document["inputs"]["data"]["shape"] == [2, 3, 300, 300]
    assert "gray -> 3 channels (BGR)" in " ".join(document["inputs"]["data"]["notes"])
    found = document["outputs"]["detection_out"]["detections"]
    assert [d["file"] for d in found] == ["astronaut.png"]
    assert "input data" in captured.err  # the human-readable lines went to stderr


def test_input_shape_sets_the_size_images_are_resized_to(photos, capsys):
    proto, model = zoo.res10_files()
    args = ["run", str(proto), str(model), "--input", str(photos / "astronaut.png"), "--mean", RES10_MEAN,
            "--input-shape", "data=1,3,400,400", "--json"]
    assert main(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["inputs"]["data"]["shape"] == [1, 3, 400, 400]
    assert len(document["outputs"]["detection_out"]["detections"]) == 1


def test_output_files_hold_the_blobs_and_the_results(tmp_path, capsys):
    proto, model = example_model()
    assert main(["run", "-o", str(tmp_path / "out.npz"), "--seed", "3"]) == 0
    saved = np.load(tmp_path / "out.npz")
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32), dtype=np.float32)
    want = caffenorm.load(proto, model)(torch.from_numpy(x))["prob"].detach().numpy()
    np.testing.assert_array_equal(saved["prob"], want)
    assert main(["run", "-o", str(tmp_path / "out.json"), "--seed", "3", "--top", "3"]) == 0
    document = json.loads((tmp_path / "out.json").read_text())
    top = document["outputs"]["prob"]["top"]
    assert [t["label"] for t in top] == list(np.argsort(-want[0], kind="stable")[:3])
    assert [t["score"] for t in top] == pytest.approx(np.sort(want[0])[::-1][:3].tolist())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input", "{photo}", "--mean", "104,117"], "--mean has 2 values; input 'data' has 3 channel(s)"),
        (["--mean", "1"], "--mean and --scale apply to --input images"),
        (["--draw", "x.png"], "--draw draws detections; this net has no DetectionOutput"),
        (["--report", "p.html"], "add --compare opencv"),
        (["--input", "/nonexistent/*.png"], "matches no file"),
        (["-o", "out.txt"], "give FILE.npz"),
    ],
)
def test_options_that_do_not_apply_are_usage_errors(extra, message, photos, capsys):
    assert main(["run", *(e.replace("{photo}", str(photos / "coins.png")) for e in extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_npy_input_with_mean_and_bad_values_are_refused(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    assert main(["run", "--input", str(tmp_path / "x.npy"), "--mean", "1,2,3"]) == 2
    assert "a .npy array is fed to the net as it is" in capsys.readouterr().err
    for bad in (["--device", "tpu9"], ["--threshold", "nan"], ["--top", "0"], ["--mean", "1,x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *bad])
        assert exit_info.value.code == 2


def test_threshold_top_and_labels_warn_when_the_net_has_nothing_for_them(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(3)))
    assert main(["run", "--threshold", "0.3", "--labels", str(labels)]) == 0
    err = capsys.readouterr().err
    assert "--threshold applies to detections" in err
    assert "--labels l.txt names 3 classes; 'prob' has 10" in err.replace(str(tmp_path) + "/", "")


def test_several_inputs_accumulate_and_wrong_shapes_name_the_declared_one(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x)
    assert main(["run", "--input", str(tmp_path / "a.npy"), "--input", str(tmp_path / "b.npy")]) == 0
    assert "input data: shape (2, 3, 32, 32)" in capsys.readouterr().out
    np.save(tmp_path / "c.npy", np.zeros((1, 4, 32, 32), np.float32))
    assert main(["run", "--input", str(tmp_path / "c.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "'data' (1, 4, 32, 32) do not fit this net; the net declares 'data' (1, 3, 32, 32)" in err[0]
    assert "layer 'conv1' (Convolution)" in err[0]


def test_batchnorm_net_without_weights_warns_and_info_counts_statistics_apart(capsys):
    proto, _ = example_model()
    assert main(["run", str(proto)]) == 0
    err = capsys.readouterr().err
    assert "BatchNorm layer(s) 'bn2' have no statistics" in err and "meaningless" in err
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    net = caffenorm.load(*example_model())
    learnable = sum(p.numel() for p in net.parameters())
    statistics = sum(b.numel() for b in net.buffers() if b.dtype.is_floating_point and b.dim() <= 1
                     and any(b is s for s in net.layer("bn2").caffe_blobs()))
    assert statistics == 2 * 32 + 1
    assert f"{learnable:,} learnable parameters + {statistics:,} BatchNorm statistics" in out


def test_version_and_float_settings_print_as_written(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"caffenorm {caffenorm.__version__} (torch ")
    net = caffenorm.load(*example_model())
    assert "moving_average_fraction=0.999, eps=1e-05" in repr(net.layer("bn2"))
    assert "alpha=0.0001" in repr(net.layer("norm1"))


def test_an_empty_output_is_summarised_not_a_traceback(tmp_path, capsys):
    from netutil import write_model

    text = ('input: "data" input_shape { dim: 1 dim: 0 }\n'
            'layer { name: "s" type: "Power" bottom: "data" top: "a" power_param { scale: 2 } }\n')
    proto, model = write_model(tmp_path, text, {})
    assert main(["run", str(proto), str(model)]) == 0
    out = capsys.readouterr().out
    assert "a: shape (1, 0), empty" in out


def test_compare_on_res10_reports_no_divergence_and_opencvs_padding_rows(photos, tmp_path, capsys):
    proto, model = zoo.res10_files()
    args = ["run", str(proto), str(model), "--input", str(photos / "astronaut.png"), "--mean", RES10_MEAN,
            "--compare", "opencv", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    compare = json.loads(captured.out)["compare"]
    assert "no layer diverges" in captured.err
    assert "126 detections agree row by row; OpenCV adds 74 all-zero padding rows" in captured.err
    assert compare["ok"] and compare["causes"] == []
    last = compare["layers"][-1]
    assert last["name"] == "detection_out" and last["padding_rows"] == 74 and last["status"] == "padding-only"
