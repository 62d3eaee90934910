#!/usr/bin/env bash
# Start a throwaway PostgreSQL (Debian's package) on a free loopback port for the test
# suite's PostgreSQL pass. Prints two lines: the server URL (for MODELROUTE_TEST_DATABASE_URL)
# and the data directory (for `pg_ctl stop`).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d /tmp/modelroute-pg.XXXXXX)
chown postgres "$DATA"
su postgres -c "$PGBIN/initdb -D $DATA -A trust -U postgres" >&2
su postgres -c "$PGBIN/pg_ctl -D $DATA -w -o '-p $PGPORT -k $DATA -c listen_addresses=127.0.0.1' -l $DATA/server.log start" >&2
echo "postgresql://postgres@127.0.0.1:$PGPORT/postgres"
echo "$DATA"
