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

impl RawJsonb {
    fn root(&self) -> *mut pg_sys::JsonbContainer {
        // SAFETY: a detoasted jsonb varlena is a `Jsonb` header and its root.
        unsafe { &raw mut (*self.0.cast_mut_ptr::<pg_sys::Jsonb>()).root }
    }

    /// Whether the value is a JSON object (not an array or a scalar).
    pub fn is_object(&self) -> bool {
        // SAFETY: the root container starts with its header word.
        let header = unsafe { (*self.root()).header };
        header & pg_sys::JB_FOBJECT != 0
    }

    /// Whether the value, written as JSON text the way PostgreSQL writes it
    /// (`jsonb_out`: `{"a": [1, 2]}`), takes at most `limit` bytes.
    ///
    /// Counted without writing it: the walk adds up what each key, string,
    /// number and separator would take and stops as soon as the count passes
    /// `limit`. A number is written alone to learn its length (at most
    /// 147,455 bytes, numeric's own limit) and freed at once, so no input,
    /// however its numbers are spelled (`1e131071` is a few bytes stored and
    /// 131,072 as text), makes the check hold more than that, or work longer
    /// than the limit allows. Strings count their escapes (`\u0001` is 6).
    pub fn text_len_at_most(&self, limit: usize) -> bool {
        // A context of its own for the iterator's state and the numbers'
        // text, deleted at the end whatever the answer.
        // SAFETY: a temporary child of the current context.
        let scratch = unsafe {
            pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"pg_session_auth data size".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        };
        // SAFETY: switched back below; the iterator reads a valid jsonb.
        let within = unsafe {
            let previous = pg_sys::MemoryContextSwitchTo(scratch);
            let within = TextLength::new(limit).walk(self.root());
            pg_sys::MemoryContextSwitchTo(previous);
            within
        };
        // SAFETY: nothing refers to the scratch context any more.
        unsafe { pg_sys::MemoryContextDelete(scratch) };
        within
    }
}

/// The running length of `jsonb_out`'s text for one value.
struct TextLength {
    total: usize,
    limit: usize,
    /// The open containers, innermost last.
    open: Vec<Container>,
}

struct Container {
    is_array: bool,
    /// The pseudo-array around a top-level scalar: written without brackets.
    raw_scalar: bool,
    has_elements: bool,
}

impl TextLength {
    fn new(limit: usize) -> Self {
        TextLength {
            total: 0,
            limit,
            open: Vec::new(),
        }
    }

    fn add(&mut self, n: usize) -> bool {
        self.total = self.total.saturating_add(n);
        self.total <= self.limit
    }

    /// `, ` before every key of an object and every element of an array but
    /// the first.
    fn separator(&mut self) -> bool {
        match self.open.last_mut() {
            Some(c) if c.has_elements => self.add(2),
            Some(c) => {
                c.has_elements = true;
                true
            }
            None => true,
        }
    }

    fn in_array(&self) -> bool {
        self.open.last().is_some_and(|c| c.is_array)
    }

    /// # Safety
    /// `root` is the root container of a valid, detoasted jsonb.
    unsafe fn walk(mut self, root: *mut pg_sys::JsonbContainer) -> bool {
        use pg_sys::JsonbIteratorToken::*;
        // SAFETY: the caller's promise; JsonbIteratorNext frees its own
        // iterator states as it leaves each container.
        unsafe {
            let mut it = pg_sys::JsonbIteratorInit(root);
            let mut v = std::mem::zeroed::<pg_sys::JsonbValue>();
            loop {
                let token = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
                let fits = match token {
                    WJB_DONE => return true,
                    WJB_BEGIN_OBJECT | WJB_BEGIN_ARRAY => {
                        let is_array = token == WJB_BEGIN_ARRAY;
                        let raw_scalar = is_array && v.val.array.rawScalar;
                        // A container is an element of an enclosing array, or
                        // the value of a key (which wrote its own separator).
                        let fits =
                            (!self.in_array() || self.separator()) && (raw_scalar || self.add(1));
                        self.open.push(Container {
                            is_array,
                            raw_scalar,
                            has_elements: false,
                        });
                        fits
                    }
                    WJB_END_OBJECT | WJB_END_ARRAY => {
                        let raw_scalar = self.open.pop().is_some_and(|c| c.raw_scalar);
                        raw_scalar || self.add(1)
                    }
                    // `"key": ` then the value, which needs no separator.
                    WJB_KEY => self.separator() && self.scalar(&v) && self.add(2),
                    WJB_VALUE => self.scalar(&v),
                    WJB_ELEM => self.separator() && self.scalar(&v),
                    _ => true,
                };
                if !fits {
                    return false;
                }
            }
        }
    }

    /// # Safety
    /// `v` is a scalar the iterator just returned.
    unsafe fn scalar(&mut self, v: &pg_sys::JsonbValue) -> bool {
        use pg_sys::jbvType;
        // SAFETY: the union member that `type_` names.
        unsafe {
            match v.type_ {
                jbvType::jbvNull => self.add(4),
                jbvType::jbvBool => self.add(if v.val.boolean { 4 } else { 5 }),
                jbvType::jbvString => {
                    let s = v.val.string;
                    let bytes = std::slice::from_raw_parts(
                        s.val.cast::<u8>(),
                        usize::try_from(s.len).unwrap_or(0),
                    );
                    self.add(escaped_len(bytes))
                }
                jbvType::jbvNumeric => {
                    let text = pgrx::direct_function_call::<&std::ffi::CStr>(
                        pg_sys::numeric_out,
                        &[Some(pg_sys::Datum::from(v.val.numeric))],
                    );
                    let n = text.map_or(0, |t| t.to_bytes().len());
                    if let Some(t) = text {
                        pg_sys::pfree(t.as_ptr().cast_mut().cast());
                    }
                    self.add(n)
                }
                // Containers come as BEGIN/END tokens; other kinds do not
                // occur in a stored jsonb.
                _ => true,
            }
        }
    }
}

/// The length of a string as `escape_json` writes it, quotes included.
fn escaped_len(bytes: &[u8]) -> usize {
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
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
