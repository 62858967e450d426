//! How imcast reads the provider's replies (leniently) and writes its requests (strictly): the
//! serde helpers [`super::types`] names in its `deserialize_with` / `serialize_with` attributes.
//!
//! Reading: the real provider is a Go server, and a Go server writes `null` for an empty list,
//! map or string, may leave a field out, and may write a 64-bit id as a JSON string. So every
//! list, map and string of a reply reads `null` or absent as empty ([`null_default`]); every id
//! reads from a JSON integer or a decimal string, exactly ([`Id`]: never through a float — a
//! number that is not an integer, or does not fit in 64 bits, is an error, never rounded); a map
//! entry whose value is `null` is left out ([`id_map`]). Unknown fields are ignored by serde's
//! default (no reply type denies them).
//!
//! Writing: the seeds type ids as `Long` (signed 64-bit) and `AppId` as `Integer` (signed 32-bit);
//! imcast keeps ids as `u64`, checked against `i64::MAX` when the campaign and audience are read.
//! The serializers here check again ([`long`], [`integer`], ...), so a request that would put an id
//! out of the provider's range on the wire fails to build and nothing is sent.
//!
//! Hand-written rather than `serde_with` (`DefaultOnNull`, `PickFirst<(_, DisplayFromStr)>`):
//! those cover part of it, but not ids as map keys from strings with the same rule as values, nor
//! null map values; these are a few small visitors. Must not: allocate per id beyond the target
//! collection, or accept a float as an id.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Error as _, Serialize, Serializer};

/// The largest id the provider accepts (`Long` is signed 64-bit).
pub const MAX_LONG: u64 = i64::MAX as u64;
/// The largest AppId the provider accepts (`Integer` is signed 32-bit).
pub const MAX_INTEGER: u64 = i32::MAX as u64;

/// `null` or absent (with `#[serde(default)]`) reads as `T::default()`: an empty string, list or map.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An id as the provider may write it: a JSON integer or a decimal string, read exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub u64);

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id: a non-negative whole number, as a JSON integer or a decimal string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
        Ok(Id(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
        u64::try_from(v)
            .map(Id)
            .map_err(|_| E::custom(format!("id {v} is negative")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
        Err(E::custom(format!(
            "id {v} is not a whole number that fits in 64 bits (ids are never read through a float)"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
        let s = v.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("id {v:?} is not a whole number")));
        }
        s.parse::<u64>()
            .map(Id)
            .map_err(|_| E::custom(format!("id {v:?} does not fit in 64 bits")))
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        d.deserialize_any(IdVisitor)
    }
}

/// One id (a JSON integer or a decimal string).
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Id::deserialize(d).map(|i| i.0)
}

/// A list of ids; `null` or absent is empty.
pub fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of ids or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<u64>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Vec<u64>, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u64>, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u64>, A::Error> {
            let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
            while let Some(Id(v)) = a.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A map id → id (keys are user ids as strings on the wire); `null` or absent is empty, and an
/// entry whose value is `null` is left out (it names no message id).
pub fn id_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<u64, u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of ids to ids, or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((Id(k), v)) = a.next_entry::<Id, Option<Id>>()? {
                if let Some(Id(v)) = v {
                    out.insert(k, v);
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A number as an error's `CodeN` may come: integer, decimal string, or `null`/absent (`None`).
pub fn code_n<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number, a decimal string or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(i64::try_from(v).ok())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // A code number is informative only: an odd one is ignored, not fatal to the reply.
            Ok((v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.trim().parse().ok())
        }
    }
    d.deserialize_any(V)
}

fn check_long<E: serde::ser::Error>(v: u64) -> Result<u64, E> {
    if v > MAX_LONG {
        Err(E::custom(format!(
            "id {v} is larger than {MAX_LONG}, the largest the provider accepts (Long is signed 64-bit)"
        )))
    } else {
        Ok(v)
    }
}

/// Serialize a `Long` id, refusing one above `i64::MAX`.
pub fn long<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(check_long::<S::Error>(*v)?)
}

/// Serialize an optional `Long` id (the field is skipped when `None`).
pub fn opt_long<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_u64(check_long::<S::Error>(*v)?),
        None => s.serialize_none(),
    }
}

/// Serialize an `Array of Long`, refusing any id above `i64::MAX`.
pub fn longs<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
    if let Some(bad) = v.iter().find(|&&x| x > MAX_LONG) {
        return Err(S::Error::custom(format!(
            "id {bad} is larger than {MAX_LONG}, the largest the provider accepts (Long is signed 64-bit)"
        )));
    }
    v.serialize(s)
}

/// Serialize an optional `Array of Long` (the field is skipped when `None`).
pub fn opt_longs<S: Serializer>(v: &Option<Vec<u64>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => longs(v, s),
        None => s.serialize_none(),
    }
}

/// Serialize an `Integer` AppId, refusing one above `i32::MAX`.
pub fn integer<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    if *v > MAX_INTEGER {
        return Err(S::Error::custom(format!(
            "AppId {v} is larger than {MAX_INTEGER}, the largest the provider accepts (Integer is signed 32-bit)"
        )));
    }
    s.serialize_u64(*v)
}
