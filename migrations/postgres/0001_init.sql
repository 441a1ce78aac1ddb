-- sscard-kms store schema, version 1. Applied by the service at start (src/state/postgres.rs);
-- never edit an applied migration: add the next one.
--
-- Every table of the store (Table in src/state/store.rs) is rows of one key-value table, so a
-- new table needs no migration. Keys compare byte-wise (COLLATE "C"), as redb orders them.
CREATE TABLE kms_kv (
    tbl text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);

-- The audit chain: one row per record, by sequence number (a second record of one number is
-- refused by the key: the chain cannot fork).
CREATE TABLE kms_audit (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    record bytea NOT NULL
);

-- The HSM's seals of the chain head.
CREATE TABLE kms_audit_seals (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    seal bytea NOT NULL
);

-- The writers' lock: every write transaction of every instance takes this row FOR UPDATE first,
-- so the chain head it reads is the one it appends to.
CREATE TABLE kms_writer_lock (
    id integer PRIMARY KEY CHECK (id = 1)
);
INSERT INTO kms_writer_lock (id) VALUES (1);
