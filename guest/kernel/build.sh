#!/usr/bin/env bash
# Builds agentvm's guest kernel without Nix:
#
#   guest/kernel/build.sh [--config-only] [SRC] [OUT_DIR]
#
# SRC is a Linux source tree or tarball (default: Debian's linux-source-6.12,
# /usr/src/linux-source-6.12.tar.xz, from `apt-get install linux-source-6.12`).
# OUT_DIR (default: ./out/guest-kernel) receives `vmlinux` (the PVH ELF that
# `agentvm boot` loads), `bzImage` (the same kernel in the boot protocol's
# compressed format) and `config` (the kernel's .config). The object tree
# (OUT_DIR/build) and an unpacked tarball (OUT_DIR/src) are removed on
# success unless AGENTVM_KERNEL_KEEP_BUILD=1; a rerun with them kept is
# incremental.
#
# Steps: `make allnoconfig`, merge microvm.config with merge_config.sh,
# `make olddefconfig`, then check that every option of the fragment survived
# (Kconfig silently drops an option whose dependencies are unmet) and fail
# listing the ones that did not; then `make vmlinux bzImage`. --config-only stops
# after the check (seconds, for editing the fragment).
#
# Needs: gcc make bc bison flex libelf-dev libssl-dev xz-utils (perl, python3
# are in any Debian base). allnoconfig rather than tinyconfig: tinyconfig adds
# -Os and SLUB_TINY, which slow down what runs in the guest.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
fragment="$here/microvm.config"
config_only=0
if [ "${1:-}" = "--config-only" ]; then
  config_only=1
  shift
fi
src="${1:-/usr/src/linux-source-6.12.tar.xz}"
out="${2:-$PWD/out/guest-kernel}"
jobs="${AGENTVM_KERNEL_JOBS:-$(nproc)}"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
build="$out/build"
mkdir -p "$build"

log() { echo "build.sh: $*" >&2; }

# A tarball is unpacked once into OUT_DIR/src.
scratch=("$build")
if [ -f "$src" ]; then
  tree="$out/src"
  scratch+=("$tree")
  if [ ! -f "$tree/.unpacked" ]; then
    log "unpacking $src"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar -xf "$src" -C "$tree" --strip-components=1
    touch "$tree/.unpacked"
  fi
  src="$tree"
fi
if [ ! -f "$src/Makefile" ] || [ ! -x "$src/scripts/kconfig/merge_config.sh" ]; then
  log "$src is not a Linux source tree"
  exit 1
fi
src="$(cd "$src" && pwd)"
log "source $(make -s -C "$src" kernelversion 2>/dev/null || echo '?') in $src"

# Reproducible-ish: no host name, user or date in the image.
export ARCH=x86_64
export KBUILD_BUILD_USER=agentvm KBUILD_BUILD_HOST=agentvm
export KBUILD_BUILD_TIMESTAMP="${KBUILD_BUILD_TIMESTAMP:-1970-01-01}"
kmake() { make -s -C "$src" O="$build" "$@"; }

kmake allnoconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
kmake olddefconfig

# Every line of the fragment must be in the result: `CONFIG_X=v` verbatim,
# `# CONFIG_X is not set` as no `CONFIG_X=` line.
dropped=""
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF -- "$line" "$build/.config" || {
        got="$(grep -E "^(# )?${line%%=*}[= ]" "$build/.config" || echo 'absent')"
        dropped="$dropped\n  $line (got: $got)"
      } ;;
    "# CONFIG_"*" is not set")
      name="${line#\# }"
      name="${name%% *}"
      ! grep -q "^$name=" "$build/.config" || dropped="$dropped\n  $line (got: $(grep "^$name=" "$build/.config"))" ;;
  esac
done <"$fragment"
if [ -n "$dropped" ]; then
  log "Kconfig did not keep these fragment options (unmet dependencies?):"
  printf '%b\n' "$dropped" >&2
  exit 1
fi
cp "$build/.config" "$out/config"
log "config ok: every option of $(basename "$fragment") is in $out/config"
[ "$config_only" -eq 0 ] || exit 0

start=$SECONDS
log "make -j$jobs vmlinux bzImage"
kmake -j"$jobs" vmlinux bzImage
for f in vmlinux arch/x86/boot/bzImage; do
  cp "$build/$f" "$out/$(basename "$f").tmp"
  mv "$out/$(basename "$f").tmp" "$out/$(basename "$f")"
done
log "built $out/vmlinux ($(stat -c %s "$out/vmlinux") bytes) and $out/bzImage ($(stat -c %s "$out/bzImage") bytes) in $((SECONDS - start)) s"
[ "${AGENTVM_KERNEL_KEEP_BUILD:-0}" = 1 ] || rm -rf "${scratch[@]}"
