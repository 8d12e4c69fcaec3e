#!/bin/sh
# The operator's action in the two-daemon tests (ha_test.go). $1 is the
# test's directory. Each run appends two lines to ledger, each a single
# short O_APPEND write so concurrent runs do not interleave:
#   start session key attempt trigger fulfilld_pid action_pid unix_ns
#   end   session key attempt trigger fulfilld_pid action_pid unix_ns
# so the test sees which instance ran what, when, and which runs were cut
# off (a start without an end). Between the two it takes a quarter of a
# second, so a backfill lasts long enough to kill instances during it.
#
# While the file slow.<fulfilld pid> exists, that instance's runs write
# "<fulfilld pid>" to inflight/<session> and wait for the file to go
# away: the test kills that instance in that window.
D="$1"
id="$FULFILLD_SESSION_ID"
mark() {
	printf '%s %s %s %s %s %s %s %s\n' "$1" "$id" "$FULFILLD_IDEMPOTENCY_KEY" "$FULFILLD_ATTEMPT" \
		"$FULFILLD_TRIGGER" "$PPID" "$$" "$(date +%s%N)" >>"$D/ledger"
}
mark start
cat >/dev/null
if [ -f "$D/fail-$id" ]; then
	mark fail
	echo "failing on purpose for $id" >&2
	exit 1
fi
if [ -f "$D/slow.$PPID" ]; then
	echo "$PPID" >"$D/inflight/$id"
	while [ -f "$D/slow.$PPID" ]; do sleep 0.02; done
fi
sleep 0.25
mark end
exit 0
