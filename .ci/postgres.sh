#!/usr/bin/env bash
# Start a throwaway PostgreSQL (Debian's package) on 127.0.0.1:$PGPORT for the test suite's
# PostgreSQL pass; prints the server URL for MODELROUTE_TEST_DATABASE_URL on stdout.
set -euo pipefail
PGPORT="${PGPORT:-55432}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DATA=$(mktemp -d /tmp/modelroute-pg.XXXXXX)
chown postgres "$DATA"
su postgres -c "$PGBIN/initdb -D $DATA -A trust -U postgres" >&2
su postgres -c "$PGBIN/pg_ctl -D $DATA -w -o '-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1' -l $DATA/server.log start" >&2
echo "postgresql://postgres@127.0.0.1:$PGPORT/postgres"
