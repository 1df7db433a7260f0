-- 0006: the append-only triggers fire whatever session_replication_role says.
--
-- Triggers made by CREATE TRIGGER are enabled "on origin" (pg_trigger.tgenabled = 'O'): they
-- fire only while session_replication_role is 'origin' (the default) or 'local'. A superuser
-- who runs SET session_replication_role = replica can then UPDATE or DELETE events with the
-- triggers skipped and their definitions untouched: nothing would show it. ENABLE ALWAYS
-- ('A') makes them fire in every role. Turning them off again takes ALTER TABLE (the table's
-- owner or a superuser), which changes tgenabled, and `i3lani audit` checks tgenabled = 'A'.
-- The triggers only refuse UPDATE, DELETE and TRUNCATE: appends (INSERT) never meet them, on a
-- primary or on a logical replica.
ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_row;
ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_truncate;
