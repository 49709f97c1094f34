//! The name serde writes for a unit enum variant, so an `as_str` method
//! takes its text from the `#[serde(rename_all = ...)]` that puts it on the
//! wire instead of repeating it.

use serde::Serialize;
use serde::ser::{Impossible, Serializer};
use std::fmt;

/// The name `value` serialises as when it is a unit enum variant (as
/// `#[derive(Serialize)]` writes one, renamed), or `None` for any other
/// shape.
pub fn unit_variant_name<T: Serialize + ?Sized>(value: &T) -> Option<&'static str> {
    value.serialize(VariantName).ok()
}

/// A serializer that only accepts a unit variant and returns its name.
struct VariantName;

#[derive(Debug)]
struct NotAUnitVariant;

impl fmt::Display for NotAUnitVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a unit enum variant")
    }
}

impl std::error::Error for NotAUnitVariant {}

impl serde::ser::Error for NotAUnitVariant {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NotAUnitVariant
    }
}

type Refused = Impossible<&'static str, NotAUnitVariant>;

/// Methods that refuse their value: `refuse!(name(ArgType, ..), ..)` for
/// those that return the name, `refuse!(-> Type; ..)` for the others.
macro_rules! refuse {
    (-> $out:ty; $($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$out, NotAUnitVariant> {
            Err(NotAUnitVariant)
        })*
    };
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        refuse!(-> &'static str; $($method($($arg),*)),*);
    };
}

impl Serializer for VariantName {
    type Ok = &'static str;
    type Error = NotAUnitVariant;
    type SerializeSeq = Refused;
    type SerializeTuple = Refused;
    type SerializeTupleStruct = Refused;
    type SerializeTupleVariant = Refused;
    type SerializeMap = Refused;
    type SerializeStruct = Refused;
    type SerializeStructVariant = Refused;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<&'static str, NotAUnitVariant> {
        Ok(variant)
    }

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }

    refuse!(
        -> Refused;
        serialize_seq(Option<usize>),
        serialize_tuple(usize),
        serialize_tuple_struct(&'static str, usize),
        serialize_tuple_variant(&'static str, u32, &'static str, usize),
        serialize_map(Option<usize>),
        serialize_struct(&'static str, usize),
        serialize_struct_variant(&'static str, u32, &'static str, usize),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        PlainUnit,
        #[serde(rename = "renamed")]
        Other,
        Tuple(u8),
    }

    #[test]
    fn names_unit_variants_as_serde_writes_them_and_nothing_else() {
        assert_eq!(unit_variant_name(&Shape::PlainUnit), Some("plain_unit"));
        assert_eq!(unit_variant_name(&Shape::Other), Some("renamed"));
        assert_eq!(unit_variant_name(&Shape::Tuple(1)), None);
        assert_eq!(unit_variant_name("text"), None);
        assert_eq!(unit_variant_name(&3u8), None);
    }
}
