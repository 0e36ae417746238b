# The environment of eventfold's tests, shared by scripts/test.sh (every test, CI) and
# scripts/faults.sh (the fault suite): sourced from the repository's root, it sets the test knobs
# (each only when unset), checks PostgreSQL (starting the local Debian cluster if it is stopped)
# and drops test databases left by killed runs, installs and starts tansu (a Kafka-protocol
# broker) when nothing listens on the Kafka port, and installs cargo-nextest. It fails loudly
# when PostgreSQL or the broker cannot be reached: no test is skipped for a missing component.
# Defines `log` (a line on stderr).

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export EVENTFOLD_STRESS_SECS="${EVENTFOLD_STRESS_SECS:-3}"
export EVENTFOLD_LOG_STRESS_SECS="${EVENTFOLD_LOG_STRESS_SECS:-8}"
# The relay crash test at the size of issue 4: 50k events over 200 keys, 4 relay processes killed.
export EVENTFOLD_E2E_EVENTS="${EVENTFOLD_E2E_EVENTS:-50000}"
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "== $*" >&2; }

pg_up() { psql "$DATABASE_URL" -tAc 'SELECT 1' >/dev/null 2>&1; }

if ! command -v psql >/dev/null; then
    log "psql not found; installing postgresql-client"
    apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
fi
if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        log "PostgreSQL is not answering; starting the local cluster"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! pg_up; then
    echo "FATAL: PostgreSQL is not reachable at $DATABASE_URL; the PostgreSQL tests cannot run." >&2
    exit 1
fi
log "PostgreSQL: $(psql "$DATABASE_URL" -tAc 'SHOW server_version'), fsync $(psql "$DATABASE_URL" -tAc 'SHOW fsync')"

# Test databases left behind by killed runs.
psql "$DATABASE_URL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'eventfold\_test\_%' OR datname LIKE 'eventfold\_bench\_%'" |
    while read -r db; do
        [ -n "$db" ] && psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
    done

# The Kafka-protocol broker (tansu; the shared one keeps its log in memory) for the Kafka tests.
kafka_host="${KAFKA_BOOTSTRAP%%,*}"
kafka_port="${kafka_host##*:}"
kafka_host="${kafka_host%:*}"
kafka_up() { (exec 3<>"/dev/tcp/$kafka_host/$kafka_port") >/dev/null 2>&1; }
# Features: `dynostore` (the in-memory storage of `kafka_outage`'s first broker) and `libsql`
# (the SQLite storage of the shared broker and of the broker that `kafka_outage` kills and
# restarts with its data). A tansu installed
# without one of them (by an older setup) is installed again.
tansu_features_ok() {
    command -v tansu >/dev/null &&
        grep -o '"tansu 0\.6\.0[^}]*}' "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" 2>/dev/null |
        grep -q '"libsql"'
}
if ! tansu_features_ok; then
    log "tansu 0.6.0 with the features dynostore and libsql not found; installing it (10 to 30 minutes on 2 cores)"
    cargo install --locked --force tansu@0.6.0 --features dynostore,libsql
fi
if ! kafka_up; then
    log "no Kafka broker at $KAFKA_BOOTSTRAP; starting tansu on a new SQLite file (log: target/tansu.log)"
    # SQLite storage, not tansu's in-memory one: a produce to memory takes its offsets before it
    # stores its batch, and a fetch in between skips them for good (ADR 0035). The file is new
    # each time: a broker started here knows no topics. `sqlite:///tansu.db` is relative to the
    # broker's working directory.
    mkdir -p target/tansu
    rm -f target/tansu/tansu.db target/tansu/tansu.db-*
    (cd target/tansu && exec nohup tansu broker \
        --listener-url "tcp://$kafka_host:$kafka_port" \
        --advertised-listener-url "tcp://$kafka_host:$kafka_port" \
        --storage-engine sqlite:///tansu.db >../tansu.log 2>&1) &
    for _ in $(seq 1 30); do kafka_up && break; sleep 1; done
    # tansu 0.6's SQLite schema has no index on `header`: each fetched record's headers are
    # looked up by a scan of every header of every topic, so the broker slows down with all it
    # ever stored (a 12,000-record test took 13 s on a new file and 43 s two runs later; 2.7 s
    # with the index). Its tables exist once it listens.
    if ! command -v sqlite3 >/dev/null; then
        log "sqlite3 not found; installing it"
        apt-get update -qq && apt-get install -y -qq sqlite3 >/dev/null
    fi
    indexed=false
    for _ in $(seq 1 10); do
        if sqlite3 -cmd ".timeout 10000" target/tansu/tansu.db \
            "CREATE INDEX IF NOT EXISTS header_topition_offset_id ON header (topition, offset_id)" 2>/dev/null; then
            indexed=true
            break
        fi
        sleep 1
    done
    if [ "$indexed" != true ]; then
        echo "FATAL: could not index the headers of the broker's SQLite file target/tansu/tansu.db (see target/tansu.log)." >&2
        exit 1
    fi
fi
if ! kafka_up; then
    echo "FATAL: no Kafka-protocol broker is reachable at $KAFKA_BOOTSTRAP (see target/tansu.log); the Kafka tests cannot run." >&2
    exit 1
fi
log "Kafka-protocol broker: $KAFKA_BOOTSTRAP"

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

