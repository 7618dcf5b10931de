//! jsonb arguments and results as raw binary datums, so the sanitizer can read and write
//! jsonb's on-disk form without a round trip through text.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::{Datum, DatumWithOid};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::{FromDatum, IntoDatum};

/// A detoasted jsonb argument, alive for the duration of the call.
pub(crate) struct JsonbArg {
    ptr: *const u8,
    len: usize,
}

impl JsonbArg {
    /// The datum without its varlena header: the root container.
    pub(crate) fn body(&self) -> &[u8] {
        // SAFETY: ptr/len describe a detoasted jsonb datum with a 4-byte header (from_raw),
        // palloc'd in a context that outlives this JsonbArg's use within the call.
        unsafe { std::slice::from_raw_parts(self.ptr.add(pg_sys::VARHDRSZ), self.len - pg_sys::VARHDRSZ) }
    }
}

impl JsonbArg {
    /// # Safety
    /// `datum` must be a non-null jsonb datum.
    pub(crate) unsafe fn from_raw(datum: pg_sys::Datum) -> JsonbArg {
        // SAFETY: the caller's contract: a non-null jsonb datum; detoasting copies it into
        // the current memory context if it was toasted or had a short header.
        unsafe {
            // pg_detoast_datum (not _packed): a 4-byte header, so the root container is aligned.
            let v = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
            let len = pgrx::varlena::varsize_any(v);
            JsonbArg { ptr: v as *const u8, len }
        }
    }
}

impl JsonbArg {
    /// `text` parsed by PostgreSQL's own JSON parser (jsonb_in: exact numbers, its limits,
    /// its error messages); raises its ERROR (22P02, 54001, ...) if `text` is not JSON. None
    /// if it returned no datum (it does not).
    pub(crate) fn parse(text: &std::ffi::CStr) -> Option<JsonbArg> {
        // SAFETY: jsonb_in takes a NUL-terminated C string (`text` outlives the call) and
        // returns a palloc'd jsonb datum or raises an ERROR; a datum returned is a jsonb.
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(text.as_ptr()))])
                .map(|datum| JsonbArg::from_raw(datum))
        }
    }
}

impl FromDatum for JsonbArg {
    /// # Safety
    /// `datum` is a jsonb datum unless `is_null` (pgrx's FromDatum contract).
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        if is_null {
            None
        } else {
            // SAFETY: not null, and the caller's contract says it is of our type (jsonb).
            Some(unsafe { JsonbArg::from_raw(datum) })
        }
    }
}

// SAFETY: unbox reads only a jsonb datum of the declared type, through from_raw.
unsafe impl pgrx::datum::UnboxDatum for JsonbArg {
    type As<'src>
        = JsonbArg
    where
        Self: 'src;

    unsafe fn unbox<'src>(d: Datum<'src>) -> Self::As<'src>
    where
        Self: 'src,
    {
        // SAFETY: pgrx unboxes only datums of the declared SQL type, jsonb.
        unsafe { JsonbArg::from_raw(d.sans_lifetime()) }
    }
}

// SAFETY: arguments are unboxed through FromDatum, which checks for NULL.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the argument is declared jsonb; STRICT functions never see a NULL here.
        unsafe { arg.unbox_arg_using_from_datum().unwrap_or_else(|| panic!("argument {index} must not be null")) }
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: the argument is declared jsonb; NULL is handled by from_polymorphic_datum.
        unsafe { arg.unbox_arg_using_from_datum().into() }
    }
}

/// A finished datum (a jsonb's bytes, varlena header included) copied into palloc'd memory
/// of the current context, which PostgreSQL owns from here on.
fn palloc_copy(bytes: &[u8]) -> pg_sys::Datum {
    // SAFETY: palloc returns at least bytes.len() writable bytes (or raises an ERROR); the
    // copy fills exactly them.
    unsafe {
        let p = pg_sys::palloc(bytes.len()) as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        pg_sys::Datum::from(p)
    }
}

/// A finished jsonb datum (varlena header included) to return.
pub(crate) struct JsonbOut(pub Vec<u8>);

impl IntoDatum for JsonbOut {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(palloc_copy(&self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns a complete jsonb datum palloc'd in the function's memory context.
unsafe impl BoxRet for JsonbOut {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a jsonb datum in the function's memory context, as the return type says.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(JsonbArg, "jsonb");
pgrx::impl_sql_translatable!(JsonbOut, "jsonb");

impl IntoDatum for JsonbArg {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.ptr))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// An already-built `jsonb[]` datum.
struct JsonbArrayDatum(pg_sys::Datum);

impl IntoDatum for JsonbArrayDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBARRAYOID
    }
}

/// A `jsonb[]` built from finished jsonb datums (no text round trip).
pub(crate) fn jsonb_array<'a>(items: Vec<Option<Vec<u8>>>) -> DatumWithOid<'a> {
    // SAFETY: each item is a complete jsonb datum (varlena header set by jsonb::Writer),
    // copied into palloc'd memory of the current context; construct_md_array copies the
    // datums into one array in the same context, which outlives the statement it is bound to.
    unsafe {
        let n = items.len();
        let mut datums: Vec<pg_sys::Datum> = Vec::with_capacity(n);
        let mut nulls: Vec<bool> = Vec::with_capacity(n);
        for item in items {
            match item {
                Some(bytes) => {
                    datums.push(palloc_copy(&bytes));
                    nulls.push(false);
                }
                None => {
                    datums.push(pg_sys::Datum::from(0usize));
                    nulls.push(true);
                }
            }
        }
        let mut dims = [n as i32];
        let mut lbs = [1i32];
        let arr = pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            pg_sys::JSONBOID,
            -1,
            false,
            b'i' as std::ffi::c_char,
        );
        DatumWithOid::from(JsonbArrayDatum(pg_sys::Datum::from(arr)))
    }
}
