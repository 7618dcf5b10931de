//! jsonb arguments and results as raw binary datums, so the sanitizer can read and write
//! jsonb's on-disk form without a round trip through text.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
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

/// A finished jsonb datum (varlena header included) to return.
pub(crate) struct JsonbOut(pub Vec<u8>);

impl IntoDatum for JsonbOut {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // SAFETY: copies a complete jsonb datum (header included) into palloc'd memory of
        // the current context, which PostgreSQL owns from here on.
        unsafe {
            let p = pg_sys::palloc(self.0.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, self.0.len());
            Some(pg_sys::Datum::from(p))
        }
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
