#!/usr/bin/env bash
# Installs Immutant from this checkout: the `cargo immutant` CLI (cargo install --path cli), then
# a server built from the same source (cargo immutant install). Needs only the Rust toolchain.
# Arguments go to `cargo immutant install` (for example --force to rebuild the server).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh needs the Rust toolchain (cargo); install it with rustup, then run ./install.sh again" >&2
  exit 1
fi

cargo install --locked --path cli

bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
"$bin/cargo-immutant" immutant install "$@"

case ":$PATH:" in
  *":$bin:"*) ;;
  *) echo "Add $bin to your PATH so that \`cargo immutant\` finds the CLI." ;;
esac
