#!/usr/bin/env bash
# A throwaway PostgreSQL (Debian's package) on a free loopback port for the test suite's
# PostgreSQL pass.
#   .ci/postgres.sh            start one; prints two lines: the server URL (for
#                              MODELROUTE_TEST_DATABASE_URL) and its data directory
#   .ci/postgres.sh stop DIR   stop it and delete DIR (~90 MB; nothing else is kept)
set -euo pipefail
pgbin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

if [ "${1:-start}" = stop ]; then
  DATA=${2:?usage: .ci/postgres.sh stop DATA_DIR}
  case "$DATA" in
    /tmp/modelroute-pg.*) ;;
    *) echo "refusing to delete $DATA: not a directory made by .ci/postgres.sh" >&2; exit 2 ;;
  esac
  if [ -f "$DATA/postmaster.pid" ]; then
    su postgres -c "$(pgbin)/pg_ctl -D $DATA -m fast -w stop" >/dev/null || true
  fi
  rm -rf -- "$DATA"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
PGBIN=$(pgbin)
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d /tmp/modelroute-pg.XXXXXX)
# A failed start must not leave its data directory behind either.
trap 'rm -rf -- "$DATA"' ERR
chown postgres "$DATA"
su postgres -c "$PGBIN/initdb -D $DATA -A trust -U postgres" >&2
su postgres -c "$PGBIN/pg_ctl -D $DATA -w -o '-p $PGPORT -k $DATA -c listen_addresses=127.0.0.1' -l $DATA/server.log start" >&2
trap - ERR
echo "postgresql://postgres@127.0.0.1:$PGPORT/postgres"
echo "$DATA"
