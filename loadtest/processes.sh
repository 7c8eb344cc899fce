# Sourced by loadtest/callgrind, loadtest/floor/run and loadtest/tail: the servers a measuring
# script starts on 127.0.0.1, found free ports, configured (nginx), waited for and stopped,
# every wait bounded. The caller sets
# PIDS=() and TMP, and appends each server's PID to PIDS.

# The first port from $1 that nothing listens on (at most 200 tried). The probe connects and
# sends nothing, so no server counts it as a broken request.
free_port() {
  local p=$1
  while (: >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
    p=$((p + 1))
    ((p < $1 + 200)) || { echo "no free port in $1-$p" >&2; exit 1; }
  done
  echo "$p"
}

# Waits at most $2 seconds for a listener on port $1.
wait_port() {
  for _ in $(seq 1 $(($2 * 10))); do
    (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1 after $2 s" >&2
  exit 1
}

# An nginx config on stdout: NAME (its folder under $TMP, made here: pid, logs, temp files),
# worker_connections, the http block's server blocks. One worker, no access log.
nginx_conf() {
  mkdir -p "$TMP/$1"
  printf '%s\n' "worker_processes 1;" "daemon off;" "pid $TMP/$1/nginx.pid;" \
    "error_log $TMP/$1/error.log warn;" "events { worker_connections $2; }" "http {" \
    "  access_log off;" "  keepalive_requests 1000000;" \
    "  client_body_temp_path $TMP/$1/body;" "  proxy_temp_path $TMP/$1/proxy;" "$3" "}"
}

# Stops PID $1: SIGTERM, then SIGKILL if it is still there after $2 seconds.
stop() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# Every server stopped and the scratch folder gone on any exit; Ctrl-C and SIGTERM exit.
cleanup() {
  for p in "${PIDS[@]}"; do stop "$p" 10; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
