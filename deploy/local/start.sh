#!/usr/bin/env bash
# The local demo in one command: nats-server (JetStream) and PostgreSQL on 127.0.0.1 with their
# data under .local/, a demo multi-tenant database, the stream and buckets (provisioned with
# `rollback-agent provision`), the agent, and the console in front of it.
# Servers that already run (pid files) are reused and left running; what this script started is
# stopped when the console ends (`quit`, Ctrl-D, Ctrl-C). With stdin from a pipe the console
# reads commands from it (deploy/local/demo-script.txt runs the whole rollback).
#   NATS_PORT (default 4222), PG_PORT (default: first free from 5432), METRICS_PORT (9464),
#   ROLLBACK_LOCAL_DIR (default .local), ROLLBACK_PROFILE (release; dev builds faster), or
#   ROLLBACK_AGENT_BIN and ROLLBACK_BOT_BIN (binaries already built: no build),
#   DEMO_TENANTS, DEMO_ROWS, DEMO_DECOYS=1 (decoy schemas too); extra args go to `run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

deploy/local/install-deps.sh

local_dir=${ROLLBACK_LOCAL_DIR:-$root/.local}
mkdir -p "$local_dir"
local_dir=$(cd "$local_dir" && pwd)
logs=$local_dir/logs
nats_dir=$local_dir/nats
pg_data=$local_dir/pg
pg_run=$local_dir/pg-run
mkdir -p "$logs" "$nats_dir"

say() { printf 'start: %s\n' "$*"; }
die() { printf 'start: %s\n' "$*" >&2; exit 1; }

# Polls PROBE (a function) every PAUSE seconds until it succeeds. Returns 1 when the process PID
# exits first (the tail of LOG is printed), 2 when LIMIT seconds pass.
poll_ready() {
  local pid=$1 log=$2 limit=$3 pause=$4 probe=$5
  local deadline=$((SECONDS + limit))
  until "$probe" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      return 1
    fi
    ((SECONDS < deadline)) || return 2
    sleep "$pause"
  done
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# PostgreSQL refuses to run as root; its files then belong to the postgres user. From / so that
# an unreadable working directory cannot trouble it (every path here is absolute).
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Same lookup order as the test support library (tests/src/binaries.rs).
nats_bin() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then echo "$NATS_SERVER_BIN"
  elif command -v nats-server >/dev/null 2>&1; then command -v nats-server
  else echo "$root/.venv/bin/nats-server"
  fi
}
pg_bin_dir() {
  if [ -n "${PG_BIN_DIR:-}" ]; then echo "$PG_BIN_DIR"
  elif command -v postgres >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v postgres)")"
  else dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1)"
  fi
}

started_nats_pid=
started_pg=
agent_pid=

stop_pid() { # pid, seconds: TERM, wait with a deadline, then KILL
  local pid=$1 deadline=$((SECONDS + $2))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$agent_pid" ]; then stop_pid "$agent_pid" 30; fi
  if [ -n "$started_nats_pid" ]; then
    say "stopping nats-server ($started_nats_pid)"
    stop_pid "$started_nats_pid" 10
    rm -f "$nats_dir/nats.pid"
  fi
  if [ -n "$started_pg" ]; then
    say "stopping PostgreSQL"
    as_pg "$(pg_bin_dir)/pg_ctl" stop -D "$pg_data" -m fast -w >/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- nats-server -------------------------------------------------------------------------
nats_pid=$(cat "$nats_dir/nats.pid" 2>/dev/null || true)
if [ -n "$nats_pid" ] && grep -qa nats-server "/proc/$nats_pid/cmdline" 2>/dev/null; then
  nats_port=$(cat "$nats_dir/port" 2>/dev/null || echo "${NATS_PORT:-4222}")
  say "nats-server already running (pid $nats_pid, port $nats_port)"
else
  nats_port=${NATS_PORT:-4222}
  bin=$(nats_bin)
  [ -x "$bin" ] || die "nats-server not found at $bin: run deploy/local/install-deps.sh"
  echo "$nats_port" >"$nats_dir/port"
  # Its own session: Ctrl-C reaches the script, which stops the server after the agent.
  setsid "$bin" -js -sd "$nats_dir" -a 127.0.0.1 -p "$nats_port" -P "$nats_dir/nats.pid" \
    >>"$logs/nats.log" 2>&1 </dev/null &
  started_nats_pid=$!
  # The client port greets with INFO only once JetStream is up.
  nats_greets() { (exec 3<>"/dev/tcp/127.0.0.1/$nats_port" && read -r -t 2 line <&3 && [[ $line == INFO* ]]); }
  poll_ready "$started_nats_pid" "$logs/nats.log" 30 0.1 nats_greets || case $? in
    1) started_nats_pid=; die "nats-server exited (log: $logs/nats.log)" ;;
    *) die "nats-server not ready after 30s (log: $logs/nats.log)" ;;
  esac
  say "nats-server started (pid $started_nats_pid, port $nats_port, log $logs/nats.log)"
fi

# --- PostgreSQL --------------------------------------------------------------------------
pg_bin=$(pg_bin_dir)
[ -x "$pg_bin/postgres" ] || die "PostgreSQL not found in $pg_bin: run deploy/local/install-deps.sh"
if [ ! -f "$pg_data/PG_VERSION" ]; then
  mkdir -p "$pg_data"
  if is_root; then chown postgres: "$pg_data"; fi
  as_pg test -w "$pg_data" ||
    die "the postgres user cannot write $pg_data: a parent folder is probably private"
  say "initdb $pg_data"
  as_pg "$pg_bin/initdb" -A trust -U postgres -E UTF8 --locale=C -D "$pg_data" >>"$logs/initdb.log" 2>&1 ||
    { tail -n 20 "$logs/initdb.log" >&2; die "initdb failed (log: $logs/initdb.log)"; }
fi
if as_pg "$pg_bin/pg_ctl" status -D "$pg_data" >/dev/null 2>&1; then
  pg_port=$(sed -n 4p "$pg_data/postmaster.pid")
  say "PostgreSQL already running (port $pg_port)"
else
  if [ -n "${PG_PORT:-}" ]; then
    pg_port=$PG_PORT
  else
    pg_port=5432
    while port_in_use "$pg_port"; do pg_port=$((pg_port + 1)); done
  fi
  mkdir -p "$pg_run"
  touch "$logs/postgres.log"
  if is_root; then chown postgres: "$pg_run" "$logs/postgres.log"; fi
  # pg_ctl puts the server in its own session and waits until it accepts connections. Set before
  # the start so that a server that came up too slowly is still stopped on the way out.
  started_pg=1
  as_pg "$pg_bin/pg_ctl" start -w -t 60 -D "$pg_data" -l "$logs/postgres.log" \
    -o "-p $pg_port -k '$pg_run' -c listen_addresses=127.0.0.1" >/dev/null ||
    { tail -n 20 "$logs/postgres.log" >&2; die "PostgreSQL did not start (log: $logs/postgres.log)"; }
  say "PostgreSQL started (port $pg_port, log $logs/postgres.log)"
fi

# --- demo database ----------------------------------------------------------------------
export NATS_URL="nats://127.0.0.1:$nats_port"
demo_db=${ROLLBACK_DEMO_DB:-rollback_demo}
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$demo_db"
if [ -n "${ROLLBACK_AGENT_BIN:-}" ] && [ -n "${ROLLBACK_BOT_BIN:-}" ]; then
  # Binaries built already (the test suite's): used as they are.
  agent_bin=$ROLLBACK_AGENT_BIN
  bot_bin=$ROLLBACK_BOT_BIN
else
  profile=${ROLLBACK_PROFILE:-release}
  say "building the agent and the bot ($profile)"
  cargo build --profile "$profile" -p rollback-agent -p rollback-bot --bins >>"$logs/build.log" 2>&1 ||
    { tail -n 30 "$logs/build.log" >&2; die "build failed (log: $logs/build.log)"; }
  target_dir=${CARGO_TARGET_DIR:-$root/target}
  if [ "$profile" = dev ]; then profile_dir=debug; else profile_dir=$profile; fi
  agent_bin=$target_dir/$profile_dir/rollback-agent
  bot_bin=$target_dir/$profile_dir/rollback-bot
fi
if ! as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$demo_db'" | grep -q 1; then
  as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$demo_db"
  say "generating the demo multi-tenant database $demo_db"
  decoys=()
  if [ "${DEMO_DECOYS:-}" = 1 ]; then decoys=(--decoys); fi
  "$agent_bin" demo-db --tenants "${DEMO_TENANTS:-20}" --rows "${DEMO_ROWS:-50}" "${decoys[@]}" >>"$logs/demo-db.log" 2>&1 ||
    { tail -n 20 "$logs/demo-db.log" >&2; die "demo database generation failed"; }
fi

# --- the demo application ----------------------------------------------------------------
# The runbooks drive a Laravel application; the demo's stands in for it: an `artisan` that says
# what it was asked, a git checkout with the stable tag, and the .env from before the migration.
app_dir=$local_dir/demo-app
if [ ! -d "$app_dir/.git" ]; then
  mkdir -p "$app_dir"
  printf '#!/bin/sh\necho "artisan (demo): $*"\n' >"$app_dir/artisan"
  chmod +x "$app_dir/artisan"
  echo "APP_ENV=demo" >"$app_dir/.env"
  cp "$app_dir/.env" "$local_dir/env.original"
  git -C "$app_dir" init -q
  git -C "$app_dir" add artisan
  git -C "$app_dir" -c user.name=demo -c user.email=demo@localhost commit -q -m "the stable release"
  git -C "$app_dir" tag pre-schema-tenancy
  say "demo application in $app_dir"
fi
metrics_port=${METRICS_PORT:-9464}
# The shipped runbooks, with their parameters (and their rehearsal's) pointed at the demo.
runbooks=$local_dir/runbooks
mkdir -p "$runbooks"
for book in "$root"/deploy/runbooks/*.toml; do
  name=$(basename "$book" .toml)
  sed -e "s|^app_dir = .*|app_dir = \"$app_dir\"|" \
      -e "s|^artisan = .*|artisan = \"./artisan\"|" \
      -e "s|^backup_dir = .*|backup_dir = \"$local_dir/backups/$name\"|" \
      -e "s|^env_backup = .*|env_backup = \"$local_dir/env.original\"|" \
      -e "s|^health_url = .*|health_url = \"http://127.0.0.1:$metrics_port/healthz\"|" \
      -e "s|^params = { app_dir = .*|params = { app_dir = \"$app_dir\", health_url = \"http://127.0.0.1:$metrics_port/healthz\", backup_dir = \"$local_dir/backups/$name/rehearsals\" }|" \
      "$book" >"$runbooks/$name.toml"
done

# --- agent -------------------------------------------------------------------------------
user=$(id -un)
config=$local_dir/agent.toml
# The key the agent signs its events with: made once, kept with the local stream.
signing_key=$local_dir/event-signing.key
if [ ! -s "$signing_key" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$signing_key")
fi
# Written each time (it follows this script); deploy/agent.example.toml explains every setting.
cat >"$config" <<EOF
# Written by deploy/local/start.sh for the local demo (see deploy/agent.example.toml).
[agent]
name = "local-agent"
runbooks_dir = "$runbooks"
lease_ttl = "5s"

[databases.app]

[events]
signing_key_id = "local-agent"
signing_key_file = "$signing_key"

[policy.users]
"$user" = ["admin"]
# The demo's approvers, played from the console with: as reviewer-1 approve ...
"reviewer-1" = ["approve"]
"reviewer-2" = ["approve"]

[escalation]
stall_after = "15m"
[[escalation.levels]]
name = "team lead"
mentions = ["@team-lead"]

[metrics]
listen = "127.0.0.1:$metrics_port"
EOF
console_config=$local_dir/console.toml
cat >"$console_config" <<EOF
# Written by deploy/local/start.sh (see deploy/bot.example.toml).
[nats]
url = "$NATS_URL"

[console]
user = "$user"
others = ["reviewer-1", "reviewer-2"]
EOF
say "NATS_URL=$NATS_URL DATABASE_URL=$DATABASE_URL"
# The stream and buckets, created (or put back to their settings) before the agent starts: the
# agent itself never creates or changes them. The local server has no users, so the agent's own
# connection provisions; with the shipped accounts it is the `admin` user's job (README).
"$agent_bin" provision --config "$config" >>"$logs/provision.log" 2>&1 ||
  { tail -n 20 "$logs/provision.log" >&2; die "provisioning failed (log: $logs/provision.log)"; }
say "stream and buckets provisioned (log: $logs/provision.log)"
# In the background so that TERM and INT run the cleanup at once instead of after the agent exits.
"$agent_bin" run --config "$config" "$@" </dev/null >>"$logs/agent.log" 2>&1 &
agent_pid=$!
agent_ready() {
  (exec 3<>"/dev/tcp/127.0.0.1/$metrics_port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 &&
    read -r -t 2 reply <&3 && [[ $reply == *" 200"* ]])
}
poll_ready "$agent_pid" "$logs/agent.log" 60 0.2 agent_ready || case $? in
  1) agent_pid=; die "the agent exited (log: $logs/agent.log)" ;;
  *) die "the agent is not ready after 60s (log: $logs/agent.log)" ;;
esac
say "agent ready (log $logs/agent.log; metrics and health on http://127.0.0.1:$metrics_port/)"

# --- console -----------------------------------------------------------------------------
if [ -t 0 ]; then
  cat <<'EOF'

  The console speaks /rollback's commands (`help` lists them). Try:
    plan tenancy-rollback
    start tenancy-rollback --dry-run        # or for real, without --dry-run
    next $run                              # $run: the run of the last answer
    check $run assess 1-4
    wait $run                              # until the run needs a person
    as reviewer-1 approve $run go-ahead    # the approvers, played from here
    replay $run
  deploy/local/demo-script.txt has the whole rollback. `quit` stops everything.

EOF
fi
status=0
"$bot_bin" --config "$console_config" console || status=$?
exit "$status"
