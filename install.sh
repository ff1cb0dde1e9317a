#!/usr/bin/env bash
# Install distillab (editable, with the test extra) into the current Python.
# An installed torch (a GPU build, say) is kept as it is; where no torch is present, the CPU build is
# installed first, so nothing pulls the multi-gigabyte CUDA build by accident.
#   DISTILLAB_TORCH_VERSION  torch version to install when none is present (default 2.13.0)
#   DISTILLAB_TORCH_INDEX    index to take it from, e.g. https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: no torch found; installing the CPU build first"
  "$PY" -m pip install --quiet "torch==${DISTILLAB_TORCH_VERSION:-2.13.0}" \
    ${DISTILLAB_TORCH_INDEX:+--index-url "$DISTILLAB_TORCH_INDEX"}
fi
"$PY" -m pip install --quiet -e ".[test]"
"$PY" -c "import torch, distillab; print(f'install.sh: distillab {distillab.__version__} with torch {torch.__version__}')"
