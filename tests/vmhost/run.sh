#!/usr/bin/env bash
# Runs one shell command in a fresh test VM (a real KVM: kvm_amd in QEMU) with the host's root as its own,
# prints its output and exits with its exit code. Usage: run.sh [--npt 0|1] COMMAND...
# Example: tests/vmhost/run.sh 'cd /work/main && dotnet src/KvmObserve.Agent/bin/Debug/net10.0/kvmobserve.dll doctor'
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
npt=1
[ "${1:-}" = --npt ] && { npt=$2; shift 2; }
dir=$(mktemp -d /tmp/kvmobserve-vmhost.XXXXXX)
trap 'kill $qemu 2>/dev/null || true; wait 2>/dev/null; rm -rf "$dir"' EXIT
"$here/boot.sh" "$dir" "npt=$npt" & qemu=$!
while [ ! -p "$dir/ctl.out" ]; do kill -0 $qemu 2>/dev/null || exit 1; sleep 0.2; done
exec 3<"$dir/ctl.out" 4>"$dir/ctl.in"
read -r status rest <&3
[ "$status" = ready ] || { echo "vmhost: $status $rest" >&2; cat "$dir/console.log" >&2; exit 1; }
printf 'export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1\ncd %q\n%s\n' "$PWD" "$*" > "$dir/share/1.sh"
echo "run 1" >&4
read -r id rc <&3
cat "$dir/share/1.out"
echo "off 0" >&4
wait $qemu || true
exit "$rc"
