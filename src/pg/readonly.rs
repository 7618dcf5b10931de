//! Read-only SPI, for a lookup made in the middle of another statement (the inbox's insert
//! trigger): statements run with the latest snapshot and no CommandCounterIncrement, so the
//! statement being run does not see its own rows (pgrx's client runs read-write, whose
//! CommandCounterIncrement in the middle of an INSERT would make them visible). Plans are
//! kept by the caller ([`KeptLookup`]), one generic plan each.

use super::error::Error;
use pgrx::pg_sys;
use std::ffi::CString;

/// An argument of a [`KeptLookup`], of the type it was prepared with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int8(i64),
    Text(&'a str),
    TimestampTz(pg_sys::TimestampTz),
}

impl Arg<'_> {
    fn type_oid(&self) -> pg_sys::Oid {
        match self {
            Arg::Int8(_) => pg_sys::INT8OID,
            Arg::Text(_) => pg_sys::TEXTOID,
            Arg::TimestampTz(_) => pg_sys::TIMESTAMPTZOID,
        }
    }
}

/// An open read-only SPI session (see [`read_only`]).
pub(crate) struct Session(());

/// Runs `f` in an SPI session of its own, connected and finished here. On an ERROR inside,
/// the (sub)transaction's abort cleans the session up.
pub(crate) fn read_only<R>(f: impl FnOnce(&Session) -> R) -> Result<R, Error> {
    // SAFETY: SPI_connect opens a session that SPI_finish below closes on the normal path.
    let rc = unsafe { pg_sys::SPI_connect() };
    if rc != pg_sys::SPI_OK_CONNECT as i32 {
        return Err(Error::SpiConnect(rc));
    }
    let result = f(&Session(()));
    // SAFETY: closes the session opened above; nothing of it is used after.
    unsafe { pg_sys::SPI_finish() };
    Ok(result)
}

/// The arguments of [`KeptLookup`]s as datums, made once in a session for any number of
/// lookups with the same arguments (the text ones are palloc'd in the session's memory).
pub(crate) struct Args<'s> {
    types: Vec<pg_sys::Oid>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<std::ffi::c_char>,
    _session: std::marker::PhantomData<&'s Session>,
}

impl Session {
    /// `args` as datums, for lookups in this session.
    pub(crate) fn args(&self, args: &[Arg<'_>]) -> Args<'_> {
        let values = args
            .iter()
            .map(|a| match *a {
                Arg::Int8(v) | Arg::TimestampTz(v) => pg_sys::Datum::from(v),
                // SAFETY: inside the session: palloc'd in its memory context, from a valid
                // pointer and length.
                Arg::Text(s) => unsafe {
                    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                        s.as_ptr() as *const std::ffi::c_char,
                        s.len() as i32,
                    ))
                },
            })
            .collect();
        Args {
            types: args.iter().map(Arg::type_oid).collect(),
            values,
            nulls: vec![b' ' as std::ffi::c_char; args.len()],
            _session: std::marker::PhantomData,
        }
    }

    /// The first column of every row `sql` (a SELECT of one oid column, no parameters)
    /// returns.
    pub(crate) fn oids(&self, sql: &str) -> Result<Vec<pg_sys::Oid>, Error> {
        let sql = CString::new(sql).map_err(|_| Error::NulInSql)?;
        // SAFETY: inside this session; a read-only execution of a valid C string.
        let rc = unsafe { pg_sys::SPI_execute(sql.as_ptr(), true, 0) };
        let mut out = Vec::new();
        if rc == pg_sys::SPI_OK_SELECT as i32 {
            // SAFETY: the result of the SELECT just run, in this session.
            unsafe { for_each_value(pg_sys::OIDOID, |d| out.push(pg_sys::Oid::from(d.value() as u32))) };
        }
        Ok(out)
    }
}

/// Calls `f` with the first column of each row of the last SPI result, when that column is
/// of type `oid` (a by-value type); NULLs are skipped.
///
/// # Safety
/// Inside the SPI session that produced the result, before SPI_finish.
unsafe fn for_each_value(oid: pg_sys::Oid, mut f: impl FnMut(pg_sys::Datum)) {
    // SAFETY: the caller's contract: SPI_tuptable and SPI_processed describe the last result.
    unsafe {
        if pg_sys::SPI_tuptable.is_null() {
            return;
        }
        let table = &*pg_sys::SPI_tuptable;
        if pg_sys::SPI_gettypeid(table.tupdesc, 1) != oid {
            return;
        }
        for i in 0..pg_sys::SPI_processed as usize {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*table.vals.add(i), table.tupdesc, 1, &mut isnull);
            if !isnull {
                f(d);
            }
        }
    }
}

/// A SELECT of one int8 column with parameters, planned once (one generic plan, kept until
/// [`KeptLookup::forget`]) and run read-only with the latest snapshot, as PostgreSQL's
/// foreign-key checks run theirs: it sees every committed row, whatever the caller's
/// isolation level.
pub(crate) struct KeptLookup {
    sql: CString,
    types: Vec<pg_sys::Oid>,
    plan: pg_sys::SPIPlanPtr,
}

impl KeptLookup {
    /// The lookup `sql` with parameters of `types`; prepared on first use.
    pub(crate) fn new(sql: &str, types: &[pg_sys::Oid]) -> Result<KeptLookup, Error> {
        let sql = CString::new(sql).map_err(|_| Error::NulInSql)?;
        Ok(KeptLookup { sql, types: types.to_vec(), plan: std::ptr::null_mut() })
    }

    /// The smallest value of the first column the lookup returns for `args`; None if no row,
    /// or if `args` are not of the types the lookup was made with. The session `args` were
    /// made in is open (their lifetime holds it).
    ///
    /// The generic plan is made without sequential scans: a plan made while the table was
    /// empty or tiny (a new day, the DEFAULT partition before a backfill, statistics of a
    /// handful of rows) would otherwise scan it for every row a long INSERT or COPY adds.
    /// The setting costs a GUC nest level, so it is set only when the plan is to be
    /// (re)made; if the plan cache remade it during a run without it (an invalidation
    /// arriving in between), that plan is thrown away and made afresh next time.
    pub(crate) fn min_i64(&mut self, args: &mut Args<'_>) -> Option<i64> {
        if args.types != self.types {
            return None;
        }
        let plan = self.plan()?;
        let Args { values, nulls, .. } = args;
        // SAFETY: a kept, valid plan (revalidated by the plan cache) with its arguments.
        let mut execute = || unsafe {
            pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                0,
            )
        };
        // SAFETY: the plan is valid, made from one statement.
        let (ready, generation) = unsafe { generic_plan_state(plan) };
        let rc = if ready {
            let rc = execute();
            // SAFETY: as above.
            if unsafe { generic_plan_state(plan) }.1 != generation {
                self.forget();
            }
            rc
        } else {
            super::with_setting(c"enable_seqscan", c"off", execute)
        };
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            return None;
        }
        let mut found: Option<i64> = None;
        // SAFETY: the result of the SELECT just run, in this session.
        unsafe {
            for_each_value(pg_sys::INT8OID, |d| {
                let v = d.value() as i64;
                found = Some(found.map_or(v, |f| f.min(v)));
            })
        };
        found
    }

    /// The kept plan, prepared (one generic plan) if there is none.
    fn plan(&mut self) -> Option<pg_sys::SPIPlanPtr> {
        if !self.plan.is_null() {
            return Some(self.plan);
        }
        let mut types = self.types.clone();
        // SAFETY: inside an SPI session (the caller holds a Session); a valid statement and
        // argument types. One generic plan: a custom plan per insert would cost more than the
        // insert. SPI_keepplan moves it to TopMemoryContext.
        unsafe {
            let p = pg_sys::SPI_prepare_cursor(
                self.sql.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            );
            if p.is_null() || pg_sys::SPI_keepplan(p) != 0 {
                return None;
            }
            self.plan = p;
        }
        Some(self.plan)
    }

    /// Frees the kept plan (made again on next use). A lookup no longer used is forgotten
    /// first: nothing frees its plan otherwise.
    pub(crate) fn forget(&mut self) {
        if !self.plan.is_null() {
            // SAFETY: a plan kept by SPI_keepplan, referenced nowhere else.
            unsafe { pg_sys::SPI_freeplan(self.plan) };
            self.plan = std::ptr::null_mut();
        }
    }
}

/// The plan's cached plan source: whether it holds a valid generic plan, and its generation.
///
/// # Safety
/// `plan` is a valid SPI plan made from one statement.
unsafe fn generic_plan_state(plan: pg_sys::SPIPlanPtr) -> (bool, i32) {
    // SAFETY: the caller's contract; the list holds one CachedPlanSource (one statement),
    // whose generic plan, if any, is a valid CachedPlan while the source is valid.
    unsafe {
        let sources = pgrx::PgList::<pg_sys::CachedPlanSource>::from_pg(pg_sys::SPI_plan_get_plan_sources(plan));
        match sources.get_ptr(0) {
            Some(src) if !src.is_null() => {
                let src = &*src;
                (src.is_valid && !src.gplan.is_null() && (*src.gplan).is_valid, src.generation)
            }
            _ => (false, 0),
        }
    }
}
