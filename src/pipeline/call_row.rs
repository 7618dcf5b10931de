//! How a `dialpad.calls` row travels between Rust and SQL: the SELECT that reads rows
//! back, the upsert that writes them, its argument arrays and their types, all generated
//! from the one list of the row's columns (`dialpad_core::call_row_columns!`, next to the
//! plain [`CallRow`] the rules fold), by column name, never by position. A pg_test checks
//! that every column named there exists in `dialpad.calls` and that every other column of
//! the table is one the processor leaves alone.

pub(crate) use crate::domain::call_row::CallRow;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys;
use std::sync::OnceLock;

/// How a column travels between Rust and SQL: `T` in the struct, `Arg` in the upsert's
/// argument arrays, `SQL` its type in SQL (the read casts to it).
pub(crate) trait Kind<T> {
    type Arg: pgrx::IntoDatum + 'static;
    const SQL: &'static str;
    /// The type the read casts the column to (jsonb travels as text).
    const READ: &'static str = Self::SQL;
    const ARRAY: pg_sys::Oid;
    fn arg(value: &T) -> Self::Arg;
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<T, pgrx::spi::Error>;
}

/// The SQL types of the columns.
#[allow(non_camel_case_types)]
pub(crate) mod kind {
    pub(crate) struct int4;
    pub(crate) struct int8;
    pub(crate) struct text;
    pub(crate) struct timestamptz;
    /// Stored as numeric; read and written as float8 (exact for the milliseconds Dialpad sends).
    pub(crate) struct float8;
    pub(crate) struct bool;
    /// JSON text in Rust, jsonb in the table (written as jsonb prints it, so it reads back equal).
    pub(crate) struct jsonb;
}

impl Kind<i64> for kind::int8 {
    type Arg = i64;
    const SQL: &'static str = "int8";
    const ARRAY: pg_sys::Oid = pg_sys::INT8ARRAYOID;
    fn arg(value: &i64) -> i64 {
        *value
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<i64, pgrx::spi::Error> {
        Ok(row.get(ordinal)?.unwrap_or_default())
    }
}

impl Kind<Option<i64>> for kind::int8 {
    type Arg = Option<i64>;
    const SQL: &'static str = "int8";
    const ARRAY: pg_sys::Oid = pg_sys::INT8ARRAYOID;
    fn arg(value: &Option<i64>) -> Option<i64> {
        *value
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<i64>, pgrx::spi::Error> {
        row.get(ordinal)
    }
}

impl Kind<i32> for kind::int4 {
    type Arg = i32;
    const SQL: &'static str = "int4";
    const ARRAY: pg_sys::Oid = pg_sys::INT4ARRAYOID;
    fn arg(value: &i32) -> i32 {
        *value
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<i32, pgrx::spi::Error> {
        Ok(row.get(ordinal)?.unwrap_or_default())
    }
}

impl Kind<String> for kind::text {
    type Arg = String;
    const SQL: &'static str = "text";
    const ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
    fn arg(value: &String) -> String {
        value.clone()
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<String, pgrx::spi::Error> {
        Ok(row.get(ordinal)?.unwrap_or_default())
    }
}

impl Kind<Option<String>> for kind::text {
    type Arg = Option<String>;
    const SQL: &'static str = "text";
    const ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
    fn arg(value: &Option<String>) -> Option<String> {
        value.clone()
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<String>, pgrx::spi::Error> {
        row.get(ordinal)
    }
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's own representation).
impl Kind<Option<i64>> for kind::timestamptz {
    type Arg = Option<TimestampWithTimeZone>;
    const SQL: &'static str = "timestamptz";
    const ARRAY: pg_sys::Oid = pg_sys::TIMESTAMPTZARRAYOID;
    fn arg(value: &Option<i64>) -> Option<TimestampWithTimeZone> {
        value.and_then(|us| TimestampWithTimeZone::try_from(us).ok())
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<i64>, pgrx::spi::Error> {
        Ok(row.get::<TimestampWithTimeZone>(ordinal)?.map(|t| t.into_inner()))
    }
}

impl Kind<Option<f64>> for kind::float8 {
    type Arg = Option<f64>;
    const SQL: &'static str = "float8";
    const ARRAY: pg_sys::Oid = pg_sys::FLOAT8ARRAYOID;
    fn arg(value: &Option<f64>) -> Option<f64> {
        *value
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<f64>, pgrx::spi::Error> {
        row.get(ordinal)
    }
}

impl Kind<Option<bool>> for kind::bool {
    type Arg = Option<bool>;
    const SQL: &'static str = "bool";
    const ARRAY: pg_sys::Oid = pg_sys::BOOLARRAYOID;
    fn arg(value: &Option<bool>) -> Option<bool> {
        *value
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<bool>, pgrx::spi::Error> {
        row.get(ordinal)
    }
}

impl Kind<Option<String>> for kind::jsonb {
    type Arg = Option<String>;
    const SQL: &'static str = "jsonb";
    const READ: &'static str = "text";
    const ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
    fn arg(value: &Option<String>) -> Option<String> {
        value.clone()
    }
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<String>, pgrx::spi::Error> {
        row.get(ordinal)
    }
}

/// The SQL side of [`CallRow`]: its columns' SQL types and how a row is read back.
pub(crate) trait CallRowSql: Sized {
    /// (column, SQL type) of every column, in one order used everywhere.
    const COLUMNS: &'static [(&'static str, &'static str)];
    /// (column, the SQL type it is read as), in [`CallRowSql::COLUMNS`] order.
    const READS: &'static [(&'static str, &'static str)];
    /// Reads a row selected by [`read_sql`] (its columns in [`CallRowSql::COLUMNS`] order).
    fn read(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Self, pgrx::spi::Error>;
}

macro_rules! call_row_sql {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty => $kind:ident ),* $(,)?) => {
        impl CallRowSql for CallRow {
            const COLUMNS: &'static [(&'static str, &'static str)] =
                &[ $( (stringify!($field), <kind::$kind as Kind<$ty>>::SQL) ),* ];

            const READS: &'static [(&'static str, &'static str)] =
                &[ $( (stringify!($field), <kind::$kind as Kind<$ty>>::READ) ),* ];

            fn read(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<CallRow, pgrx::spi::Error> {
                let mut ordinal = 0;
                Ok(CallRow {
                    $( $field: { ordinal += 1; <kind::$kind as Kind<$ty>>::read(row, ordinal)? }, )*
                })
            }
        }

        /// Rows to upsert, column by column: the arguments of [`upsert_sql`].
        #[derive(Default)]
        pub(crate) struct CallColumns {
            $( $field: Vec<<kind::$kind as Kind<$ty>>::Arg>, )*
            raw_payload: Vec<Option<Vec<u8>>>,
        }

        impl CallColumns {
            /// Adds a row and its sanitized payload (jsonb bytes; None keeps the stored one).
            pub(crate) fn push(&mut self, row: &CallRow, raw_payload: Option<Vec<u8>>) {
                $( self.$field.push(<kind::$kind as Kind<$ty>>::arg(&row.$field)); )*
                self.raw_payload.push(raw_payload);
            }

            pub(crate) fn is_empty(&self) -> bool {
                self.raw_payload.is_empty()
            }

            /// The upsert's argument types, in [`upsert_sql`]'s order.
            pub(crate) fn types() -> Vec<pg_sys::Oid> {
                vec![ $( <kind::$kind as Kind<$ty>>::ARRAY, )* pg_sys::JSONBARRAYOID ]
            }

            /// The upsert's arguments, in [`upsert_sql`]'s order.
            pub(crate) fn into_args<'a>(self) -> Vec<DatumWithOid<'a>> {
                vec![ $( self.$field.into(), )* crate::pg::datum::jsonb_array(self.raw_payload) ]
            }
        }
    };
}

dialpad_core::call_row_columns!(call_row_sql);

/// The columns of `dialpad.calls` the processor never writes.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) const NOT_WRITTEN: &[&str] = &["raw_payload", "created_at", "updated_at", "logical_call_id"];

/// Reads the rows of the calls in `$1` (int8[]).
pub(crate) fn read_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let columns: Vec<String> = CallRow::READS.iter().map(|(c, t)| format!("{c}::pg_catalog.{t}")).collect();
        format!("SELECT {} FROM {{calls}} WHERE dialpad_call_id OPERATOR(pg_catalog.=) ANY ($1)", columns.join(", "))
    })
}

/// Inserts or updates every row of a [`CallColumns`] in one statement: one array argument
/// per column, then the sanitized payloads (NULL keeps the stored one).
pub(crate) fn upsert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let names: Vec<&str> = CallRow::COLUMNS.iter().map(|(c, _)| *c).collect();
        let unnests: Vec<String> = CallRow::COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("pg_catalog.unnest(${}::pg_catalog.{t}[])", i + 1))
            .collect();
        let updates: Vec<String> =
            names.iter().filter(|c| **c != "dialpad_call_id").map(|c| format!("{c} = EXCLUDED.{c}")).collect();
        format!(
            "INSERT INTO {{calls}} AS c ({cols}, raw_payload)
SELECT {u_cols}, u.raw_payload
  FROM ROWS FROM ({unnests}, pg_catalog.unnest(${raw}::pg_catalog.jsonb[])) AS u({cols}, raw_payload)
ON CONFLICT (dialpad_call_id) DO UPDATE SET {updates},
       raw_payload = COALESCE(EXCLUDED.raw_payload, c.raw_payload), updated_at = pg_catalog.now()",
            cols = names.join(", "),
            u_cols = names.iter().map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", "),
            unnests = unnests.join(", "),
            raw = names.len() + 1,
            updates = updates.join(", "),
        )
    })
}
