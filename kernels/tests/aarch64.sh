#!/usr/bin/env bash
# The kernels' tests on 64-bit ARM, on an x86-64 machine: cross-built with
# Debian's Rust toolchain (`rustc-web`, whose packages include the aarch64
# standard library; rustup's targets cannot be downloaded here) and run under
# qemu-user on two CPU models: cortex-a53 (base NEON: the `neon` path) and
# cortex-a76 (with `dotprod`: the `neon-dotprod` path too). Every path must give
# the portable path's bits and match the f64 reference (tests/matmul.rs).
#
# Needs root and Debian's packages (it adds the arm64 architecture to dpkg and
# installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user); the
# Rust packages are only unpacked, under $ROOT, not installed.
# Usage: bash kernels/tests/aarch64.sh   (from the repository root)
# Exit 0: passed; 1: a test failed; 77: the toolchain could not be had.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ANJEON_CROSS_ROOT:-$PWD/target/cross-aarch64}
skip() { echo "skipped: aarch64 kernel tests ($1)" >&2; exit 77; }
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || skip "needs root and apt-get"

if [ ! -x "$ROOT/tc/usr/bin/rustc" ]; then
    export DEBIAN_FRONTEND=noninteractive
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed"
    apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null 2>&1 ||
        skip "gcc-aarch64-linux-gnu, libc6-dev-arm64-cross or qemu-user could not be installed"
    ver=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || skip "Debian has no rustc-web here"
    # The LLVM that rustc-web links: rust-web-llvm depends on llvm-NN.
    llvm=$(apt-cache show "rust-web-llvm=$ver" | sed -n 's/^Depends:.*llvm-\([0-9][0-9]*\).*/\1/p' | head -1)
    [ -n "$llvm" ] || skip "cannot tell which LLVM rustc-web $ver needs"
    # The runtime library package: libstd-rust-web-dev depends on libstd-rust-web-1.NN.
    rt=$(apt-cache show "libstd-rust-web-dev=$ver" | sed -n 's/^Depends:.*\(libstd-rust-web-1\.[0-9]*\) .*/\1/p' | head -1)
    [ -n "$rt" ] || skip "cannot tell rustc-web $ver's runtime library package"
    rm -rf "$ROOT/debs" "$ROOT/tc"
    mkdir -p "$ROOT/debs" "$ROOT/tc"
    (cd "$ROOT/debs" && apt-get download -qq "rustc-web=$ver" "libstd-rust-web-dev=$ver" "$rt=$ver" \
        "libstd-rust-web-dev:arm64=$ver" "$rt:arm64=$ver" "libllvm$llvm" >/dev/null 2>&1) ||
        skip "the rustc-web $ver packages could not be downloaded"
    for d in "$ROOT"/debs/*.deb; do dpkg -x "$d" "$ROOT/tc"; done
fi
export LD_LIBRARY_PATH="$ROOT/tc/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC="$ROOT/tc/usr/bin/rustc"
"$RUSTC" --version || skip "Debian's rustc does not start"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_DIR="$ROOT/target"
for cpu in cortex-a53 cortex-a76; do
    echo "aarch64 kernel tests, qemu -cpu $cpu:"
    log="$ROOT/test-$cpu.log"
    if ! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
        cargo test --release --locked -p anjeon-kernels --target aarch64-unknown-linux-gnu --lib --tests \
        -- --nocapture >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "FAIL: aarch64 kernel tests on $cpu (log: $log)" >&2
        exit 1
    fi
    grep -E 'kernel paths available|test result' "$log"
done
echo "ok: aarch64 kernel tests (neon and neon-dotprod against the portable path)"
