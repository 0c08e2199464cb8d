#!/usr/bin/env bash
# A throwaway RabbitMQ for tests and local runs, without systemd and without
# touching /etc/rabbitmq, /var/lib/rabbitmq or port 5672.
#
#   scripts/broker.sh start|stop|restart|status [PORT]     (default PORT 5772)
#   scripts/broker.sh ctl [PORT] ARGS...                   rabbitmqctl for this node
#
# Listens on 127.0.0.1 only. Data, logs, cookie and its own epmd live in
# $WARREN_BROKER_DIR (default /tmp/warren-broker)/PORT and are wiped on start.
# Ports used besides PORT: TLS PORT+10000 (only with TLS_DIR), dist PORT+20000,
# epmd PORT+30000.
# TLS: with TLS_DIR set at start (a directory made by scripts/test-ca.sh), AMQP
# over TLS also listens on 127.0.0.1:PORT+10000 with TLS_DIR/server.pem and
# server.key (certificate for localhost and 127.0.0.1). Client certificates are
# checked against TLS_DIR/ca.pem, and demanded if TLS_REQUIRE_CLIENT_CERT=true.
# Users (from a definitions file): guest/guest on "/" and "/app" (administrator),
# app/secret on "/app" only.
# Only processes whose PIDs this script recorded are ever signalled.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CMD=${1:-status}
shift || true
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then PORT=$1; shift; fi
PORT=${PORT:-5772}
BASE=${WARREN_BROKER_DIR:-/tmp/warren-broker}/$PORT
TLS_PORT=$((PORT + 10000))
DIST_PORT=$((PORT + 20000))
EPMD_PORT=$((PORT + 30000))
NODENAME=warren$PORT@localhost
PY=$ROOT/.cache/venv/bin/python
[[ -x $PY ]] || PY=python3

export HOME=$BASE LC_ALL=C.UTF-8 LANG=C.UTF-8
export ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME=$NODENAME RABBITMQ_DIST_PORT=$DIST_PORT
export RABBITMQ_CONFIG_FILE=$BASE/rabbitmq.conf
export RABBITMQ_ADVANCED_CONFIG_FILE=$BASE/advanced.config
export RABBITMQ_CONF_ENV_FILE=$BASE/rabbitmq-env.conf
export RABBITMQ_MNESIA_BASE=$BASE/mnesia RABBITMQ_LOG_BASE=$BASE/log
export RABBITMQ_PID_FILE=$BASE/rabbit.pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/enabled_plugins
# Never let erl or the CLI start a shared `epmd -daemon`: this node has its own.
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"

log() { echo "[broker $PORT] $*" >&2; }

# pid_of PIDFILE PATTERN: prints the pid if it is alive and its command line matches.
pid_of() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
  echo "$pid"
}

alive() { [[ -r /proc/$1/stat ]] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null; }

wait_gone() {
  local n=$(($2 * 20))
  while alive "$1" && ((n-- > 0)); do sleep 0.05; done
  ! alive "$1"
}

amqp_ready() {
  "$PY" - "$PORT" <<'PY' >/dev/null 2>&1
import socket, sys
# A complete AMQP login as app on /app: the broker is ready for clients.
port = int(sys.argv[1])
try:
    import pika
except ImportError:
    s = socket.create_connection(("127.0.0.1", port), 1); s.close(); sys.exit(0)
params = pika.ConnectionParameters("127.0.0.1", port, "/app", pika.PlainCredentials("app", "secret"),
                                   connection_attempts=1, socket_timeout=2, blocked_connection_timeout=2)
pika.BlockingConnection(params).close()
PY
}

write_config() {
  mkdir -p "$BASE/log" "$BASE/mnesia"
  : >"$BASE/rabbitmq-env.conf"
  echo '[].' >"$BASE/enabled_plugins"
  cat >"$BASE/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$PORT
loopback_users = none
definitions.import_backend = local_filesystem
definitions.local.path = $BASE/definitions.json
log.console = false
log.file = rabbit.log
log.file.level = info
CONF
  if [[ -n ${TLS_DIR:-} ]]; then
    cat >>"$BASE/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = ${TLS_REQUIRE_CLIENT_CERT:-false}
CONF
  fi
  # Definitions imported at boot replace the default user and vhost, so both are listed.
  cat >"$BASE/definitions.json" <<'JSON'
{
  "users": [
    {"name": "guest", "password": "guest", "tags": ["administrator"]},
    {"name": "app", "password": "secret", "tags": []}
  ],
  "vhosts": [{"name": "/"}, {"name": "/app"}],
  "permissions": [
    {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "guest", "vhost": "/app", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "app", "vhost": "/app", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
JSON
}

do_start() {
  if pid_of "$BASE/server.pid" rabbitmq-server >/dev/null; then
    log "already running"
    return 0
  fi
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || { log "rabbitmq-server is not installed: run scripts/setup.sh"; return 1; }
  if [[ -n ${TLS_DIR:-} ]]; then
    local f
    for f in ca.pem server.pem server.key; do
      [[ -r $TLS_DIR/$f ]] || { log "TLS_DIR=$TLS_DIR has no $f: run scripts/test-ca.sh $TLS_DIR"; return 1; }
    done
    [[ ${TLS_REQUIRE_CLIENT_CERT:-false} =~ ^(true|false)$ ]] || { log "TLS_REQUIRE_CLIENT_CERT must be true or false"; return 1; }
    TLS_DIR=$(cd "$TLS_DIR" && pwd)  # the broker runs from $BASE
  fi
  local t0=$SECONDS
  if [[ ${KEEP_DATA:-0} == 1 && -d $BASE/mnesia ]]; then
    rm -f "$BASE"/*.pid  # a restart after a crash: the broker recovers its data
  else
    rm -rf "$BASE"
  fi
  write_config
  # An epmd already on this node's port (one a crashed run left behind) is
  # as good as a new one: a second could not bind it.
  if ! epmd_listening; then
    setsid epmd -address 127.0.0.1 -port "$EPMD_PORT" </dev/null >"$BASE/log/epmd.log" 2>&1 &
    echo $! >"$BASE/epmd.pid"
  fi
  # The node registers with epmd as it boots: a node started before epmd
  # listens fails with "nodistribution".
  local epmd_deadline=$((SECONDS + 10))
  until epmd_listening; do
    if ((SECONDS > epmd_deadline)); then
      log "epmd did not start on 127.0.0.1:$EPMD_PORT:"
      cat "$BASE/log/epmd.log" >&2 || true
      return 1
    fi
    sleep 0.05
  done
  (cd "$BASE" && exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >"$BASE/log/startup.out" 2>&1) &
  echo $! >"$BASE/server.pid"
  local deadline=$((SECONDS + ${STARTUP_TIMEOUT:-90}))
  until amqp_ready; do
    if ! pid_of "$BASE/server.pid" rabbitmq-server >/dev/null; then
      log "broker exited during startup:"
      tail -n 30 "$BASE/log/startup.out" "$BASE"/log/*.log >&2 || true
      do_stop >/dev/null 2>&1 || true
      return 1
    fi
    if ((SECONDS > deadline)); then
      log "not ready after ${STARTUP_TIMEOUT:-90}s"
      tail -n 30 "$BASE"/log/*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
  # The TLS listener starts right after the plain one: wait until it accepts too.
  if [[ -n ${TLS_DIR:-} ]]; then
    until (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null; do
      if ((SECONDS > deadline)); then
        log "TLS listener not up on 127.0.0.1:$TLS_PORT after ${STARTUP_TIMEOUT:-90}s"
        tail -n 30 "$BASE"/log/*.log >&2 || true
        return 1
      fi
      sleep 0.1
    done
    log "ready in $((SECONDS - t0))s on amqp://127.0.0.1:$PORT and amqps://localhost:$TLS_PORT"
  else
    log "ready in $((SECONDS - t0))s on amqp://127.0.0.1:$PORT"
  fi
}

epmd_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$EPMD_PORT") 2>/dev/null
}

# The pid of the epmd listening on this node's port, whoever started it.
epmd_on_port() {
  ss -ltnpH "sport = :$EPMD_PORT" 2>/dev/null | grep -o '"epmd",pid=[0-9]*' | head -n1 | cut -d= -f2
}

do_stop() {
  local pid beam
  beam=$(pid_of "$BASE/rabbit.pid" beam || true)
  if [[ ${FAST_STOP:-0} == 1 && -n $beam ]]; then
    kill -KILL "$beam" 2>/dev/null || true
    wait_gone "$beam" 5 || true
  fi
  if pid=$(pid_of "$BASE/server.pid" rabbitmq-server); then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 30 || kill -KILL "$pid" 2>/dev/null || true
  fi
  if [[ -n $beam ]] && alive "$beam"; then
    kill -TERM "$beam" 2>/dev/null || true
    wait_gone "$beam" 20 || kill -KILL "$beam" 2>/dev/null || true
  fi
  for pid in $(pid_of "$BASE/epmd.pid" epmd) $(epmd_on_port); do
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$BASE/server.pid" "$BASE/epmd.pid" "$BASE/rabbit.pid"
  log "stopped"
}

case $CMD in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    if pid_of "$BASE/server.pid" rabbitmq-server >/dev/null && amqp_ready; then echo running; else echo stopped; exit 3; fi ;;
  ctl)
    pid_of "$BASE/epmd.pid" epmd >/dev/null || { log "not running"; exit 3; }
    exec /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODENAME" "$@" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
