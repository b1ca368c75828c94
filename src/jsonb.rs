//! Session data as jsonb, passed through untouched.
//!
//! pgrx's `JsonB` converts through serde_json text, which rewrites numbers
//! (`1.50` becomes `1.5`, a 23-digit integer is rounded) and refuses what
//! serde cannot hold. Data belongs to the application: `RawJsonb` carries
//! the datum itself, as PostgreSQL stored it.

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::{FromDatum, IntoDatum};

/// A detoasted jsonb varlena copied into the current memory context.
#[derive(Clone, Copy, Debug)]
pub struct RawJsonb(Datum);

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(datum: Datum, is_null: bool, _: Oid) -> Option<Self> {
        if is_null {
            return None;
        }
        // A copy with a 4-byte header, owned by the current memory context:
        // safe to keep after the tuple or SPI result it came from is gone.
        let copy = pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr());
        Some(RawJsonb(Datum::from(copy)))
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<Datum> {
        Some(self.0)
    }

    fn type_oid() -> Oid {
        pg_sys::JSONBOID
    }
}

/// `JB_FOBJECT` of PostgreSQL's jsonb root container header.
const JB_FOBJECT: u32 = 0x2000_0000;

impl RawJsonb {
    /// Whether the value is a JSON object (not an array or a scalar).
    pub fn is_object(&self) -> bool {
        // SAFETY: a detoasted jsonb starts with its root container header.
        unsafe {
            let varlena = self.0.cast_mut_ptr::<pg_sys::varlena>();
            let header = pgrx::varlena::vardata_any(varlena)
                .cast::<u32>()
                .read_unaligned();
            header & JB_FOBJECT != 0
        }
    }

    /// Size of the value as JSON text, in bytes.
    pub fn text_len(&self) -> usize {
        // SAFETY: jsonb_out on a valid jsonb datum returns a C string.
        unsafe {
            let text =
                pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)])
                    .map_or(usize::MAX, |c| c.to_bytes().len());
            text
        }
    }
}

// How pgrx passes it in and out of SQL functions: as the datum itself.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        arg.unbox_arg_using_from_datum()
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        arg.unbox_arg_using_from_datum().into()
    }
}

unsafe impl pgrx::callconv::BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        fcinfo.return_raw_datum(self.0)
    }
}
