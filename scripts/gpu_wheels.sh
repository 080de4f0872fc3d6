#!/usr/bin/env bash
# Fetches, on a machine with network, the Python wheels the GPU machine lacks for
# scripts/deepspeed_same_json.py: DeepSpeed (no wheel on PyPI: built here from its sdist with
# DS_BUILD_OPS=0, its C++ ops left to JIT-build there) and the dependencies its image does not
# have (hjson, pydantic and its own). Into .whl/ (ignored); carry it with gpu_bin/.
# Needs a Python with torch to build DeepSpeed's wheel: PYTHON=/path/to/python (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl /tmp/zinf-dssrc
"$py" -m pip download -q --no-deps --no-binary :all: deepspeed==0.19.8 -d /tmp/zinf-dssrc
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation /tmp/zinf-dssrc/deepspeed-0.19.8.tar.gz -w .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# With their dependencies, so pydantic-core is the version pydantic pins.
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  $plat -d .whl hjson pydantic
ls -la .whl
