-- 0010: the log keeps each payload and metadata as the exact JSON text written (json), not as
-- jsonb (issue 17: bytes per stored event).
--
-- Nothing reads the log by a payload's content but two lookups by one key (an operator's
-- commands for an actor, the largest payment id), which json serves as well as jsonb did. What
-- jsonb cost: its binary form is larger than the compact text msgspec writes (an entry header
-- per key and value, numbers as numeric), by about 50 bytes an event on the benchmark's mix
-- (210 -> about 180 bytes of payload, 106 -> about 90 of metadata); every append parsed the
-- text into that form and every read rendered it back to text (about 0.5 s of the server's time
-- per million events read). json keeps the text as written, checked to be valid JSON: what is
-- read back is byte for byte what was appended, which is also what a seal hashes.
--
-- Events already stored become the text jsonb rendered for them, the bytes every reader and
-- every seal has seen: seals made before this migration verify unchanged after it.
--
-- The type change rewrites the table under an ACCESS EXCLUSIVE lock: on a log of a million
-- events it takes seconds (measured: 9.5 s for 1,010,460 events on the benchmark machine), and
-- writers and readers wait for it (they are bounded by their statement timeouts; a worker's
-- actors retry). The append-only triggers refuse UPDATE, DELETE and TRUNCATE, not this.

ALTER TABLE i3lani.events
    DROP CONSTRAINT events_payload_check,
    DROP CONSTRAINT events_metadata_check,
    ALTER COLUMN metadata DROP DEFAULT,
    ALTER COLUMN payload TYPE json USING payload::json,
    ALTER COLUMN metadata TYPE json USING metadata::json,
    ALTER COLUMN metadata SET DEFAULT '{}'::json,
    ADD CONSTRAINT events_payload_check CHECK (json_typeof(payload) = 'object'),
    ADD CONSTRAINT events_metadata_check CHECK (json_typeof(metadata) = 'object');
