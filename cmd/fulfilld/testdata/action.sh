#!/bin/sh
# The operator's action in fulfilld's end-to-end tests. $1 is the test's
# directory. Each run that counts as a fulfillment appends one line to
# actions.log:
#   session idempotency_key attempt trigger
# (a single short O_APPEND write, so concurrent runs do not interleave), and
# keeps the body it got on stdin in bodies/<session>.json.
#
# behave/<session> makes the run for one session misbehave: "fail" exits 1,
# "hang" outlives any timeout, "spew" prints 20 MB. While the file "slow"
# exists every run, after logging, writes its pid to inflight/<session> and
# waits for "slow" to go away: the test kills fulfilld in that window.
D="$1"
# A PaymentIntent fulfilment (fulfill.payment_intents) has an empty
# FULFILLD_SESSION_ID and its id in FULFILLD_PAYMENT_INTENT_ID.
id="${FULFILLD_SESSION_ID:-$FULFILLD_PAYMENT_INTENT_ID}"
if [ -n "${STRIPE_API_KEY:-}${FULFILLD_STRIPE_API_KEY:-}" ]; then
	echo "$id" >>"$D/key-leaked"
fi
cat >"$D/bodies/$id.json.$$" && mv -f "$D/bodies/$id.json.$$" "$D/bodies/$id.json"
how=""
if [ -f "$D/behave/$id" ]; then
	read -r how <"$D/behave/$id"
fi
case "$how" in
fail)
	echo "failing on purpose for $id" >&2
	exit 1
	;;
hang)
	echo "hanging"
	exec sleep 30
	;;
spew)
	head -c 20000000 /dev/zero | tr '\0' 'x'
	;;
esac
printf '%s %s %s %s\n' "$id" "$FULFILLD_IDEMPOTENCY_KEY" "$FULFILLD_ATTEMPT" "$FULFILLD_TRIGGER" >>"$D/actions.log"
if [ -f "$D/slow" ]; then
	echo $$ >"$D/inflight/$id"
	while [ -f "$D/slow" ]; do sleep 0.02; done
fi
exit 0
