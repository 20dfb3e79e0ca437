# Shared helpers for the scripts/bench-* benchmarks. Sourced, not run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
#   bench_init bench-something          # cd to the repository root, set NAME, die()
#
# Environment understood by every script that uses it:
#   EARLYWARN_BIN=...  use this binary instead of building target/release/earlywarn
#   BENCH_DIR=...      where generated CSVs are cached (default target/bench)
#   LOAD_MAX=1.5       wait for the 1-minute load average to fall below this before timing
#   LOAD_WAIT=600      ... for at most this many seconds in all (0: do not wait), then go on anyway
#   KEEP=1             keep the temporary folder (configs, daemon logs, state)
#
# Exit status convention: 0 PASS, 1 FAIL, 2 the benchmark itself could not run.

bench_init() {
  NAME=$1
  ROOT=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
  cd "$ROOT"
  BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
  LOAD_MAX=${LOAD_MAX:-1.5}
  LOAD_WAIT=${LOAD_WAIT:-600}
  DAEMON_PID=""
  TMP=""
  BENCH_WAITED=0
  mkdir -p "$BENCH_DIR"
}

die() { echo "$NAME: $*" >&2; exit 2; }

# "1.23 1.10 0.98": the 1, 5 and 15-minute load averages.
bench_load() { cut -d' ' -f1-3 /proc/loadavg; }

# Waits for the 1-minute load average to fall below LOAD_MAX, so a timing is not taken
# while other builds and tests share the 2 cores: at most LOAD_WAIT seconds over the whole
# script. Goes on either way, saying so; every figure is printed with its load average.
bench_wait_for_quiet() {
  local what=${1:-timing} waited=0 load
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; then
      if [[ $waited -gt 0 ]]; then echo "   load average $load after waiting ${waited} s"; fi
      return 0
    fi
    if [[ $BENCH_WAITED -ge $LOAD_WAIT ]]; then
      echo "   load average $load >= $LOAD_MAX (waited ${BENCH_WAITED} s in all): $what goes ahead on a busy machine"
      return 0
    fi
    if [[ $waited -eq 0 ]]; then
      echo "   load average $load >= $LOAD_MAX: waiting (at most $((LOAD_WAIT - BENCH_WAITED)) s more) before $what"
    fi
    sleep 15
    waited=$((waited + 15)) BENCH_WAITED=$((BENCH_WAITED + 15))
  done
}

bench_build() {
  if [[ -n ${EARLYWARN_BIN:-} ]]; then
    BIN=$EARLYWARN_BIN
    [[ -x $BIN ]] || die "EARLYWARN_BIN=$BIN is not an executable"
  else
    echo "== building (cargo build --release)"
    cargo build --release --quiet || die "cargo build --release failed"
    # A private copy: target/release is shared with other builds, which may replace the
    # binary while a long benchmark runs.
    BIN=$BENCH_DIR/earlywarn-$NAME
    cp "$ROOT/target/release/earlywarn" "$BIN.part" && mv "$BIN.part" "$BIN"
  fi
  # What was measured: the commit, and whether src/ had uncommitted changes.
  BENCH_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    BENCH_REV="$BENCH_REV+changes"
  fi
  echo "   binary $BIN (commit $BENCH_REV)"
}

bench_need_time() {
  if [[ ! -x /usr/bin/time ]]; then
    echo "$NAME: /usr/bin/time is missing; installing the 'time' package" >&2
    if command -v apt-get >/dev/null; then
      apt-get install -y time >/dev/null 2>&1 || sudo apt-get install -y time >/dev/null 2>&1 || true
    fi
    [[ -x /usr/bin/time ]] || die "install GNU time (apt-get install time) to measure peak memory"
  fi
}

# bench_csv ROWS [DAYS]: sets CSV to a generated drug_testing file (seed 2025), cached by
# row count and span; made again when the generator is newer than the file.
bench_csv() {
  local rows=$1 days=${2:-365} suffix=""
  [[ $days == 365 ]] || suffix="-${days}d"
  CSV=$BENCH_DIR/drug-testing-$rows$suffix.csv
  local gen=bench/gen_drug_testing.py
  if [[ ! -s $CSV || $gen -nt $CSV ]]; then
    echo "== generating $rows rows over $days days into $CSV"
    local start
    start=$(date +%s.%N)
    python3 "$gen" "$rows" "$CSV.part" --seed 2025 --days "$days" || die "the generator failed"
    mv "$CSV.part" "$CSV"
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "   took %.1f s\n", b - a }'
  else
    echo "== using cached $CSV"
  fi
}

# bench_tmp: a temporary folder, removed on exit unless KEEP=1; the daemon (if started)
# is stopped first. Call once, before bench_start_daemon.
bench_tmp() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/earlywarn-$NAME.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_stop_daemon() {
  # Only the process this script started, by its id.
  if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  DAEMON_PID=""
}

bench_cleanup() {
  local rc=$?
  bench_stop_daemon
  if [[ -n $TMP ]]; then
    if [[ ${KEEP:-0} == 1 ]]; then echo "(kept $TMP)"; else rm -rf "$TMP"; fi
  fi
  exit "$rc"
}

# bench_daemon_config DIR RULE_FILE...: writes DIR/config.toml for `earlywarn run`: state,
# feed folder and mail folder inside DIR, file transport, the drug_testing feed as in
# bench/replay/config.toml, its nine partners, and the given rule files (absolute paths).
bench_daemon_config() {
  local dir=$1
  shift
  local rules="" f
  for f in "$@"; do rules+="\"$f\", "; done
  mkdir -p "$dir/state" "$dir/mail" "$dir/incoming"
  {
    cat <<TOML
# Written by scripts/$NAME: the daemon on the benchmark rules, file transport.
[daemon]
state_dir = "state"
rules     = [${rules%, }]
timezone  = "Europe/London"
ops       = ["ops-team"]

[mail]
from      = "GM Early Warning Benchmark <earlywarn@example.org>"
transport = "file"
file_dir  = "mail"
marking   = "OFFICIAL-SENSITIVE"

[[feed]]
name        = "drug_testing"
dir         = "incoming"
format      = "csv"
id_field    = "sample_id"
time_field  = "tested_at"
list_fields = { substances_major = ";", substances_minor = ";" }
sensitive   = ["notes"]
district_field = "district"
fields = [
  "sample_id", "received_at", "tested_at", "lab", "source", "district",
  "postcode_district", "purchased_as", "form", "colour", "marking",
  "substances_major", "substances_minor", "amount_mg_per_unit", "linked_harm", "notes",
]

TOML
    sed -n '/^\[\[partner\]\]/,$p' bench/replay/config.toml
  } >"$dir/config.toml"
}

# bench_start_daemon CONFIG LOG: starts `earlywarn run` and waits (up to 60 s) for "Ready".
# Sets DAEMON_PID and READY_SECONDS (start -> Ready line seen, polled every 10 ms).
bench_start_daemon() {
  local config=$1 log=$2 start
  start=$(date +%s.%N)
  "$BIN" run --config "$config" >"$log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 6000); do
    if grep -q 'Ready' "$log"; then
      READY_SECONDS=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
      return 0
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$log" >&2; die "earlywarn run exited"; }
    sleep 0.01
  done
  cat "$log" >&2
  die "earlywarn did not log Ready within 60 s"
}

# Peak and current resident memory of the daemon, in MiB: "peak current".
bench_daemon_rss() {
  awk '/^VmHWM:/ { p = $2 } /^VmRSS:/ { c = $2 } END { printf "%.1f %.1f\n", p / 1024, c / 1024 }' \
    "/proc/$DAEMON_PID/status"
}

# bench_time_v FILE -> "wall_s cpu_s peak_MiB" from a /usr/bin/time -v report.
bench_time_v() {
  local wall cpu rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time.*: \([0-9:.]*\)$/\1/p' "$1")
  [[ -n $wall ]] || die "cannot read the elapsed time from /usr/bin/time -v ($1)"
  wall=$(awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.3f", s }' <<<"$wall")
  cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }' "$1")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$1")
  rss=$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')
  echo "$wall $cpu $rss"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
pass_if() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "<") ? v < t : (op == "<=") ? v <= t : (op == ">=") ? v >= t : v > t; print ok ? "PASS" : "FAIL" }'; }
