#!/usr/bin/env bash
# Ctrl+C in a console run of the Windows build, under Wine: Wine turns SIGINT
# into the console's CTRL_C_EVENT, as a terminal's Ctrl+C would. The first one
# stops the host gracefully (exit code 0); a second one during a stop that
# does not end ends the process at once with 130, as on Linux.
#
#   console_test.sh <wine64> <worker_service.exe> <hosting_test_child.exe>
set -uo pipefail
wine=$1 worker=$2 child=$3
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
failures=0

fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

# Waits (at most $3 seconds) until file $1 contains $2.
wait_for() {
  local deadline=$((SECONDS + $3))
  until grep -qF -- "$2" "$1"; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.05
  done
}

# Waits (at most $2 seconds) for background process $1; sets `code` to its
# exit code, or to "timeout". (Not in a subshell: only this shell can wait.)
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && { code=timeout; return; }
    sleep 0.05
  done
  wait "$1"
  code=$?
}

echo "== one Ctrl+C: a graceful stop, exit code 0"
(cd "$(dirname "$worker")" && exec "$wine" "$worker" --Worker:IntervalMilliseconds=100) > "$work/worker.out" 2>&1 &
pid=$!
if wait_for "$work/worker.out" "report #1" 60; then
  kill -INT $pid
  wait_exit $pid 20
  [ "$code" = 0 ] || fail "the worker's exit code after Ctrl+C is $code, not 0"
  grep -qF "Received Ctrl+C; shutting down" "$work/worker.out" || fail "the worker did not log the Ctrl+C"
  grep -qF "Application is shutting down" "$work/worker.out" || fail "the worker did not stop its host"
else
  fail "the worker did not start"
fi
cat "$work/worker.out"

echo "== a second Ctrl+C during a stuck stop: exit code 130 at once"
"$wine" "$child" stubborn --Hosting:ShutdownTimeoutSeconds=60 > "$work/child.out" 2>&1 &
pid=$!
if wait_for "$work/child.out" "ticked" 60; then
  kill -INT $pid
  if wait_for "$work/child.out" "slow stop begun" 20; then
    start=$SECONDS
    kill -INT $pid
    wait_exit $pid 20
    [ "$code" = 130 ] || fail "the exit code after a second Ctrl+C is $code, not 130"
    [ $((SECONDS - start)) -lt 10 ] || fail "the second Ctrl+C took $((SECONDS - start)) s to end the process"
    grep -qF "Received Ctrl+C while shutting down; exiting at once with code 130" "$work/child.out" ||
      fail "the second Ctrl+C was not logged"
  else
    fail "the first Ctrl+C did not begin the stop"
  fi
else
  fail "the child did not start"
fi
cat "$work/child.out"

[ $failures -eq 0 ] && echo "all passed"
exit $((failures > 0))
