//! How the compact journal (schema 10 on) packs lists and times: a list of integers (a call's
//! audience lines, a plan call's lines) is one BLOB of zigzag-encoded deltas, each a LEB128
//! varint, so lines in audience order cost one byte each; a recipient's own time is an integer of
//! nanoseconds since 1970.
//!
//! Hand-written (twenty lines) rather than a crate: the format is part of the stored schema, so it
//! must never change with a dependency's version, and it has to be readable by the PostgreSQL port
//! as plain `bytea`. Invariants: `decode_list(encode_list(v)) == v` for every list; a malformed
//! BLOB is [`JournalError::Corrupt`], never a panic. Must not: touch the database.

use jiff::Timestamp;

use super::JournalError;

/// `v` as zigzag deltas (from 0), each a LEB128 varint.
pub(super) fn encode_list(v: &[i64]) -> Vec<u8> {
    let mut p = Packer {
        out: Vec::with_capacity(v.len() + 4),
        ..Packer::default()
    };
    for &x in v {
        p.push(x);
    }
    p.out
}

/// [`encode_list`] one value at a time: a list being collected costs its packed size (a byte a
/// line in audience order) rather than eight bytes a value (seeding keeps every plan call's
/// lines until it writes them).
#[derive(Debug, Default, Clone)]
pub(super) struct Packer {
    out: Vec<u8>,
    prev: i64,
    n: usize,
}

impl Packer {
    pub fn push(&mut self, x: i64) {
        let d = x.wrapping_sub(self.prev);
        self.prev = x;
        self.n += 1;
        let mut z = ((d << 1) ^ (d >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.out.push(b);
                break;
            }
            self.out.push(b | 0x80);
        }
    }

    /// How many values were pushed.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The last value pushed (None: none yet).
    pub fn last(&self) -> Option<i64> {
        (self.n > 0).then_some(self.prev)
    }

    /// The packed list ([`encode_list`]'s bytes).
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }
}

/// The list [`encode_list`] packed.
pub(super) fn decode_list(b: &[u8]) -> Result<Vec<i64>, JournalError> {
    let mut out = Vec::with_capacity(b.len());
    let mut prev = 0i64;
    let mut z = 0u64;
    let mut shift = 0u32;
    for &byte in b {
        if shift > 63 {
            return Err(JournalError::Corrupt(
                "a packed list's varint is too long".into(),
            ));
        }
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 != 0 {
            shift += 7;
            continue;
        }
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev = prev.wrapping_add(d);
        out.push(prev);
        z = 0;
        shift = 0;
    }
    if shift != 0 {
        return Err(JournalError::Corrupt(
            "a packed list ends inside a varint".into(),
        ));
    }
    Ok(out)
}

/// A time as stored in a recipient row (`recipients.at`): nanoseconds since 1970.
pub(super) fn to_ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// The time [`to_ns`] stored, in the text form the journal shows (RFC 3339).
pub(super) fn ns_text(ns: i64) -> Result<String, JournalError> {
    Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .map_err(|e| JournalError::Corrupt(format!("time {ns} ns: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_lines_in_order_cost_a_byte_each() {
        for v in [
            vec![],
            vec![0],
            vec![2, 3, 4, 5, 6],
            vec![9, 3, i64::MAX, i64::MIN, 0, -1, 1 << 40],
        ] {
            assert_eq!(decode_list(&encode_list(&v)).expect("decode"), v);
        }
        let lines: Vec<i64> = (2..502).collect();
        assert_eq!(encode_list(&lines).len(), 500);
        assert!(decode_list(&[0x80]).is_err(), "ends inside a varint");
        assert!(decode_list(&[0xff; 11]).is_err(), "too long");
    }

    #[test]
    fn times_round_trip_at_nanoseconds() {
        let t: Timestamp = "2026-03-01T09:00:00.123456789Z".parse().expect("t");
        assert_eq!(ns_text(to_ns(t)).expect("text"), t.to_string());
    }
}
