-- On the source: a logical slot (test_decoding) that records which tables change from now on, so that a
-- table verified before the PAUSE is compared again inside it only when it changed. Creating it waits for
-- the transactions running now to end: bounded, a long one makes the cutover compare every table instead.
SET statement_timeout = '30s';
SELECT lsn FROM pg_create_logical_replication_slot({slot}, 'test_decoding');
