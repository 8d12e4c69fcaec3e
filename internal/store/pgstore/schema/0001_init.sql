-- fulfilld's schema, version 1: what boltstore keeps, as tables.
-- Ids and names are COLLATE "C": byte order, as bbolt's keys sort, and
-- cheaper to compare. Times that indexes and queues sort by are unix
-- nanoseconds (bigint), exact where timestamptz keeps microseconds.
--
-- Sums that every transaction adds to (counters, event counts, API usage)
-- are kept in slots: a connection holds a slot of its own while it lives
-- (an advisory lock), writes only its slot's rows, and a sum is read over
-- the slots. Two transactions never update the same row of a sum, so they
-- never fail to serialize over one. A slot's rows outlive its connection
-- and are added to by the next connection that takes the slot: the number
-- of rows is bounded by the most connections ever open at once. A slot may
-- hold less than zero; a sum reads as zero at least.

-- The cursor's position, the last poll, the last sweep and webhook-miss
-- report: one JSON value each.
CREATE TABLE fulfilld_kv (
	name  text COLLATE "C" PRIMARY KEY,
	value bytea NOT NULL
);

-- The seen-set: event ids handled, with their created time (unix seconds).
CREATE TABLE fulfilld_seen (
	event_id text COLLATE "C" PRIMARY KEY,
	created  bigint NOT NULL
);
CREATE INDEX fulfilld_seen_by_time ON fulfilld_seen (created, event_id);

-- Events counted by type and outcome.
CREATE TABLE fulfilld_event_stats (
	type    text COLLATE "C" NOT NULL,
	outcome text COLLATE "C" NOT NULL,
	slot    int NOT NULL,
	n       bigint NOT NULL,
	PRIMARY KEY (type, outcome, slot)
);

-- The newest bad events, as JSON.
CREATE TABLE fulfilld_bad_events (
	id      text COLLATE "C" PRIMARY KEY,
	seen_at bigint NOT NULL,
	body    bytea NOT NULL
);
CREATE INDEX fulfilld_bad_events_by_time ON fulfilld_bad_events (seen_at DESC, id);

-- The ledger: each record as boltstore encodes it (JSON; a pruned session
-- as what ledgerindex.Tombstone keeps), with its place in the dead-letter
-- index (failed_at) and retention's index (settled_at), NULL when it has
-- none: the indexes move with the row.
CREATE TABLE fulfilld_sessions (
	id         text COLLATE "C" PRIMARY KEY,
	body       bytea NOT NULL,
	failed_at  bigint,
	settled_at bigint
);
CREATE INDEX fulfilld_sessions_failed ON fulfilld_sessions (failed_at, id) WHERE failed_at IS NOT NULL;
CREATE INDEX fulfilld_sessions_settled ON fulfilld_sessions (settled_at, id) WHERE settled_at IS NOT NULL;

CREATE TABLE fulfilld_deliveries (
	id         text COLLATE "C" PRIMARY KEY, -- "<destination>:<event id>"
	body       bytea NOT NULL,
	failed_at  bigint,
	settled_at bigint
);
CREATE INDEX fulfilld_deliveries_failed ON fulfilld_deliveries (failed_at, id) WHERE failed_at IS NOT NULL;
CREATE INDEX fulfilld_deliveries_settled ON fulfilld_deliveries (settled_at, id) WHERE settled_at IS NOT NULL;

CREATE TABLE fulfilld_payment_intents (
	id         text COLLATE "C" PRIMARY KEY,
	body       bytea NOT NULL,
	failed_at  bigint,
	settled_at bigint
);
CREATE INDEX fulfilld_payment_intents_failed ON fulfilld_payment_intents (failed_at, id) WHERE failed_at IS NOT NULL;
CREATE INDEX fulfilld_payment_intents_settled ON fulfilld_payment_intents (settled_at, id) WHERE settled_at IS NOT NULL;

-- Kept counters (ledgerindex names them), the queues' lengths and the
-- seen-set's size among them: status reads these, not the records.
CREATE TABLE fulfilld_counters (
	name text COLLATE "C" NOT NULL,
	slot int NOT NULL,
	n    bigint NOT NULL,
	PRIMARY KEY (name, slot)
);

-- The durable queues: one row an item, due first.
CREATE TABLE fulfilld_queue (
	queue text COLLATE "C" NOT NULL,
	id    text COLLATE "C" NOT NULL,
	due   bigint NOT NULL,
	PRIMARY KEY (queue, id)
);
CREATE INDEX fulfilld_queue_due ON fulfilld_queue (queue, due, id);

-- Stripe API usage and payments, summed per UTC day ("2026-11-22") and
-- metric; days past the rolling month are folded into "0000-older".
CREATE TABLE fulfilld_api_usage (
	day    text COLLATE "C" NOT NULL,
	metric text COLLATE "C" NOT NULL,
	slot   int NOT NULL,
	n      bigint NOT NULL,
	PRIMARY KEY (day, metric, slot)
);
