//! SQL-level tests, run inside a backend by `cargo pgrx test`: SQL in, rows out.

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn text(sql: &str) -> Option<String> {
        one::<String>(sql)
    }

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs `sql` and asserts it fails with `sqlstate` (any other outcome fails the test).
    fn expect_sqlstate(sql: &str, sqlstate: &str) {
        let block = format!(
            "DO $do$ BEGIN {sql}; RAISE EXCEPTION 'expected SQLSTATE {sqlstate}, got success' USING ERRCODE = 'P0004'; \
             EXCEPTION WHEN SQLSTATE '{sqlstate}' THEN NULL; END $do$"
        );
        run(&block);
    }

    // ---- normalize_call_direction ----------------------------------------------------------

    #[pg_test]
    fn direction_seed_examples() {
        for (input, expected) in [
            ("incoming", Some("inbound")),
            ("outgoing", Some("outbound")),
            ("INBOUND", Some("inbound")),
            ("in", Some("inbound")),
            ("out", Some("outbound")),
            ("  Outbound ", Some("outbound")),
            ("xyz", None),
            ("", None),
        ] {
            let got = text(&format!("SELECT dialpad.normalize_call_direction('{input}')"));
            assert_eq!(got.as_deref(), expected, "{input}");
        }
        assert_eq!(text("SELECT dialpad.normalize_call_direction(NULL)"), None);
    }

    // ---- transitions -------------------------------------------------------------------------

    #[pg_test]
    fn transition_seed_examples() {
        let valid =
            |a: &str, b: &str| one::<bool>(&format!("SELECT dialpad.is_valid_status_transition({a}, {b})")).unwrap();
        assert!(valid("'ringing'", "'active'"));
        assert!(valid("'active'", "'ended'"));
        assert!(!valid("'ended'", "'active'"));
        assert!(!valid("'missed'", "'active'"));
        assert!(valid("'active'", "'active'"));
        assert!(valid("NULL", "'ringing'"));
        assert!(!valid("'ringing'", "'bogus'"));
        assert!(!valid("'bogus'", "'ringing'"));
        assert!(!valid("'ringing'", "NULL"));
        assert!(!valid("'active'", "'ringing'"));
    }

    #[pg_test]
    fn transition_error_messages() {
        assert_eq!(text("SELECT dialpad.status_transition_error('ringing', 'active')"), None);
        assert_eq!(
            text("SELECT dialpad.status_transition_error('ended', 'ringing')").as_deref(),
            Some("Invalid status transition from ended to ringing: ended is a terminal status")
        );
        assert_eq!(
            text("SELECT dialpad.status_transition_error('active', 'ringing')").as_deref(),
            Some("Invalid status transition from active to ringing: not an allowed transition")
        );
        assert_eq!(
            text("SELECT dialpad.status_transition_error('ringing', 'nope')").as_deref(),
            Some("Invalid status transition from ringing to nope: nope is not a known status")
        );
    }

    #[pg_test]
    fn rule_edits_are_seen_by_the_next_statement() {
        let q = "SELECT dialpad.is_valid_status_transition('active', 'missed')";
        assert_eq!(one::<bool>(q), Some(false));
        run("INSERT INTO dialpad.status_transitions VALUES ('active', 'missed')");
        assert_eq!(one::<bool>(q), Some(true));
        run("DELETE FROM dialpad.status_transitions WHERE from_status = 'active' AND to_status = 'missed'");
        assert_eq!(one::<bool>(q), Some(false));
        run("INSERT INTO dialpad.call_statuses VALUES ('spam', true, 'flagged as spam')");
        run("INSERT INTO dialpad.status_transitions VALUES ('ringing', 'spam')");
        assert_eq!(one::<bool>("SELECT dialpad.is_valid_status_transition('ringing', 'spam')"), Some(true));
        // A status with moves out of it cannot become terminal (they would never take
        // effect); without them it can, and the next statement sees it.
        expect_sqlstate("UPDATE dialpad.call_statuses SET is_terminal = true WHERE status = 'active'", "23514");
        run("DELETE FROM dialpad.status_transitions WHERE from_status = 'active'");
        run("UPDATE dialpad.call_statuses SET is_terminal = true WHERE status = 'active'");
        assert_eq!(one::<bool>("SELECT dialpad.is_valid_status_transition('active', 'ended')"), Some(false));
    }

    #[pg_test]
    fn inserting_an_existing_rule_updates_it() {
        run("INSERT INTO dialpad.call_statuses VALUES ('ringing', false, 'custom')");
        assert_eq!(
            text("SELECT description FROM dialpad.call_statuses WHERE status = 'ringing'").as_deref(),
            Some("custom")
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.call_statuses"), Some(6));
        run("INSERT INTO dialpad.status_transitions VALUES ('ringing', 'active')");
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.status_transitions"), Some(7));
    }

    // ---- sanitize_call_payload ---------------------------------------------------------------

    #[pg_test]
    fn sanitize_seed_example() {
        let out = text(
            "SELECT dialpad.sanitize_call_payload(jsonb_build_object( \
               'call', jsonb_build_object('id', 123, 'direction', 'inbound'), \
               'transcript', repeat('x', 10000), \
               'metadata', (SELECT jsonb_object_agg('key' || i, i) FROM generate_series(1, 1000) i)))::text",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["call"], serde_json::json!({"id": 123, "direction": "inbound"}));
        assert_eq!(v["transcript"].as_str().unwrap(), format!("{}... [truncated]", "x".repeat(500)));
        assert_eq!(v["metadata"]["_truncated"], serde_json::json!(true));
        assert_eq!(v["metadata"]["total_keys"], serde_json::json!(1000));
        assert_eq!(v["metadata"]["sample_keys"].as_array().unwrap().len(), 5);
        // much smaller than the input
        let ratio = one::<f64>(
            "WITH p AS (SELECT jsonb_build_object('transcript', repeat('x', 100000), \
               'metadata', (SELECT jsonb_object_agg('key' || i, i) FROM generate_series(1, 1000) i)) AS j) \
             SELECT pg_column_size(dialpad.sanitize_call_payload(j))::float8 / pg_column_size(j) FROM p",
        )
        .unwrap();
        assert!(ratio < 0.1, "ratio {ratio}");
    }

    #[pg_test]
    fn sanitize_rules_in_sql() {
        let eq = |input: &str, expected: &str| {
            let same =
                one::<bool>(&format!("SELECT dialpad.sanitize_call_payload('{input}'::jsonb) = '{expected}'::jsonb"));
            assert_eq!(
                same,
                Some(true),
                "{input} -> {}",
                text(&format!("SELECT dialpad.sanitize_call_payload('{input}'::jsonb)::text")).unwrap_or_default()
            );
        };
        eq(r#"{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}"#, r#"{"a":{"b":{"c":{"d":{"e":{"f":"[max depth exceeded]"}}}}}}"#);
        eq(r#"{"audio_data":"AAAA","x":1,"y":"data:audio/wav;base64,UklGRg=="}"#, r#"{"x":1}"#);
        eq(
            r#"{"labels":[1,2,3,4,5,6,7,8,9,10,11,12]}"#,
            r#"{"labels":[1,2,3,4,5,6,7,8,9,10,{"_truncated":true,"total_items":12}]}"#,
        );
        eq(r#"[1,"data:image/png;base64,AA=="]"#, r#"[1]"#);
        eq(r#"null"#, r#"null"#);
        eq(r#""hello""#, r#""hello""#);
        eq(r#"123456789012345678901234567890"#, r#"123456789012345678901234567890"#);
        eq(r#"{}"#, r#"{}"#);
        eq(
            r#"{"":"", "odd key \" with quote":[], "ключ":"значение"}"#,
            r#"{"":"", "odd key \" with quote":[], "ключ":"значение"}"#,
        );
        assert_eq!(text("SELECT dialpad.sanitize_call_payload(NULL)::text"), None);
    }

    #[pg_test]
    fn sanitize_named_limits() {
        let out = text(
            "SELECT dialpad.sanitize_call_payload('{\"transcript\":\"abcdef\",\"a\":[1,2,3]}', \
               max_transcript_length => 2, max_array_items => 1)::text",
        );
        assert_eq!(
            out.as_deref(),
            Some(r#"{"a": [1, {"_truncated": true, "total_items": 3}], "transcript": "ab... [truncated]"}"#)
        );
        expect_sqlstate("PERFORM dialpad.sanitize_call_payload('{}', max_depth => -1)", "22023");
    }

    #[pg_test]
    fn sanitize_keeps_exact_numbers_and_whole_characters() {
        assert_eq!(
            text("SELECT dialpad.sanitize_call_payload('{\"n\": 123456789012345678901234567890.000001}')->>'n'")
                .as_deref(),
            Some("123456789012345678901234567890.000001")
        );
        // a 4-byte character right at the cut
        let t = text(
            "SELECT dialpad.sanitize_call_payload(jsonb_build_object('transcript', repeat('a', 499) || '😀' || repeat('b', 50)))->>'transcript'",
        )
        .unwrap();
        assert_eq!(t, format!("{}😀... [truncated]", "a".repeat(499)));
        let n = one::<i32>(
            "SELECT length(dialpad.sanitize_call_payload(jsonb_build_object('transcript', repeat('é', 1000)))->>'transcript')",
        );
        assert_eq!(n, Some(515));
    }

    #[pg_test]
    fn sanitized_payloads_are_bounded_for_any_input() {
        // one 9 MB key, 400,000 top-level keys: at most 64 kB of jsonb, call_id kept
        let key = one::<i32>(
            "SELECT pg_column_size(dialpad.sanitize_call_payload(jsonb_build_object('call_id', 1, repeat('k', 9 * 1024 * 1024), 1)))",
        )
        .unwrap();
        assert!(key <= 65536, "{key}");
        let many = one::<bool>(
            "WITH s AS (SELECT dialpad.sanitize_call_payload(jsonb_object_agg('key_' || g, g) || '{\"call_id\": 7}') AS p \
             FROM generate_series(1, 400000) g) \
             SELECT pg_column_size(p) <= 65536 AND p->>'call_id' = '7' AND p->>'total_keys' = '400001' \
                    AND dialpad.sanitize_call_payload(p) = p FROM s",
        );
        assert_eq!(many, Some(true));
        assert_eq!(
            one::<bool>("SELECT pg_column_size(dialpad.sanitize_call_payload(jsonb_build_object('a', repeat('x', 100)), max_bytes => 2048)) <= 2048"),
            Some(true)
        );
        expect_sqlstate("SELECT dialpad.sanitize_call_payload('{}', max_bytes => 100)", "22023");
    }

    #[pg_test]
    fn sanitize_is_idempotent_in_sql() {
        let same = one::<bool>(
            "WITH p AS (SELECT jsonb_build_object('t', repeat('x', 5000), 'transcript', repeat('y', 900), \
                 'arr', (SELECT jsonb_agg(jsonb_build_object('i', i)) FROM generate_series(1, 40) i), \
                 'o', jsonb_build_object('big', (SELECT jsonb_object_agg('k' || i, repeat('z', 3000)) FROM generate_series(1, 30) i)), \
                 'deep', '[[[[[[[1]]]]]]]'::jsonb) AS j), \
             s AS (SELECT dialpad.sanitize_call_payload(j) AS once FROM p) \
             SELECT dialpad.sanitize_call_payload(once) = once FROM s",
        );
        assert_eq!(same, Some(true));
    }

    #[pg_test]
    fn sanitize_survives_10000_deep_nesting() {
        let out = text(
            "SELECT dialpad.sanitize_call_payload((repeat('[', 10000) || '1' || repeat(']', 10000))::jsonb)::text",
        );
        assert_eq!(out.as_deref(), Some(r#"[[[[[["[max depth exceeded]"]]]]]]"#));
        // with the depth limit lifted, recursion is bounded by the stack check: an error, not a crash
        expect_sqlstate(
            "PERFORM dialpad.sanitize_call_payload((repeat('[', 10000) || '1' || repeat(']', 10000))::jsonb, max_depth => 100000)",
            "54001",
        );
    }

    #[pg_test]
    fn sanitize_handles_a_50mb_payload() {
        let n = one::<i64>(
            "SELECT pg_column_size(dialpad.sanitize_call_payload(jsonb_build_object( \
               'transcription_text', repeat('t', 50 * 1024 * 1024), 'call_id', 1)))::int8",
        )
        .unwrap();
        assert!(n < 2000, "{n}");
    }

    // ---- triggers on dialpad.calls -----------------------------------------------------------

    #[pg_test]
    fn calls_direction_is_stored_normalized() {
        run("INSERT INTO dialpad.calls (dialpad_call_id, direction, status) VALUES (1, 'Incoming', 'ringing'), (2, 'OUT', 'ringing')");
        assert_eq!(text("SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 1").as_deref(), Some("inbound"));
        assert_eq!(text("SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 2").as_deref(), Some("outbound"));
        run("INSERT INTO dialpad.calls (dialpad_call_id, direction, status) VALUES (3, 'sideways', 'ringing')");
        assert_eq!(text("SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 3"), None);
        run("UPDATE dialpad.calls SET direction = 'outgoing' WHERE dialpad_call_id = 1");
        assert_eq!(text("SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 1").as_deref(), Some("outbound"));
    }

    #[pg_test]
    fn calls_invalid_transition_is_skipped_and_recorded() {
        run("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (10, 'ringing')");
        run("UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 10");
        run("UPDATE dialpad.calls SET status = 'ended', transcript = 'bye' WHERE dialpad_call_id = 10");
        run("UPDATE dialpad.calls SET status = 'ringing', transcript = 'late' WHERE dialpad_call_id = 10");
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 10").as_deref(), Some("ended"));
        assert_eq!(text("SELECT transcript FROM dialpad.calls WHERE dialpad_call_id = 10").as_deref(), Some("bye"));
        assert_eq!(
            text(
                "SELECT from_status || '->' || to_status FROM dialpad.rejected_transitions WHERE dialpad_call_id = 10"
            )
            .as_deref(),
            Some("ended->ringing")
        );
        // INSERT ... ON CONFLICT DO UPDATE goes through the same rule
        run("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (10, 'active') \
             ON CONFLICT (dialpad_call_id) DO UPDATE SET status = EXCLUDED.status");
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 10").as_deref(), Some("ended"));
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 10"), Some(2));
        // the same status again is an idempotent retry, not a rejection
        run("UPDATE dialpad.calls SET status = 'ended' WHERE dialpad_call_id = 10");
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 10"), Some(2));
    }

    #[pg_test]
    fn calls_invalid_transition_errors_when_asked() {
        run("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (20, 'missed')");
        run("SET LOCAL dialpad.invalid_transition = 'error'");
        expect_sqlstate("UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 20", "23514");
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 20").as_deref(), Some("missed"));
        expect_sqlstate("SET LOCAL dialpad.invalid_transition = 'maybe'", "22023");
    }

    #[pg_test]
    fn calls_status_must_be_known() {
        expect_sqlstate("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (30, 'bogus')", "23503");
        expect_sqlstate("INSERT INTO dialpad.calls (dialpad_call_id, status) VALUES (30, NULL)", "23502");
    }

    #[pg_test]
    fn calls_copy_goes_through_the_triggers() {
        let path = format!("/tmp/pg_dialpad_copy_{}.csv", std::process::id());
        run(&format!(
            "COPY (SELECT 40 AS dialpad_call_id, 'INCOMING' AS direction, 'ringing' AS status) TO '{path}' CSV"
        ));
        run(&format!("COPY dialpad.calls (dialpad_call_id, direction, status) FROM '{path}' CSV"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(text("SELECT direction FROM dialpad.calls WHERE dialpad_call_id = 40").as_deref(), Some("inbound"));
    }

    // ---- webhook_events ----------------------------------------------------------------------

    #[pg_test]
    fn webhook_payload_is_immutable_and_any_json_is_accepted() {
        run("INSERT INTO dialpad.webhook_events (payload) VALUES \
             ('{\"call_id\": 1, \"state\": \"ringing\"}'), ('[1,2]'), ('\"text\"'), ('null'), ('{\"state\": 5}')");
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.webhook_events"), Some(5));
        assert_eq!(
            text("SELECT string_agg(coalesce(event_type, '-'), ',' ORDER BY id) FROM dialpad.webhook_events")
                .as_deref(),
            Some("ringing,-,-,-,-")
        );
        expect_sqlstate("UPDATE dialpad.webhook_events SET payload = '{}' WHERE event_type = 'ringing'", "23001");
        // call_id and the de-duplication key are filled from payloads of any size and shape
        run("INSERT INTO dialpad.webhook_events (payload) SELECT jsonb_build_object('call_id', 6612345678901234, \
             'state', 'hangup', 'event_timestamp', 1787158781250, 'date_connected', 1787158720114, \
             'date_ended', 1787158781000, 'transcription_text', repeat('t', n)) FROM unnest(ARRAY[0, 100, 3000, 100000]) n \
             ON CONFLICT DO NOTHING");
        assert_eq!(
            text("SELECT string_agg(DISTINCT call_id || ' ' || dedupe_key, ',') FROM dialpad.webhook_events WHERE event_type = 'hangup'").as_deref(),
            Some("6612345678901234 6612345678901234/hangup/1787158781250")
        );
        run("UPDATE dialpad.webhook_events SET processed_at = now(), attempts = 1 WHERE event_type = 'ringing'");
        // Every delivery is stored; deliveries of one event inside one statement cannot see
        // each other at insert, so all four wait for the processor, which applies one.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND dead_at IS NULL"),
            Some(8)
        );
        run("SELECT dialpad.process_events()");
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM dialpad.webhook_events WHERE event_type = 'hangup' AND duplicate_of IS NOT NULL"
            ),
            Some(3)
        );
    }

    // ---- installation ------------------------------------------------------------------------

    #[pg_test]
    fn every_function_pins_search_path() {
        let unpinned = one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass \
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_dialpad' \
             WHERE p.pronamespace <> 'tests'::regnamespace \
               AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)",
        );
        assert_eq!(unpinned, Some(0));
        let total = one::<i64>(
            "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_dialpad' \
             WHERE d.classid = 'pg_proc'::regclass",
        );
        assert!(total.unwrap() >= 8);
    }

    #[pg_test]
    fn tables_are_kept_by_pg_dump() {
        let registered = text(
            "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_extension e, unnest(e.extconfig) AS cfg(relid) \
             JOIN pg_class c ON c.oid = cfg.relid WHERE e.extname = 'pg_dialpad' AND c.relkind = 'r'",
        );
        assert_eq!(
            registered.as_deref(),
            // The partitioned tables hold no rows themselves: their DEFAULT partitions are
            // registered; the time partitions run_maintenance() makes are not members, so
            // pg_dump keeps them (and their rows) as it keeps any table. logical_calls is
            // derived: a restore's COPY of the calls rebuilds it (tests/install.rs).
            Some("call_statuses,calls,deleted_rules,ingest_counters,leg_backfill,rederive_jobs,rederive_queue,rejected_transitions_default,sources,state_mapping,status_transitions,webhook_events_default")
        );
    }

    #[pg_test]
    fn the_call_row_definition_matches_the_table() {
        use crate::pipeline::call_row::{read_sql, CallRow, CallRowSql, NOT_WRITTEN};
        let defined: Vec<&str> = CallRow::COLUMNS.iter().map(|(c, _)| *c).collect();
        let table: Vec<String> = Spi::connect(|c| {
            c.select(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = 'dialpad.calls'::regclass AND attnum > 0 AND NOT attisdropped",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect()
        });
        for c in &defined {
            assert!(table.iter().any(|t| t == c), "{c} (src/pipeline/call_row.rs) is not a column of dialpad.calls");
        }
        for t in &table {
            assert!(
                defined.contains(&t.as_str()) || NOT_WRITTEN.contains(&t.as_str()),
                "dialpad.calls.{t} is neither in src/pipeline/call_row.rs nor in NOT_WRITTEN"
            );
        }
        // every column reads back as its declared type
        let sql = crate::pipeline::tables::Target::render(&crate::pipeline::tables::Whole, read_sql());
        run(&sql.replace("$1", "ARRAY[]::int8[]"));
    }

    #[pg_test]
    fn version_info_names_the_version() {
        assert!(text("SELECT dialpad.version_info()")
            .unwrap()
            .starts_with(&format!("pg_dialpad {} ", env!("CARGO_PKG_VERSION"))));
    }

    // ---- process_events ----------------------------------------------------------------------

    fn event(call: i64, state: &str, ts: i64, extra: &str) -> String {
        format!(
            "INSERT INTO dialpad.webhook_events (payload) VALUES ('{{\"call_id\": {call}, \"state\": \"{state}\", \"event_timestamp\": {ts}{extra}}}')"
        )
    }

    #[pg_test]
    fn process_events_turns_events_into_calls() {
        // answered inbound, delivered out of order and with a duplicate
        run(&event(
            1,
            "hangup",
            1787158781250,
            r#", "direction": "incoming", "date_connected": 1787158720114, "date_ended": 1787158781000, "duration": 60886.0, "date_started": 1787158716092"#,
        ));
        run(&event(1, "ringing", 1787158716300, r#", "direction": "inbound", "external_number": "+14155550123""#));
        run(&event(1, "connected", 1787158720114, r#", "date_connected": 1787158720114"#));
        // a redelivery is stored once (one row per call_id/state/event_timestamp)
        run(&(event(1, "connected", 1787158720114, r#", "date_connected": 1787158720114"#) + " ON CONFLICT DO NOTHING"));
        // missed inbound
        run(&event(2, "ringing", 1000000000000, r#", "direction": "inbound""#));
        run(&event(2, "hangup", 1000000005000, r#", "direction": "inbound""#));
        // outbound never answered
        run(&event(3, "calling", 1000000000000, r#", "direction": "outgoing""#));
        run(&event(3, "hangup", 1000000009000, r#", "direction": "outgoing""#));
        // voicemail, then an enrichment event
        run(&event(4, "ringing", 1000000000000, r#", "direction": "in""#));
        run(&event(4, "voicemail", 1000000003000, r#", "voicemail_link": "https://vm/4""#));
        run(&event(4, "hangup", 1000000004000, ""));
        run(&event(4, "transcription", 1000000009000, r#", "transcription_text": "hello there""#));

        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(11));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(0));
        let s = |id: i64| {
            text(&format!(
                "SELECT status || '/' || coalesce(direction, '-') FROM dialpad.calls WHERE dialpad_call_id = {id}"
            ))
        };
        assert_eq!(s(1).as_deref(), Some("ended/inbound"));
        assert_eq!(s(2).as_deref(), Some("missed/inbound"));
        assert_eq!(s(3).as_deref(), Some("rejected/outbound"));
        assert_eq!(s(4).as_deref(), Some("voicemail/inbound"));
        assert_eq!(
            text("SELECT duration_seconds::text || ' ' || started_at::text || ' ' || external_number FROM dialpad.calls WHERE dialpad_call_id = 1 AND connected_at IS NOT NULL")
                .as_deref(),
            Some("60.886 2026-08-19 16:58:36.092+00 +14155550123")
        );
        assert_eq!(
            text("SELECT transcript || ' ' || voicemail_link || ' ' || last_state FROM dialpad.calls WHERE dialpad_call_id = 4").as_deref(),
            Some("hello there https://vm/4 transcription")
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL"), Some(0));
        assert_eq!(
            one::<bool>("SELECT raw_payload = dialpad.sanitize_call_payload((SELECT payload FROM dialpad.webhook_events WHERE id = (SELECT max(id) FROM dialpad.webhook_events))) FROM dialpad.calls WHERE dialpad_call_id = 4"),
            Some(true)
        );
        // within a batch the events of a call were applied in event order: no rejection
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 1"), Some(0));
        // a stale event delivered later takes its place in the history: same result
        run(&event(1, "ringing", 1787158716000, ""));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(1));
        assert_eq!(s(1).as_deref(), Some("ended/inbound"));
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.rejected_transitions WHERE dialpad_call_id = 1"), Some(0));
        // a move the rules forbid, even in event order, is refused and recorded with its event id
        run(&event(1, "connected", 1787158799999, ""));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(1));
        assert_eq!(s(1).as_deref(), Some("ended/inbound"));
        assert_eq!(
            text("SELECT r.from_status || '->' || r.to_status || ':' || e.event_type FROM dialpad.rejected_transitions r JOIN dialpad.webhook_events e ON e.id = r.event_id WHERE r.dialpad_call_id = 1").as_deref(),
            Some("ended->active:connected")
        );
    }

    #[pg_test]
    fn process_events_respects_max_and_order() {
        for i in 0..7 {
            run(&event(100 + i, "ringing", 1000000000000 + i, ""));
        }
        assert_eq!(one::<i32>("SELECT dialpad.process_events(3)"), Some(3));
        assert_eq!(
            text("SELECT string_agg(dialpad_call_id::text, ',' ORDER BY dialpad_call_id) FROM dialpad.calls")
                .as_deref(),
            Some("100,101,102")
        );
        assert_eq!(one::<i32>("SELECT dialpad.process_events(0)"), Some(0));
        expect_sqlstate("PERFORM dialpad.process_events(-1)", "22023");
        assert_eq!(one::<i32>("SELECT dialpad.process_events(100)"), Some(4));
    }

    #[pg_test]
    fn bad_events_are_retried_or_dead_lettered_and_never_block_good_ones() {
        run("INSERT INTO dialpad.webhook_events (payload) VALUES ('{\"state\": \"ringing\"}'), ('[1,2,3]'), ('{\"call_id\": \"abc\"}')");
        run(&event(7, "ringing", 1000000000000, r#", "date_started": 99999999999999999999"#));
        run(&event(8, "ringing", 1000000000000, ""));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(5));
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 8").as_deref(), Some("ringing"));
        // An event that cannot be read never can be (its payload is immutable): dead at once.
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.dead_events WHERE attempts = 1"), Some(4));
        assert_eq!(
            text("SELECT string_agg(last_error, ' | ' ORDER BY id) FROM dialpad.dead_events").as_deref(),
            Some("payload has no call_id | payload is not a JSON object | field call_id: \"abc\" is not an integer | field date_started: 100000000000000000000 is not a plausible epoch time in milliseconds")
        );
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(0));
        let dead_id = one::<i64>("SELECT min(id) FROM dialpad.dead_events").unwrap();
        assert_eq!(one::<bool>(&format!("SELECT dialpad.retry_event({dead_id})")), Some(true));
        assert_eq!(one::<bool>("SELECT dialpad.retry_event(-1)"), Some(false));
        assert_eq!(one::<i64>("SELECT dialpad.retry_dead_events()"), Some(3));
        assert_eq!(one::<i64>("SELECT due FROM dialpad.queue_stats"), Some(4));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(4));
        assert_eq!(one::<i64>("SELECT dead FROM dialpad.queue_stats"), Some(4));
    }

    #[pg_test]
    fn a_constraint_violation_fails_only_its_call() {
        // a direction that normalizes fine but a target name the processor writes as-is;
        // force a failure with a huge duration (out of numeric(14,3)) slipped past nothing:
        // instead make the status unknown by editing the mapping to a status then deleting it
        run("INSERT INTO dialpad.call_statuses VALUES ('weird', false, NULL)");
        run("INSERT INTO dialpad.state_mapping (state, status) VALUES ('weird_state', 'weird')");
        run(&event(50, "ringing", 1000000000000, ""));
        run(&event(51, "weird_state", 1000000000000, ""));
        // make 'weird' unknown to the calls table without the rules noticing: a CHECK
        run("ALTER TABLE dialpad.calls ADD CONSTRAINT no_weird CHECK (status <> 'weird')");
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(2));
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 50").as_deref(), Some("ringing"));
        assert_eq!(one::<i64>("SELECT count(*) FROM dialpad.calls WHERE dialpad_call_id = 51"), Some(0));
        assert_eq!(
            one::<bool>("SELECT last_error LIKE '%no_weird%' AND attempts = 1 FROM dialpad.webhook_events WHERE payload->>'call_id' = '51'"),
            Some(true)
        );
    }

    #[pg_test]
    fn worker_status_explains_itself() {
        let rows = one::<i64>("SELECT count(*) FROM dialpad.worker_status()").unwrap();
        assert!(rows >= 1);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM dialpad.worker_status() WHERE NOT running AND hint IS NULL"),
            Some(0)
        );
        assert!(one::<i64>("SELECT count(*) FROM dialpad.payload_stats").unwrap() == 2);
    }

    #[pg_test]
    fn a_late_event_re_derives_the_call_from_its_history() {
        run(&event(60, "hangup", 1000000004000, r#", "direction": "inbound""#));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(1));
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 60").as_deref(), Some("missed"));
        // the voicemail happened before the hangup, but was delivered after it
        run(&event(60, "ringing", 1000000000000, ""));
        run(&event(60, "voicemail", 1000000003000, r#", "voicemail_link": "https://vm/60""#));
        assert_eq!(one::<i32>("SELECT dialpad.process_events()"), Some(2));
        assert_eq!(
            text("SELECT status || ' ' || last_state || ' ' || voicemail_link FROM dialpad.calls WHERE dialpad_call_id = 60").as_deref(),
            Some("voicemail hangup https://vm/60")
        );
        // a direct write still cannot leave the terminal status
        run("UPDATE dialpad.calls SET status = 'active' WHERE dialpad_call_id = 60");
        assert_eq!(text("SELECT status FROM dialpad.calls WHERE dialpad_call_id = 60").as_deref(), Some("voicemail"));
        assert_eq!(
            text("SELECT event_type || ':' || call_id FROM dialpad.webhook_events ORDER BY id LIMIT 1").as_deref(),
            Some("hangup:60")
        );
    }

    /// The claim's plans, with the settings the processor runs it with, from the lowest id
    /// and from a floor (which also bounds received_at).
    fn claim_plans() -> Vec<String> {
        let claim =
            crate::pipeline::tables::Target::render(&crate::pipeline::tables::Whole, crate::pipeline::batch::CLAIM_SQL);
        [(0, "'-infinity'"), (15_000, "date_trunc('day', now(), 'UTC')")]
            .iter()
            .map(|(from, received)| batch_plan(&claim, "int4, int8, timestamptz", &format!("50, {from}, {received}")))
            .collect()
    }

    /// A claim plan that walks the pending indexes in id order, never a table, never sorting.
    fn assert_ordered_claim(plans: Vec<String>) {
        for plan in plans {
            assert!(plan.contains("Merge Append"), "{plan}");
            assert!(plan.contains("Index Scan using webhook_events_p"), "{plan}");
            // the partial pending index of each partition, never its primary key
            assert!(!plan.contains("_pkey"), "{plan}");
            assert!(!plan.contains("Seq Scan"), "{plan}");
            // no Sort node ("Sort Key" of the Merge Append is the index order)
            assert!(!plan.contains("Sort  ("), "{plan}");
        }
    }

    /// The generic plan of `rendered` (a statement of a batch) for the arguments `args` of
    /// types `types`, with the settings the processor runs it with.
    fn batch_plan(rendered: &str, types: &str, args: &str) -> String {
        run(&format!("PREPARE dialpad_batch_statement({types}) AS {rendered}"));
        for (name, value) in crate::pipeline::batch::BATCH_PLAN_SETTINGS {
            run(&format!("SET LOCAL {} = {}", name.to_str().unwrap(), value.to_str().unwrap()));
        }
        let plan = Spi::connect(|c| {
            c.select(&format!("EXPLAIN EXECUTE dialpad_batch_statement({args})"), None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        });
        run("DEALLOCATE dialpad_batch_statement");
        plan
    }

    #[pg_test]
    fn the_statements_of_every_batch_are_planned_once_on_their_indexes() {
        // Statistics that call every table empty (after install, or a TRUNCATE and VACUUM),
        // then 20,000 events in 30 daily partitions: each statement a batch runs every time
        // is planned once, generic, and reads an index, never a whole table; the mark runs on
        // one partition, by its primary key.
        run("ANALYZE dialpad.webhook_events");
        run("ANALYZE dialpad.calls");
        run("INSERT INTO dialpad.webhook_events (payload, received_at)
               SELECT jsonb_build_object('call_id', i, 'state', 'ringing', 'event_timestamp', 1000000000000 + i),
                      now() - make_interval(days => i % 30)
                 FROM generate_series(1, 20000) i");
        run("SELECT count(*) FROM dialpad.run_maintenance()");
        let today = text(
            "SELECT tableoid::regclass::text FROM dialpad.webhook_events WHERE received_at >= now() - interval '1 hour' LIMIT 1",
        )
        .unwrap();
        let mark = batch_plan(&crate::pipeline::batch::MARK_SQL.replace("{partition}", &today), "int8[]", "'{1,2}'");
        assert!(mark.contains(&format!("Update on {}", today.rsplit('.').next().unwrap())), "{mark}");
        assert!(mark.contains("_pkey"), "{mark}");
        assert!(!mark.contains("Seq Scan"), "{mark}");
        let whole = |sql| crate::pipeline::tables::Target::render(&crate::pipeline::tables::Whole, sql);
        let history = batch_plan(&whole(crate::pipeline::batch::HISTORY_SQL), "int8[], int8[]", "'{1,2}', '{3}'");
        assert!(history.contains("Index"), "{history}");
        assert!(!history.contains("Seq Scan"), "{history}");
        let read = batch_plan(&whole(crate::pipeline::call_row::read_sql()), "int8[]", "'{1,2}'");
        assert!(read.contains("calls_pkey"), "{read}");
        assert!(!read.contains("Seq Scan"), "{read}");
        // A batch that claims from 30 partitions marks its events in every one of them
        // (more partitions than the mark plans a backend keeps).
        assert_eq!(one::<i32>("SELECT dialpad.process_events(300)"), Some(300));
        assert_eq!(
            text("SELECT count(*)::text || ' ' || count(DISTINCT tableoid)::text FROM dialpad.webhook_events WHERE processed_at IS NOT NULL OR attempts > 0").as_deref(),
            Some("300 30")
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM dialpad.webhook_events WHERE processed_at IS NULL AND attempts = 0 AND id <= 300"
            ),
            Some(0)
        );
    }

    #[pg_test]
    fn the_claim_stays_on_the_pending_index() {
        // A large inbox in 30 daily partitions where almost everything is processed: the
        // claim (of 50, fewer than the 200 pending) reads each partition's partial index in
        // id order (a Merge Append; the floor bounds that scan), never a whole table, and
        // never sorts. (When every pending event fits in one claim, the planner may as well
        // read them all from the same indexes and sort that handful.) First with statistics
        // from when the table was empty (right after install or a TRUNCATE), then with
        // current ones.
        run("ANALYZE dialpad.webhook_events");
        run("INSERT INTO dialpad.webhook_events (payload, received_at)
               SELECT jsonb_build_object('call_id', i, 'state', 'ringing', 'event_timestamp', 1000000000000 + i),
                      now() - make_interval(days => i % 30)
                 FROM generate_series(1, 20000) i");
        run("SELECT count(*) FROM dialpad.run_maintenance()");
        assert_eq!(
            text("SELECT count(*)::text FROM dialpad.partitions WHERE parent = 'dialpad.webhook_events'::regclass AND NOT is_default AND estimated_rows >= 0 AND range_to <= now() + interval '1 day'").as_deref(),
            Some("30")
        );
        assert_eq!(text("SELECT count(*)::text FROM ONLY dialpad.webhook_events_default").as_deref(), Some("0"));
        // 1% pending in every partition (the partition of an event is its id modulo 30)
        run("UPDATE dialpad.webhook_events SET processed_at = now() WHERE (id / 30) % 100 <> 0");
        assert_ordered_claim(claim_plans());
        run("ANALYZE dialpad.webhook_events");
        let plans = claim_plans();
        // From the lowest id, every partition is read; from a floor (here today's first
        // instant: partitions are UTC days), only those from the floor's received_at on
        // (today's, the ones ahead and DEFAULT): the 29 older ones are pruned when the plan
        // starts, not set up at every batch.
        assert!(!plans[0].contains("Subplans Removed"), "{}", plans[0]);
        assert!(plans[1].contains("Subplans Removed: 29"), "{}", plans[1]);
        assert_ordered_claim(plans);

        // Then every partition analyzed while empty (after a TRUNCATE and VACUUM, or a new
        // day's partition analyzed in its first minute) and 20,000 pending events in today's:
        // the planner believes the inbox empty; the claim must still not read and sort every
        // pending event for a batch of 50.
        run("TRUNCATE dialpad.webhook_events");
        run("ANALYZE dialpad.webhook_events");
        run("INSERT INTO dialpad.webhook_events (payload)
               SELECT jsonb_build_object('call_id', i, 'state', 'ringing', 'event_timestamp', 1000000000000 + i)
                 FROM generate_series(1, 20000) i");
        assert_ordered_claim(claim_plans());
        // Statistics taken while every event was pending, then most of them processed (a
        // backlog drained): the claim must still read the pending index, not walk the
        // primary key through the processed events.
        run("ANALYZE dialpad.webhook_events");
        run("UPDATE dialpad.webhook_events SET processed_at = now() WHERE id % 100 <> 0");
        assert_ordered_claim(claim_plans());
    }
}
