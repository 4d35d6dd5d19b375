#!/bin/sh
# Which ONNX Runtime build the virtualenv gets; prints "gpu" or "cpu" (the Makefile's ORT).
#   sh bench/ort_build.sh auto|gpu|cpu
# auto: gpu when `nvidia-smi -L` succeeds and lists a GPU (nvidia-smi ships with the NVIDIA
# driver and fails without a working one), else cpu. gpu and cpu force the choice.
choice=${1:-auto}
case "$choice" in
  gpu | cpu)
    echo "$choice"
    ;;
  auto)
    # A wedged driver can make nvidia-smi hang: give it a bounded time.
    if listed=$(timeout "${NVIDIA_SMI_TIMEOUT:-20}" nvidia-smi -L 2>/dev/null) \
      && printf '%s\n' "$listed" | grep -q '^GPU [0-9]'; then
      echo gpu
    else
      echo cpu
    fi
    ;;
  *)
    echo "ORT must be auto, gpu or cpu, not '$choice'" >&2
    exit 2
    ;;
esac
