#!/bin/sh
# The build steps of deploy/Dockerfile's build stage, as a script that also runs on a Debian host without a container
# engine (as root). From the repository root:  deploy/build-image.sh OUT
# Installs what the BPF probes need when it is missing, publishes the agent to OUT, and fails unless OUT has the
# compiled probes: an image without them could never run the bpf source, which auto prefers.
set -eu
out=${1:?usage: deploy/build-image.sh OUT}
if ! command -v clang >/dev/null 2>&1 || [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang llvm libbpf-dev
fi
dotnet publish src/KvmObserve.Agent -c Release -o "$out"
if [ ! -s "$out/probes/kvmobserve.bpf.o" ]; then
    echo "build-image: $out/probes/kvmobserve.bpf.o was not built (clang and libbpf-dev are needed)" >&2
    exit 1
fi
echo "build-image: $out/kvmobserve with $out/probes/kvmobserve.bpf.o"
