-- Triggers backed by Rust functions (src/api/triggers.rs).

CREATE TRIGGER calls_before_write BEFORE INSERT OR UPDATE OR DELETE ON dialpad.calls
    FOR EACH ROW EXECUTE FUNCTION dialpad.calls_before_write();
-- dialpad.logical_calls follows every write of the legs (sql/analytics.sql).
CREATE TRIGGER calls_after_write AFTER INSERT OR UPDATE OR DELETE ON dialpad.calls
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.calls_after_write();
-- ALWAYS: the rules hold for logical replication apply and session_replication_role = replica too.
ALTER TABLE dialpad.calls ENABLE ALWAYS TRIGGER calls_before_write, ENABLE ALWAYS TRIGGER calls_after_write;

CREATE TRIGGER call_statuses_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dialpad.call_statuses
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.rules_changed();
CREATE TRIGGER status_transitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dialpad.status_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.rules_changed();
CREATE TRIGGER state_mapping_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dialpad.state_mapping
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.rules_changed();
-- Every session reloads the webhook sources from its next statement (src/pipeline/sources.rs).
CREATE TRIGGER sources_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dialpad.sources
    FOR EACH STATEMENT EXECUTE FUNCTION dialpad.rules_changed();

CREATE TRIGGER webhook_events_before_insert BEFORE INSERT ON dialpad.webhook_events
    FOR EACH ROW EXECUTE FUNCTION dialpad.webhook_events_before_insert();
ALTER TABLE dialpad.webhook_events ENABLE ALWAYS TRIGGER webhook_events_before_insert;
