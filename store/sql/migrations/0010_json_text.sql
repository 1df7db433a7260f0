-- 0010: the log keeps each payload as the exact JSON text written (json), not as jsonb
-- (issue 17: bytes per stored event).
--
-- Nothing reads the log by a payload's content but two lookups by one key (an operator's
-- commands for an actor, the largest payment id), which json serves as well as jsonb did. What
-- jsonb cost: its binary form is larger than the compact text msgspec writes (an entry header
-- per key and value, numbers as numeric): about 40 bytes an event on the benchmark's mix; every
-- append parsed the text into that form and every read rendered it back to text. json keeps
-- the text as written, checked to be valid JSON: what is read back is byte for byte what was
-- appended, which is also what a seal hashes.
--
-- Events already stored become the text jsonb rendered for them, the bytes every reader and
-- every seal has seen: seals made before this migration verify unchanged after it.
--
-- metadata stays jsonb for now (about 10 bytes an event more): workers of the previous
-- version, still running during a deploy's overlap, read the log with
-- nullif(metadata, '{}'::jsonb), which a json column refuses (no json = jsonb operator). They
-- read a json payload unchanged (as text, which their decoder takes) and append theirs as
-- jsonb, which the column takes by its assignment cast. A later release, once no worker runs
-- that statement, can turn metadata into json the same way.
--
-- The type change rewrites the table under an ACCESS EXCLUSIVE lock: on a log of a million
-- events it takes seconds (measured: 9.5 s for 1,010,460 events, payload and metadata, on the
-- benchmark machine), and writers and readers wait for it (bounded by their statement
-- timeouts; a worker's actors retry). The append-only triggers refuse UPDATE, DELETE and
-- TRUNCATE, not this.

ALTER TABLE i3lani.events
    DROP CONSTRAINT events_payload_check,
    ALTER COLUMN payload TYPE json USING payload::json,
    ADD CONSTRAINT events_payload_check CHECK (json_typeof(payload) = 'object');
