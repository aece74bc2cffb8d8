#!/usr/bin/env bash
# Side-by-side benchmark on loopback: mosquitto direct, through HAProxy in
# TCP mode, and through mqtt-jwt-proxy; the publish/subscribe and memory
# scenarios also through a proxy whose configuration has topic rules
# ("rules": every session framed and each PUBLISH and SUBSCRIBE checked).
# Every scenario runs once per target in turn (direct, haproxy, proxy, then
# haproxy, proxy, direct, ...) for -rounds rounds, and the table at the end
# gives each figure's median per target with the ratios proxy/haproxy,
# proxy/direct and rules/proxy. The pool scenario compares the proxy in
# front of one broker with the proxy in front of three (target pool: a
# client_id pool), with the ratio pool/proxy. The load tool, the proxies
# and the brokers share the machine's cores, so absolute figures say little
# about another machine; the ratios, taken in one run, are the result.
#
#   bash cmd/mqtt-jwt-bench/bench/run.sh          # about 10 minutes
#   bash cmd/mqtt-jwt-bench/bench/run.sh -quick   # about 2 minutes
#   bash cmd/mqtt-jwt-bench/bench/run.sh -n 5000 -rounds 5 -duration 8 -only 'connect|memory|pending' -out /tmp/bench
#
# Needs go, mosquitto and haproxy (installed with apt-get when missing and
# run as root). Uses the loopback ports 18830 to 18839.
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Flags:
  -quick         short runs (1 s) and 1,000 held connections: about 2 minutes
  -n N           connections held in the memory and pending scenarios (default 10000)
  -rounds R      runs per scenario and target (default 3)
  -duration S    seconds per run (default 5)
  -only REGEX    run only the scenarios whose name matches
  -out DIR       keep results, logs, keys and configs in DIR (default: a new temporary directory)
EOF
}

n=10000 rounds=3 duration=5 only=. out="" quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    -quick) quick=1 ;;
    -n) n=$2; shift ;;
    -rounds) rounds=$2; shift ;;
    -duration) duration=$2; shift ;;
    -only) only=$2; shift ;;
    -out) out=$2; shift ;;
    -h|-help|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  duration=1
  n=1000
fi

cd "$(dirname "$0")/../../.."
bench_dir=cmd/mqtt-jwt-bench/bench
out=${out:-$(mktemp -d -t mqtt-jwt-bench.XXXXXX)}
mkdir -p "$out/bin"
results=$out/results.jsonl
: >"$results"

# Ports: the broker, HAProxy, and one proxy per signing algorithm (a proxy's
# authentication chain verifies one kind of key).
port_broker=18830 port_haproxy=18831 port_haproxy_jwt=18835
declare -A port_proxy=([hs256]=18832 [rs256]=18833 [es256]=18834 [rules]=18839)
# The pool: the broker above and two more, behind a proxy of their own.
port_pool=18838 ports_pool_brokers=(18836 18837)
secret=bench-secret-$RANDOM$RANDOM$RANDOM

say() { printf '%s\n' "$*" >&2; }

# --- tools ----------------------------------------------------------------
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
mosquitto_bin=$(find_tool mosquitto)
haproxy_bin=$(find_tool haproxy)
if [ -z "$mosquitto_bin" ] || [ -z "$haproxy_bin" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "run.sh: needs mosquitto and haproxy: apt-get install -y mosquitto haproxy"
    exit 1
  fi
  say "installing mosquitto and haproxy"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto haproxy >/dev/null
  mosquitto_bin=$(find_tool mosquitto)
  haproxy_bin=$(find_tool haproxy)
fi

# Every proxied connection costs the proxy two descriptors (client and
# broker side): N connections need 2N plus some, in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ $((2 * n + 200)) -gt "$nofile" ]; then
  fit=$(((nofile - 200) / 2))
  say "open files limit $nofile: holding $fit connections instead of $n (a proxy needs two descriptors each)"
  n=$fit
fi

for port in "$port_broker" "$port_haproxy" "$port_haproxy_jwt" "${port_proxy[@]}" "$port_pool" "${ports_pool_brokers[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "run.sh: port $port is in use; stop what listens there first"
    exit 1
  fi
done

say "building into $out/bin"
go build -o "$out/bin/mqtt-jwt-proxy" ./cmd/mqtt-jwt-proxy
go build -o "$out/bin/mqtt-jwt-bench" ./cmd/mqtt-jwt-bench
proxy_bin=$out/bin/mqtt-jwt-proxy
bench=$out/bin/mqtt-jwt-bench

"$proxy_bin" keygen -type rsa -out "$out/rsa" -force >/dev/null
"$proxy_bin" keygen -type ec -out "$out/ec" -force >/dev/null

# One proxy configuration per algorithm, at the proxy's defaults otherwise
# (log level info, sampled).
write_proxy_config() { # name port auth-lines
  cat >"$out/proxy-$1.yaml" <<EOF
listeners:
  - name: bench
    bind: "127.0.0.1:$2"
upstream:
  address: "127.0.0.1:$port_broker"
authentication:
  - mechanism: jwt
$3
log:
  level: info
  format: json
EOF
}
write_proxy_config hs256 "${port_proxy[hs256]}" "    algorithm: hmac-based
    secret: \"$secret\""
write_proxy_config rs256 "${port_proxy[rs256]}" "    algorithm: public-key
    public_key: \"$out/rsa/public.pem\""
write_proxy_config es256 "${port_proxy[es256]}" "    algorithm: public-key
    public_key: \"$out/ec/public.pem\""
# The pool proxy: HS256, three brokers balanced by client identifier.
cat >"$out/proxy-pool.yaml" <<EOF
listeners:
  - name: bench
    bind: "127.0.0.1:$port_pool"
upstream:
  servers:
    - address: "127.0.0.1:$port_broker"
    - address: "127.0.0.1:${ports_pool_brokers[0]}"
    - address: "127.0.0.1:${ports_pool_brokers[1]}"
  balance: client_id
  health_check: {interval: 2s}
authentication:
  - mechanism: jwt
    algorithm: hmac-based
    secret: "$secret"
log:
  level: info
  format: json
EOF
for port in "${ports_pool_brokers[@]}"; do
  sed "s/^listener $port_broker /listener $port /" "$bench_dir/mosquitto.conf" >"$out/mosquitto-$port.conf"
done
# The same as hs256, with rules that allow what the load tool does (its
# topics are under bench/) and deny anything else: every session framed,
# every PUBLISH and SUBSCRIBE checked against the rules.
write_proxy_config rules "${port_proxy[rules]}" "    algorithm: hmac-based
    secret: \"$secret\""
cat >>"$out/proxy-rules.yaml" <<EOF
authorization:
  rules:
    - {permission: allow, action: all, topic: "bench/#"}
  no_match: deny
EOF

# --- processes --------------------------------------------------------------
declare -A pid_proxy=()
pid_broker="" pid_haproxy="" pid_haproxy_jwt="" pid_pool="" pids_pool_brokers=()

wait_port() { # port pid name
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then say "$3 exited; see $out/$3.log"; tail -5 "$out/$3.log" >&2; exit 1; fi
    sleep 0.05
  done
  say "$3 is not listening on $1 after 5 s"
  exit 1
}

start_all() {
  "$mosquitto_bin" -c "$bench_dir/mosquitto.conf" >>"$out/mosquitto.log" 2>&1 &
  pid_broker=$!
  wait_port "$port_broker" "$pid_broker" mosquitto
  for port in "${ports_pool_brokers[@]}"; do
    "$mosquitto_bin" -c "$out/mosquitto-$port.conf" >>"$out/mosquitto-$port.log" 2>&1 &
    pids_pool_brokers+=($!)
    wait_port "$port" "$!" "mosquitto-$port"
  done
  "$haproxy_bin" -db -f "$bench_dir/haproxy.cfg" >>"$out/haproxy.log" 2>&1 &
  pid_haproxy=$!
  BENCH_SECRET=$secret "$haproxy_bin" -db -f "$bench_dir/haproxy-jwt.cfg" >>"$out/haproxy-jwt.log" 2>&1 &
  pid_haproxy_jwt=$!
  for alg in hs256 rs256 es256 rules; do
    "$proxy_bin" serve -config "$out/proxy-$alg.yaml" 2>>"$out/proxy-$alg.log" &
    pid_proxy[$alg]=$!
  done
  "$proxy_bin" serve -config "$out/proxy-pool.yaml" 2>>"$out/proxy-pool.log" &
  pid_pool=$!
  wait_port "$port_haproxy" "$pid_haproxy" haproxy
  wait_port "$port_haproxy_jwt" "$pid_haproxy_jwt" haproxy-jwt
  for alg in hs256 rs256 es256 rules; do
    wait_port "${port_proxy[$alg]}" "${pid_proxy[$alg]}" "proxy-$alg"
  done
  wait_port "$port_pool" "$pid_pool" proxy-pool
}

stop_all() {
  local pids=("${pid_proxy[@]}" $pid_pool $pid_haproxy $pid_haproxy_jwt $pid_broker "${pids_pool_brokers[@]}")
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  pid_proxy=() pid_pool="" pid_haproxy="" pid_haproxy_jwt="" pid_broker="" pids_pool_brokers=()
}
trap stop_all EXIT

# --- runs -------------------------------------------------------------------
failures=0

# run_target scenario round target alg mode args...: one run of the load
# tool against target, its JSON line appended to the results. In the
# pending scenario, haproxy is the instance that reads the CONNECT and
# verifies its token (haproxy-jwt.cfg), the proxy's job before
# authentication.
run_target() {
  local scenario=$1 round=$2 target=$3 alg=$4 mode=$5
  shift 5
  local addr pids=(-pid "broker=$pid_broker")
  case $target in
    direct) addr=127.0.0.1:$port_broker ;;
    haproxy) if [[ $scenario == pending* ]]; then
        addr=127.0.0.1:$port_haproxy_jwt pids+=(-pid "hop=$pid_haproxy_jwt")
      else
        addr=127.0.0.1:$port_haproxy pids+=(-pid "hop=$pid_haproxy")
      fi ;;
    proxy) addr=127.0.0.1:${port_proxy[$alg]} pids+=(-pid "hop=${pid_proxy[$alg]}") ;;
    # Three brokers share the work: none of them is "the broker".
    pool) addr=127.0.0.1:$port_pool pids=(-pid "hop=$pid_pool") ;;
    rules) addr=127.0.0.1:${port_proxy[rules]} pids+=(-pid "hop=${pid_proxy[rules]}") ;;
  esac
  local line
  if line=$("$bench" "$mode" -addr "$addr" "${pids[@]}" -scenario "$scenario" -target "$target" -round "$round" "$@" 2>>"$out/bench.log"); then
    printf '%s\n' "$line" >>"$results"
    printf '  %-8s %s\n' "$target" "$(summary "$line")" >&2
  else
    failures=$((failures + 1))
    [ -n "$line" ] && printf '%s\n' "$line" >>"$results"
    printf '  %-8s FAILED; see %s\n' "$target" "$out/bench.log" >&2
    tail -3 "$out/bench.log" >&2
  fi
}

# summary picks the headline figures out of a JSON line.
summary() {
  local rate p99 held
  rate=$(sed -n 's/.*"rate":\([0-9.]*\).*/\1/p' <<<"$1")
  p99=$(sed -n 's/.*"p99":\([0-9.]*\).*/\1/p' <<<"$1")
  held=$(sed -n 's/.*"held":\([0-9]*\).*/\1/p' <<<"$1")
  if [ -n "$held" ]; then echo "held $held"; else echo "rate ${rate:-?}/s, p99 ${p99:-?} ms"; fi
}

# scenario name alg mode args...: every round, every target in turn, the
# order rotating from round to round so that no target always runs right
# after the same other one (a run leaves the kernel with sockets in
# TIME_WAIT and timers that the next one pays for). For
# the refusal scenario the broker accepts what the proxy refuses: the
# proxy's refusals per second are compared with mosquitto's acceptances.
scenario() {
  local name=$1 alg=$2 mode=$3
  shift 3
  [[ $name =~ $only ]] || return 0
  local targets=("${scenario_targets[@]}")
  if [[ $name == pubsub-* ]]; then targets+=(rules); fi
  for round in $(seq "$rounds"); do
    say "$name, round $round of $rounds"
    local first=$(((round - 1) % ${#targets[@]}))
    for target in "${targets[@]:first}" "${targets[@]:0:first}"; do
      local expect=()
      if [[ $name == refuse-* ]]; then
        if [ "$target" = proxy ]; then expect=(-expect refuse); else expect=(-expect accept); fi
      fi
      run_target "$name" "$round" "$target" "$alg" "$mode" "$@" "${expect[@]}"
    done
  done
}

say "mqtt-jwt-bench: $(nproc) cores, $(uname -r), $("$mosquitto_bin" -h | sed -n 1p), $("$haproxy_bin" -v | sed -n '1s/ - .*//p'), $(go version | cut -d' ' -f3)"
say "load average before the start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
say "runs of ${duration}s, $rounds rounds, $n held connections; results in $results"
start_all

scenario_targets=(direct haproxy proxy)
hs=(-alg HS256 -secret "$secret")
rs=(-alg RS256 -key "$out/rsa/private.pem")
es=(-alg ES256 -key "$out/ec/private.pem")
connect=(-c 16 -duration "${duration}s")
scenario connect-hs256 hs256 connect "${connect[@]}" "${hs[@]}"
# The same at a fixed 2,000 connections a second, well below what any
# target saturates at here: CPU per connection and latency compared at
# equal load. At saturation a target that is slower also queues longer,
# so its latency says again what its rate said.
scenario connect-hs256-2k/s hs256 connect -c 32 -rate 2000 -duration "${duration}s" "${hs[@]}"
scenario connect-rs256 rs256 connect "${connect[@]}" "${rs[@]}"
scenario connect-es256 es256 connect "${connect[@]}" "${es[@]}"
# Every connection with a token the proxy has not verified before: more
# tokens than any target connects in a run (the others reuse 64).
scenario connect-es256-new es256 connect "${connect[@]}" "${es[@]}" -pool 60000
scenario refuse-hs256 hs256 connect "${connect[@]}" "${hs[@]}" -invalid
# The proxy in front of one broker and in front of three balanced by
# client identifier: what routing, picking and holding a server costs.
scenario_targets=(proxy pool)
scenario connect-hs256-pool hs256 connect "${connect[@]}" "${hs[@]}"
scenario_targets=(direct haproxy proxy)
pubsub=(-duration "${duration}s" "${hs[@]}")
scenario pubsub-64B-max hs256 pubsub "${pubsub[@]}" -pub 2 -sub 2 -size 64
scenario pubsub-4KiB-max hs256 pubsub "${pubsub[@]}" -pub 2 -sub 2 -size 4096
scenario pubsub-64B-2k/s hs256 pubsub "${pubsub[@]}" -pub 1 -sub 1 -size 64 -rate 2000
scenario pubsub-4KiB-2k/s hs256 pubsub "${pubsub[@]}" -pub 1 -sub 1 -size 4096 -rate 2000

# Memory: each run on freshly started processes, so that what earlier
# scenarios left in the heaps does not count as idle memory.
if [[ memory =~ $only ]]; then
  hold_for=$((duration > 3 ? 3 : duration + 1))
  for round in $(seq "$rounds"); do
    say "memory ($n idle connections), round $round of $rounds"
    for target in direct haproxy proxy rules; do
      stop_all
      start_all
      run_target memory "$round" "$target" hs256 hold -n "$n" -c 64 -duration "${hold_for}s" -settle 1s "${hs[@]}"
    done
  done
fi
# Pending: each connection sends the first 11 bytes of its CONNECT (of
# about 190) and waits, as a slow client or a slowloris flood does; what
# each costs before authentication, on freshly started processes. The
# runs end well within the proxy's connect_timeout and HAProxy's
# inspect-delay (10 s each).
if [[ pending =~ $only ]]; then
  hold_for=$((duration > 3 ? 3 : duration + 1))
  for round in $(seq "$rounds"); do
    say "pending ($n connections with 11 bytes of their CONNECT), round $round of $rounds"
    for target in direct haproxy proxy; do
      stop_all
      start_all
      run_target pending "$round" "$target" hs256 hold -n "$n" -c 64 -partial 11 -duration "${hold_for}s" -settle 1s "${hs[@]}"
    done
  done
fi
stop_all

say ""
"$bench" report -ratio proxy/haproxy -ratio proxy/direct -ratio rules/proxy -ratio pool/proxy "$results" | tee "$out/table.txt"
say ""
say "results: $results; table: $out/table.txt; logs: $out/*.log"
if [ "$failures" -gt 0 ]; then
  say "$failures runs failed"
  exit 1
fi
