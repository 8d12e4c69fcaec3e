-- fulfilld's schema, version 2: what the instances sharing the store use to
-- coordinate (package cluster). Times are unix nanoseconds, exact.

-- Roles held by one instance at a time (the lister), in numbered terms.
CREATE TABLE fulfilld_leases (
	role    text COLLATE "C" PRIMARY KEY,
	holder  text COLLATE "C" NOT NULL,
	term    bigint NOT NULL,
	expires bigint NOT NULL
);

-- Each instance's last heartbeat, as JSON.
CREATE TABLE fulfilld_instances (
	id   text COLLATE "C" PRIMARY KEY,
	body bytea NOT NULL
);

-- Named times the instances share: a backfill asked for, the last 429.
CREATE TABLE fulfilld_marks (
	name text COLLATE "C" PRIMARY KEY,
	at   bigint NOT NULL
);
