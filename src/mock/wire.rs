//! The mock's own reading of request bodies, written from the three API pages in
//! `/work/shared/seeds/` alone: it must not share a line with the client's `provider::types`, so a
//! field the client misspells, mistypes or forgets is caught here instead of passing both sides.
//!
//! What it checks, per the seeds' Body tables: field names exactly as the pages spell them
//! (case-sensitive), required fields present, and types — `Integer` is a JSON integer within i32,
//! `Long` a JSON integer within i64, `String`, `Boolean`, `Array of Long`, `JSON Map` of string to
//! string, and SendMessage's `RefMsgInfo` object. Ids (AppId, user, conversation and message ids)
//! must also be non-negative (PROTOCOL.md: ids are non-negative 64-bit integers). Every failure is
//! `InvalidParameter` with a message naming the field (path), except a body that is not a JSON
//! object (`InvalidParameter.Unmarshal`), an empty body (`.BodyIsEmpty`) and a Receiver count
//! outside 1–500 (`.UserCountOverLimit`).
//!
//! Stricter than the real server on purpose: how the provider treats unknown fields, `null` for
//! an optional field, or a field name in another case is not documented (a Go server typically
//! ignores unknown fields, reads `null` as absent and matches names case-insensitively). The mock
//! rejects all three, because each is a mistake on our side that the real server might silently
//! swallow — a misspelled optional field would simply be dropped there. Must not: import
//! `crate::provider::types`, or accept anything the seeds do not document.
//!
//! A walker over `serde_json::Value` rather than derived serde structs: serde's errors for a
//! mistyped or out-of-range field give a line and column, not the field, it reads `null` as an
//! absent `Option`, and it cannot tell `Integer` (i32) from an id that must also be non-negative
//! without one wrapper type per rule; the walker is short and its messages name the field path.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// At most this many receivers in one BatchSendMessage (BatchSendMessage.md).
pub const MAX_RECEIVERS: usize = 500;

/// A body the provider rejects: the error code and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: &'static str,
    pub message: String,
}

fn invalid(message: String) -> WireError {
    WireError {
        code: "InvalidParameter",
        message,
    }
}

/// BatchSendMessage Body (BatchSendMessage.md), every documented field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub app_id: u64,
    pub sender: u64,
    pub receiver: Vec<u64>,
    pub inbox_type: Option<i32>,
    pub msg_type: i32,
    pub content: String,
    pub is_normal_user: Option<bool>,
    pub ext: Option<BTreeMap<String, String>>,
}

const BATCH_FIELDS: &[&str] = &[
    "AppId",
    "Sender",
    "Receiver",
    "InboxType",
    "MsgType",
    "Content",
    "IsNormalUser",
    "Ext",
];

/// SendMessage Body (SendMessage.md), every documented field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub app_id: u64,
    pub sender: u64,
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    pub mentioned_users: Option<Vec<u64>>,
    pub ref_msg_info: Option<RefMsgInfo>,
    pub visible_users: Option<Vec<u64>>,
    pub invisible_users: Option<Vec<u64>>,
    pub ext: Option<BTreeMap<String, String>>,
    pub client_msg_id: Option<String>,
    pub create_time: Option<i64>,
    pub priority: Option<i32>,
}

const SEND_FIELDS: &[&str] = &[
    "AppId",
    "Sender",
    "ConversationShortId",
    "MsgType",
    "Content",
    "MentionedUsers",
    "RefMsgInfo",
    "VisibleUsers",
    "InvisibleUsers",
    "Ext",
    "ClientMsgId",
    "CreateTime",
    "Priority",
];

/// SendMessage's RefMsgInfo object (every field optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMsgInfo {
    pub referenced_message_id: Option<u64>,
    pub hint: Option<String>,
    pub referenced_message_type: Option<i32>,
    pub status: Option<i32>,
}

const REF_MSG_INFO_FIELDS: &[&str] = &[
    "ReferencedMessageId",
    "Hint",
    "ReferencedMessageType",
    "Status",
];

/// P2PSendMessage Body (P2PSendMessage.md), every documented field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2p {
    pub app_id: u64,
    pub sender: u64,
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    pub receiver_user_id: Option<Vec<u64>>,
    pub ignore_user_ids: Option<Vec<u64>>,
}

const P2P_FIELDS: &[&str] = &[
    "AppId",
    "Sender",
    "ConversationShortId",
    "MsgType",
    "Content",
    "ReceiverUserId",
    "IgnoreUserIds",
];

/// Read a BatchSendMessage body.
pub fn batch(body: &[u8]) -> Result<Batch, WireError> {
    let v = json_object(body)?;
    let o = Obj::new("", &v, "BatchSendMessage", BATCH_FIELDS)?;
    let receiver = req("Receiver", o.id_list("Receiver")?)?;
    if receiver.is_empty() || receiver.len() > MAX_RECEIVERS {
        return Err(WireError {
            code: "InvalidParameter.UserCountOverLimit",
            message: format!(
                "Receiver must hold 1 to {MAX_RECEIVERS} users, got {}",
                receiver.len()
            ),
        });
    }
    Ok(Batch {
        app_id: req("AppId", o.app_id()?)?,
        sender: req("Sender", o.id("Sender")?)?,
        receiver,
        inbox_type: o.integer("InboxType")?,
        msg_type: req("MsgType", o.integer("MsgType")?)?,
        content: req("Content", o.string("Content")?)?,
        is_normal_user: o.boolean("IsNormalUser")?,
        ext: o.string_map("Ext")?,
    })
}

/// Read a SendMessage body.
pub fn send(body: &[u8]) -> Result<Send, WireError> {
    let v = json_object(body)?;
    let o = Obj::new("", &v, "SendMessage", SEND_FIELDS)?;
    let ref_msg_info = match o.field("RefMsgInfo")? {
        None => None,
        Some(v) => {
            let r = Obj::new("RefMsgInfo.", v, "RefMsgInfo", REF_MSG_INFO_FIELDS)?;
            Some(RefMsgInfo {
                referenced_message_id: r.id("ReferencedMessageId")?,
                hint: r.string("Hint")?,
                referenced_message_type: r.integer("ReferencedMessageType")?,
                status: r.integer("Status")?,
            })
        }
    };
    Ok(Send {
        app_id: req("AppId", o.app_id()?)?,
        sender: req("Sender", o.id("Sender")?)?,
        conversation_short_id: req("ConversationShortId", o.id("ConversationShortId")?)?,
        msg_type: req("MsgType", o.integer("MsgType")?)?,
        content: req("Content", o.string("Content")?)?,
        mentioned_users: o.id_list("MentionedUsers")?,
        ref_msg_info,
        visible_users: o.id_list("VisibleUsers")?,
        invisible_users: o.id_list("InvisibleUsers")?,
        ext: o.string_map("Ext")?,
        client_msg_id: o.string("ClientMsgId")?,
        // A timestamp in milliseconds: a Long, sign not restricted by the page.
        create_time: o.long("CreateTime")?,
        priority: o.integer("Priority")?,
    })
}

/// Read a P2PSendMessage body.
pub fn p2p(body: &[u8]) -> Result<P2p, WireError> {
    let v = json_object(body)?;
    let o = Obj::new("", &v, "P2PSendMessage", P2P_FIELDS)?;
    Ok(P2p {
        app_id: req("AppId", o.app_id()?)?,
        sender: req("Sender", o.id("Sender")?)?,
        conversation_short_id: req("ConversationShortId", o.id("ConversationShortId")?)?,
        msg_type: req("MsgType", o.integer("MsgType")?)?,
        content: req("Content", o.string("Content")?)?,
        receiver_user_id: o.id_list("ReceiverUserId")?,
        ignore_user_ids: o.id_list("IgnoreUserIds")?,
    })
}

fn json_object(body: &[u8]) -> Result<Value, WireError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(WireError {
            code: "InvalidParameter.BodyIsEmpty",
            message: "the request body is empty".to_string(),
        });
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| WireError {
        code: "InvalidParameter.Unmarshal",
        message: format!("the body is not JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(WireError {
            code: "InvalidParameter.Unmarshal",
            message: "the body is not a JSON object".to_string(),
        });
    }
    Ok(v)
}

fn req<T>(name: &str, v: Option<T>) -> Result<T, WireError> {
    v.ok_or_else(|| invalid(format!("missing required field {name}")))
}

/// What a JSON value is, for messages.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A JSON integer within i64 (`Long`), or why not.
fn long_of(path: &str, v: &Value) -> Result<i64, WireError> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(invalid(format!(
                    "{path} is {n}, outside the signed 64-bit range of a Long (at most {})",
                    i64::MAX
                )))
            } else {
                // A fraction, an exponent, or an integer beyond u64 (serde_json reads those as
                // floats): none is a Long.
                Err(invalid(format!(
                    "{path} must be a Long (a JSON integer within signed 64-bit), got {}",
                    kind(v)
                )))
            }
        }
        _ => Err(invalid(format!(
            "{path} must be a Long (a JSON integer), got {}",
            kind(v)
        ))),
    }
}

/// A non-negative Long (a user, conversation or message id).
fn id_of(path: &str, v: &Value) -> Result<u64, WireError> {
    let i = long_of(path, v)?;
    u64::try_from(i).map_err(|_| invalid(format!("{path} is {i}; ids are non-negative")))
}

/// A JSON integer within i32 (`Integer`).
fn integer_of(path: &str, v: &Value) -> Result<i32, WireError> {
    let i = match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    match i {
        Some(i) => i32::try_from(i).map_err(|_| {
            invalid(format!(
                "{path} is {i}, outside the signed 32-bit range of an Integer"
            ))
        }),
        None => Err(invalid(format!(
            "{path} must be an Integer (a JSON integer within signed 32-bit), got {}",
            kind(v)
        ))),
    }
}

/// One JSON object with its allowed field names.
struct Obj<'a> {
    /// Prefix for field paths in messages (`""` at the top, `"RefMsgInfo."` inside).
    prefix: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// `v` must be an object whose every key is one of `fields` (exact spelling and case).
    fn new(
        prefix: &'static str,
        v: &'a Value,
        what: &str,
        fields: &[&str],
    ) -> Result<Obj<'a>, WireError> {
        let Value::Object(map) = v else {
            return Err(invalid(format!(
                "{} must be an object, got {}",
                prefix.trim_end_matches('.'),
                kind(v)
            )));
        };
        if let Some(unknown) = map.keys().find(|k| !fields.contains(&k.as_str())) {
            let hint = fields
                .iter()
                .find(|f| f.eq_ignore_ascii_case(unknown))
                .map(|f| format!(" (field names are case-sensitive: {f})"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "unknown field {prefix}{unknown}{hint}; {what} takes {}",
                fields.join(", ")
            )));
        }
        Ok(Obj { prefix, map })
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The field's value if present. `null` is refused: the client omits an absent optional
    /// field, so a `null` on the wire is a serialization mistake.
    fn field(&self, name: &str) -> Result<Option<&'a Value>, WireError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Null) => Err(invalid(format!(
                "{} is null; omit an optional field instead",
                self.path(name)
            ))),
            Some(v) => Ok(Some(v)),
        }
    }

    fn long(&self, name: &str) -> Result<Option<i64>, WireError> {
        self.field(name)?
            .map(|v| long_of(&self.path(name), v))
            .transpose()
    }

    fn id(&self, name: &str) -> Result<Option<u64>, WireError> {
        self.field(name)?
            .map(|v| id_of(&self.path(name), v))
            .transpose()
    }

    fn integer(&self, name: &str) -> Result<Option<i32>, WireError> {
        self.field(name)?
            .map(|v| integer_of(&self.path(name), v))
            .transpose()
    }

    /// AppId: an `Integer` on every page, and an id (non-negative).
    fn app_id(&self) -> Result<Option<u64>, WireError> {
        match self.integer("AppId")? {
            None => Ok(None),
            Some(i) => u64::try_from(i)
                .map(Some)
                .map_err(|_| invalid(format!("AppId is {i}; ids are non-negative"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, WireError> {
        match self.field(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(invalid(format!(
                "{} must be a String, got {}",
                self.path(name),
                kind(v)
            ))),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, WireError> {
        match self.field(name)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(invalid(format!(
                "{} must be a Boolean, got {}",
                self.path(name),
                kind(v)
            ))),
        }
    }

    /// `Array of Long` holding ids.
    fn id_list(&self, name: &str) -> Result<Option<Vec<u64>>, WireError> {
        match self.field(name)? {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| id_of(&format!("{}[{i}]", self.path(name)), v))
                .collect::<Result<Vec<u64>, WireError>>()
                .map(Some),
            Some(v) => Err(invalid(format!(
                "{} must be an Array of Long, got {}",
                self.path(name),
                kind(v)
            ))),
        }
    }

    /// `JSON Map` whose keys and values are strings (Ext).
    fn string_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, WireError> {
        match self.field(name)? {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(invalid(format!(
                        "{}[{k:?}] must be a String (Ext maps strings to strings), got {}",
                        self.path(name),
                        kind(v)
                    ))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(v) => Err(invalid(format!(
                "{} must be a JSON Map of String to String, got {}",
                self.path(name),
                kind(v)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).expect("serializes")
    }

    fn err_of<T: std::fmt::Debug>(r: Result<T, WireError>) -> WireError {
        r.expect_err("rejected")
    }

    #[test]
    fn the_seed_examples_parse() {
        // The request examples of the three pages (SendMessage's with its leading zeros removed:
        // `000010` is not JSON).
        let r = batch(&b(json!({
            "AppId": 666675, "Sender": 10001, "Receiver": [1, 2, 3], "InboxType": 0,
            "MsgType": 10001, "Content": "消息群发123", "IsNormalUser": false, "Ext": {"key": "value"}
        })))
        .expect("batch example");
        assert_eq!(r.receiver, vec![1, 2, 3]);
        assert_eq!(r.ext.expect("ext")["key"], "value");
        let s = send(&b(json!({
            "AppId": 0, "Sender": 10, "ConversationShortId": 1, "MsgType": 10001,
            "Content": "Your_Content", "MentionedUsers": [111111, 222222],
            "RefMsgInfo": {"ReferencedMessageId": 13, "Hint": "[图片]"}
        })))
        .expect("send example");
        assert_eq!(s.ref_msg_info.expect("ref").referenced_message_id, Some(13));
        let p = p2p(&b(json!({
            "AppId": 666675, "Sender": 10008, "ConversationShortId": 7221856821303361536_u64,
            "MsgType": 10013, "Content": "{\"type\":1000}", "ReceiverUserId": [], "IgnoreUserIds": []
        })))
        .expect("p2p example");
        assert_eq!(p.conversation_short_id, 7221856821303361536);
    }

    #[test]
    fn every_documented_send_field_is_accepted() {
        let s = send(&b(json!({
            "AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 10001, "Content": "x",
            "MentionedUsers": [4], "VisibleUsers": [5], "InvisibleUsers": [6], "Ext": {},
            "ClientMsgId": "k", "CreateTime": 1666613688658_i64, "Priority": 2,
            "RefMsgInfo": {"ReferencedMessageId": 7, "Hint": "h", "ReferencedMessageType": 10003, "Status": 0}
        })))
        .expect("all fields");
        assert_eq!(s.client_msg_id.as_deref(), Some("k"));
        assert_eq!(s.priority, Some(2));
    }

    #[test]
    fn names_types_and_ranges_are_checked() {
        let base =
            || json!({"AppId": 1, "Sender": 2, "Receiver": [3], "MsgType": 10001, "Content": "x"});
        let with = |k: &str, v: Value| {
            let mut o = base();
            o[k] = v;
            b(o)
        };
        let e = err_of(batch(&with("Reciever", json!([3]))));
        assert_eq!(e.code, "InvalidParameter");
        assert!(
            e.message.contains("unknown field Reciever"),
            "{}",
            e.message
        );
        let e = err_of(batch(&with("appId", json!(1))));
        assert!(e.message.contains("case-sensitive: AppId"), "{}", e.message);
        let e = err_of(batch(&with("Sender", json!("2"))));
        assert!(e.message.contains("Sender must be a Long"), "{}", e.message);
        let e = err_of(batch(&with(
            "Receiver",
            json!([3, 9223372036854775808_u64]),
        )));
        assert!(
            e.message.contains("Receiver[1] is 9223372036854775808"),
            "{}",
            e.message
        );
        let e = err_of(batch(&with("Sender", json!(-1))));
        assert!(e.message.contains("Sender is -1"), "{}", e.message);
        let e = err_of(batch(&with("MsgType", json!(2147483648_i64))));
        assert!(e.message.contains("MsgType is 2147483648"), "{}", e.message);
        let e = err_of(batch(&with("MsgType", json!(10001.0))));
        assert!(
            e.message.contains("MsgType must be an Integer"),
            "{}",
            e.message
        );
        let e = err_of(batch(&with("Ext", json!({"k": 1}))));
        assert!(
            e.message.contains("Ext[\"k\"] must be a String"),
            "{}",
            e.message
        );
        let e = err_of(batch(&with("Ext", Value::Null)));
        assert!(e.message.contains("Ext is null"), "{}", e.message);
        let e = err_of(batch(&with("Receiver", json!([]))));
        assert_eq!(e.code, "InvalidParameter.UserCountOverLimit");
        let mut o = base();
        o.as_object_mut().expect("object").remove("Content");
        let e = err_of(batch(&b(o)));
        assert_eq!(e.message, "missing required field Content");
        let e = err_of(send(&b(json!({
            "AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 1, "Content": "x",
            "RefMsgInfo": {"ReferencedMessageID": 1}
        }))));
        assert!(
            e.message
                .contains("unknown field RefMsgInfo.ReferencedMessageID"),
            "{}",
            e.message
        );
        // A batch field on the P2P action.
        let e = err_of(p2p(&b(json!({
            "AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 1, "Content": "x",
            "Receiver": [4]
        }))));
        assert!(
            e.message.contains("unknown field Receiver"),
            "{}",
            e.message
        );
        assert_eq!(err_of(batch(b"  ")).code, "InvalidParameter.BodyIsEmpty");
        assert_eq!(err_of(batch(b"[1]")).code, "InvalidParameter.Unmarshal");
    }
}
