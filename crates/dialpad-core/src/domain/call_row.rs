//! One `dialpad.calls` row as the rules fold it ([`CallRow`]), and the one list of its columns.
//!
//! [`call_row_columns!`](crate::call_row_columns) hands the list to a macro: here it makes
//! the plain struct; the extension's storage layer makes the SQL that reads and writes the
//! row (its reads, its upsert and their argument arrays) from the same list, by column name,
//! never by position. Adding a column is one line here (plus its `ALTER TABLE` in the
//! upgrade script). Each column is `name: Rust type => SQL kind` (the kind says how the
//! storage layer moves it: int4, int8, text, timestamptz, float8, bool, jsonb).

/// Calls `$callback! { name: type => kind, ... }` with every column of `dialpad.calls` the
/// processor writes, in one order used everywhere.
#[macro_export]
macro_rules! call_row_columns {
    ($callback:ident) => {
        $callback! {
            dialpad_call_id: i64 => int8,
            direction: Option<String> => text,
            status: String => text,
            last_state: Option<String> => text,
            external_number: Option<String> => text,
            internal_number: Option<String> => text,
            /// Microseconds since 2000-01-01 UTC, as every timestamp here.
            started_at: Option<i64> => timestamptz,
            connected_at: Option<i64> => timestamptz,
            ended_at: Option<i64> => timestamptz,
            duration_seconds: Option<f64> => float8,
            target_id: Option<String> => text,
            target_type: Option<String> => text,
            target_name: Option<String> => text,
            contact_id: Option<String> => text,
            contact_name: Option<String> => text,
            master_call_id: Option<i64> => int8,
            entry_point_call_id: Option<i64> => int8,
            operator_call_id: Option<i64> => int8,
            recording_url: Option<String> => text,
            voicemail_link: Option<String> => text,
            transcript: Option<String> => text,
            last_event_at: Option<i64> => timestamptz,
            /// Events applied to the row (redeliveries not counted); the processor compares it with
            /// the history the inbox still holds (retention drops old partitions).
            events_applied: i32 => int4,
            /// The webhook source of the call's first event (dialpad.sources), for row-level security.
            source: Option<String> => text,
            talk_seconds: Option<f64> => float8,
            hold_seconds: Option<f64> => float8,
            total_duration_seconds: Option<f64> => float8,
            rang_at: Option<i64> => timestamptz,
            queued_at: Option<i64> => timestamptz,
            is_transferred: Option<bool> => bool,
            group_id: Option<String> => text,
            labels: Option<String> => jsonb,
            csat_score: Option<f64> => float8,
            /// Every recording of the leg (domain::recordings), as JSON text.
            recordings: Option<String> => jsonb,
            voicemail_recording_url: Option<String> => text,
            /// The Dialpad state of the event that gave the leg its terminal status.
            end_state: Option<String> => text,
            /// `transferred_from.id`: set on the leg a transfer created (domain::event).
            transferred_from_id: Option<String> => text,
        }
    };
}

macro_rules! plain_call_row {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty => $kind:ident ),* $(,)?) => {
        /// One `dialpad.calls` row, as the processor reads and writes it.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct CallRow {
            $( $(#[$doc])* pub $field: $ty, )*
        }
    };
}

crate::call_row_columns!(plain_call_row);
