#!/usr/bin/env bash
# The fault suite: every test that injects faults (processes killed with SIGKILL, PostgreSQL
# sessions terminated and deadlocked, the PostgreSQL server crashed and restarted, the broker cut
# off, hostile input fuzzed), one test file after the other, then a table of what was injected
# and what was checked.
#
#   bash scripts/faults.sh          # the short form: the sizes CI runs (scripts/test.sh)
#   bash scripts/faults.sh --long   # the long form: the same tests with larger knobs
#
# Every fault test prints one summary line on stdout when all its checks passed:
#
#   FAULTS fault=<fault> component=<component> injected=<what>:<n>[,...] checked=<what>:<n>[,...] result=pass
#
# The script collects these lines from the tests' output (kept in target/faults/<run>/), adds a
# FAIL row for every test file whose run failed, prints the table and exits non-zero if anything
# failed. Knobs already set in the environment win over the long form's values, so a single
# knob can be raised further (e.g. `EVENTFOLD_FUZZ_SECS=600 bash scripts/faults.sh --long`).
#
# Needs what scripts/test.sh needs (PostgreSQL, a Kafka-protocol broker: both started if they
# can be, see scripts/setup.sh), and the PostgreSQL server binaries (initdb, pg_ctl) for the
# server-restart test.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=short
for arg in "$@"; do
    case "$arg" in
    --long) mode=long ;;
    --short) mode=short ;;
    -h | --help)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $arg (use --long, or nothing for the short form)" >&2
        exit 2
        ;;
    esac
done

if [ "$mode" = long ]; then
    # More than 100 kill/restart cycles in all: 40 saga children (orchestrators and
    # participants), 40 relay processes, 40 projection runners, 20 PostgreSQL server crashes.
    export EVENTFOLD_SAGA_CRASH_SAGAS="${EVENTFOLD_SAGA_CRASH_SAGAS:-1000}"
    export EVENTFOLD_SAGA_CRASH_KILLS="${EVENTFOLD_SAGA_CRASH_KILLS:-40}"
    export EVENTFOLD_E2E_EVENTS="${EVENTFOLD_E2E_EVENTS:-100000}"
    export EVENTFOLD_RELAY_CRASH_KILLS="${EVENTFOLD_RELAY_CRASH_KILLS:-40}"
    export EVENTFOLD_PROJECTION_CRASH_KILLS="${EVENTFOLD_PROJECTION_CRASH_KILLS:-40}"
    export EVENTFOLD_CLUSTER_RESTARTS="${EVENTFOLD_CLUSTER_RESTARTS:-20}"
    export EVENTFOLD_WRITER_CRASH_KILLS="${EVENTFOLD_WRITER_CRASH_KILLS:-40}"
    export EVENTFOLD_CONSUMER_CRASH_KILLS="${EVENTFOLD_CONSUMER_CRASH_KILLS:-40}"
    # Each decoder fed hostile input for ten minutes of CPU time (batches with fresh seeds), each
    # round-trip property (valid values through encode and decode) for two.
    export EVENTFOLD_FUZZ_SECS="${EVENTFOLD_FUZZ_SECS:-600}"
    export EVENTFOLD_FUZZ_ROUND_TRIP_SECS="${EVENTFOLD_FUZZ_ROUND_TRIP_SECS:-120}"
fi

# The environment, PostgreSQL, the broker and cargo-nextest, as for scripts/test.sh (which sets
# the short form's sizes: EVENTFOLD_E2E_EVENTS=50000, the other knobs at their defaults).
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

# The fault tests, in the order they run.
tests=(faults_postgres writers_crash faults_cluster memory_bounded clock_skew projections_crash kafka_outage kafka_relay kafka_crash consumer_crash saga_crash hostile_input)

run="target/faults/$mode-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run"
summary="$run/summary.txt"
: >"$summary"
log "fault suite, $mode form: logs in $run"
for knob in EVENTFOLD_E2E_EVENTS EVENTFOLD_RELAY_CRASH_KILLS EVENTFOLD_PROJECTION_CRASH_KILLS \
    EVENTFOLD_SAGA_CRASH_SAGAS EVENTFOLD_SAGA_CRASH_KILLS EVENTFOLD_CLUSTER_RESTARTS EVENTFOLD_WRITER_CRASH_KILLS EVENTFOLD_CONSUMER_CRASH_KILLS \
    EVENTFOLD_FUZZ_SECS EVENTFOLD_FUZZ_ROUND_TRIP_SECS EVENTFOLD_FUZZ_CASES; do
    log "  $knob=${!knob:-(default)}"
done

log "building the tests"
cargo nextest run --all-features --no-run "${tests[@]/#/--test=}"

failed=0
steps=()
started=$(date +%s)
for test in "${tests[@]}"; do
    log "$test ..."
    t0=$(date +%s)
    set +e
    cargo nextest run --all-features --no-fail-fast --success-output final --failure-output final \
        --test "$test" >"$run/$test.log" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - t0))
    lines=$(grep -aoE 'FAULTS fault=[^ ]+ component=[^ ]+ injected=[^ ]+ checked=[^ ]+ result=[^ ]+' "$run/$test.log" || true)
    if [ -n "$lines" ]; then
        echo "$lines" >>"$summary"
    fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "FAULTS fault=- component=$test injected=- checked=- result=FAIL(exit:$rc,see:$run/$test.log)" >>"$summary"
        log "$test FAILED (exit $rc, ${secs} s): see $run/$test.log"
        grep -aE '^ +(FAIL|SIGKILL|SIGSEGV|SIGABRT|TIMEOUT) ' "$run/$test.log" | sort -u >&2 || true
    else
        log "$test passed (${secs} s, $(printf '%s\n' "$lines" | grep -c FAULTS) summary lines)"
    fi
    steps+=("$test: exit $rc, ${secs} s")
done
total=$(($(date +%s) - started))

# The table: one row per summary line.
echo
echo "Fault suite, $mode form, $(date -u '+%Y-%m-%d %H:%M UTC'), $total s in all:"
echo
echo "| fault | component | injected | checked | result |"
echo "|---|---|---|---|---|"
sed -E 's/^FAULTS fault=([^ ]+) component=([^ ]+) injected=([^ ]+) checked=([^ ]+) result=([^ ]+)$/| \1 | \2 | \3 | \4 | \5 |/' "$summary" |
    sed -E 's/,/, /g'
echo
for step in "${steps[@]}"; do
    echo "  $step"
done
if grep -qv 'result=pass$' "$summary"; then
    failed=1
fi
if [ ! -s "$summary" ]; then
    echo "FATAL: no fault test printed a summary line" >&2
    failed=1
fi
if [ "$failed" -ne 0 ]; then
    echo "FAILED: see the rows above that are not 'pass', and their logs in $run" >&2
    exit 1
fi
echo "every check passed"
