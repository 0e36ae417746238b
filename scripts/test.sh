#!/usr/bin/env bash
# Runs every eventfold test on this machine, setting up what the tests need first.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -E 'test(contract)'   # extra arguments go to cargo nextest
#
# Needs: the Rust toolchain, a PostgreSQL server (DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/postgres) and a Kafka-protocol broker (KAFKA_BOOTSTRAP,
# default 127.0.0.1:9092). The script starts a local Debian PostgreSQL cluster if it is installed
# but stopped, drops test databases left by killed runs, installs tansu (a Kafka-protocol broker;
# 10 to 30 minutes to build on 2 cores, once per machine) and starts it on a new SQLite file
# (ADR 0035) when nothing listens on the Kafka port, and fails loudly when PostgreSQL or the
# broker cannot be reached: no test is skipped for a missing component. It also installs mdbook (pinned, once
# per machine) if it is missing, renders the book into target/book, and fails when it cannot;
# the test `book_links` then checks the rendered book for broken internal links.
set -euo pipefail
cd "$(dirname "$0")/.."

# The environment, PostgreSQL, the broker and cargo-nextest (shared with scripts/faults.sh).
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
# The mdBook that renders the book (its version is pinned: a newer one may render differently).
MDBOOK_VERSION=0.5.4

if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
    log "mdbook $MDBOOK_VERSION not found; installing it (a few minutes on 2 cores, once per machine)"
    if ! cargo install --locked "mdbook@$MDBOOK_VERSION" --no-default-features --features search; then
        echo "FATAL: installing mdbook $MDBOOK_VERSION failed; the book cannot be rendered and its links cannot be checked." >&2
        exit 1
    fi
fi
log "the book: mdbook build book (into target/book)"
if ! mdbook build book; then
    echo "FATAL: mdbook build failed; see the error above." >&2
    exit 1
fi

log "doctests (rustdoc examples, every book sample, the README)"
cargo test --workspace --all-features --doc

log "unit, integration, contract, concurrency, global-log stress, property, compile-fail and book-link tests"
cargo nextest run --workspace --all-features --no-fail-fast "$@"
