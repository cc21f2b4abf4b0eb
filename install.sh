#!/usr/bin/env bash
# Installs Immutant from this checkout: the `cargo immutant` CLI and a server, both built by one
# `cargo build` (so they share every dependency), the CLI copied where `cargo install` puts
# binaries, the server installed with `cargo immutant install --from`. Needs only the Rust
# toolchain. Arguments go to `cargo immutant install` (for example --force to reinstall).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh needs the Rust toolchain (cargo); install it with rustup, then run ./install.sh again" >&2
  exit 1
fi

cargo build --release --locked -p cargo-immutant -p immutant-server
target="${CARGO_TARGET_DIR:-$PWD/target}/release"

bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
mkdir -p "$bin"
install -m 755 "$target/cargo-immutant" "$bin/cargo-immutant"
"$bin/cargo-immutant" immutant install --from "$target/immutant-server" "$@"

case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "Add $bin to your PATH so that \`cargo immutant\` finds the CLI." ;;
esac
