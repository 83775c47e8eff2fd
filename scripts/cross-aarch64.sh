# Sourced: builds for aarch64-unknown-linux-gnu from this x86_64 machine with Debian's cross
# toolchain and the arm64 libblkid (multiarch), no emulated compiler; installs them and the
# Rust target when missing. Used by build-static.sh (ARCH=aarch64) and test-aarch64.sh.
"$ROOT/scripts/apt-install.sh" --foreign-arch arm64 libblkid-dev libclang-dev file \
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross libblkid-dev:arm64
rustup target list --installed 2>/dev/null | grep -x aarch64-unknown-linux-gnu >/dev/null \
  || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen (blkid-sys) parses the arm64 headers with the cross toolchain's system root.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/include/aarch64-linux-gnu -I/usr/include"
export PKG_CONFIG_ALLOW_CROSS=1
