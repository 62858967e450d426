//! `variants.csv`: what each variant id of the per-recipient files stands for — one row per
//! variant the run recorded (see `facts::record_run`: up to
//! [`MAX_RECORDED_VARIANTS`](super::facts::MAX_RECORDED_VARIANTS), those with the most recipients
//! first) with its A/B variant name (`message.variants`; empty without), recipients, MsgType,
//! rendered Content and Ext (a JSON object).
//!
//! The columns are one table, [`COLUMNS`]: a column is a header and a function of the
//! [`VariantFact`]; adding one is one entry there. Every text cell
//! goes through [`safe_cell`] (a spreadsheet never evaluates a Content as a formula). Must not:
//! read anything but the facts it is given, or write anything but the bytes it returns.

use super::facts::VariantFact;
use super::safe_cell;

/// The file name in the report folder.
pub const FILE: &str = "variants.csv";

/// One column of `variants.csv`.
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&VariantFact) -> String,
}

/// The columns, in order.
pub const COLUMNS: &[Column] = &[
    Column {
        header: "variant",
        cell: variant,
    },
    Column {
        header: "variant_name",
        cell: variant_name,
    },
    Column {
        header: "recipients",
        cell: recipients,
    },
    Column {
        header: "msg_type",
        cell: msg_type,
    },
    Column {
        header: "content",
        cell: content,
    },
    Column {
        header: "content_truncated",
        cell: truncated,
    },
    Column {
        header: "ext",
        cell: ext,
    },
];

fn variant(v: &VariantFact) -> String {
    v.variant.clone()
}
fn variant_name(v: &VariantFact) -> String {
    v.variant_name.clone()
}
fn recipients(v: &VariantFact) -> String {
    v.recipients.to_string()
}
fn msg_type(v: &VariantFact) -> String {
    v.msg_type.to_string()
}
fn content(v: &VariantFact) -> String {
    v.content.clone()
}
fn truncated(v: &VariantFact) -> String {
    v.truncated.to_string()
}
fn ext(v: &VariantFact) -> String {
    serde_json::to_string(&v.ext).unwrap_or_else(|_| "{}".into())
}

/// The file's bytes: a header and one row per variant, as given.
pub fn to_csv(variants: &[VariantFact]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS.iter().map(|c| c.header))?;
    for v in variants {
        w.write_record(COLUMNS.iter().map(|c| safe_cell(&(c.cell)(v)).into_owned()))?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_variant_spreadsheet_safe() {
        let v = VariantFact {
            variant: "ab12cd34".into(),
            variant_name: "short".into(),
            recipients: 3,
            msg_type: 1,
            content: "=HYPERLINK(\"x\"), hi\nthere".into(),
            content_bytes: 25,
            truncated: false,
            ext: [("k".to_string(), "v,1".to_string())].into_iter().collect(),
        };
        let out = String::from_utf8(to_csv(&[v]).expect("csv")).expect("utf-8");
        assert_eq!(
            out,
            "variant,variant_name,recipients,msg_type,content,content_truncated,ext\n\
             ab12cd34,short,3,1,\"'=HYPERLINK(\"\"x\"\"), hi\nthere\",false,\"{\"\"k\"\":\"\"v,1\"\"}\"\n"
        );
        assert_eq!(
            String::from_utf8(to_csv(&[]).expect("csv")).expect("utf-8"),
            "variant,variant_name,recipients,msg_type,content,content_truncated,ext\n"
        );
    }
}
