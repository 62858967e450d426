//! Typed requests and responses for the three IM actions, the response envelope, and
//! [`Request`]: the one value a call's body is serialized from (the sender and `imcast preview`).
//!
//! Invariants: ids are `u64` end to end (they exceed 2^53; they never pass through a float) and
//! never above `i64::MAX` on the wire (`Long`; AppId `Integer`, ≤ `i32::MAX`: the serializers in
//! [`super::wire`] refuse more); optional fields are omitted from the wire when `None`; field names
//! are the provider's PascalCase, exactly the seeds' fields. Replies are read leniently (see
//! [`super::wire`]): `null` or absent lists, maps and strings are empty, ids may be integers or
//! strings, unknown fields are ignored. `UserMessageId` has string keys on the wire and `u64` keys
//! here. This module does no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::wire;

/// BatchSendMessage: one Content to up to 500 users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchSendMessageRequest {
    #[serde(serialize_with = "wire::integer")]
    pub app_id: u64,
    #[serde(serialize_with = "wire::long")]
    pub sender: u64,
    #[serde(serialize_with = "wire::longs")]
    pub receiver: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_type: Option<i32>,
    pub msg_type: i32,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_normal_user: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<BTreeMap<String, String>>,
}

/// BatchSendMessage result: delivered users with their message ids, and the users it failed for.
/// Either may be `null` or absent (empty); ids may be JSON integers or strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchSendMessageResult {
    /// user id → message id (the wire has the user id as a string key).
    #[serde(default, deserialize_with = "wire::id_map")]
    pub user_message_id: BTreeMap<u64, u64>,
    #[serde(default, deserialize_with = "wire::id_list")]
    pub failed_receiver: Vec<u64>,
}

/// SendMessage: one message into a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageRequest {
    #[serde(serialize_with = "wire::integer")]
    pub app_id: u64,
    #[serde(serialize_with = "wire::long")]
    pub sender: u64,
    #[serde(serialize_with = "wire::long")]
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_longs"
    )]
    pub mentioned_users: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_msg_info: Option<RefMsgInfo>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_longs"
    )]
    pub visible_users: Option<Vec<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_longs"
    )]
    pub invisible_users: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<BTreeMap<String, String>>,
    /// Idempotency key: a repeated id is not sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// A quoted message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RefMsgInfo {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_long"
    )]
    pub referenced_message_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced_message_type: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

/// SendMessage result. `MessageId` is required (a JSON integer or a string): a reply without it
/// is unreadable, so the call's outcome is unknown (and SendMessage is retried under its
/// ClientMsgId).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageResult {
    #[serde(deserialize_with = "wire::id")]
    pub message_id: u64,
}

/// P2PSendMessage: a passthrough message to the online members of a conversation. It has no
/// `Ext` (the seed lists none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct P2pSendMessageRequest {
    #[serde(serialize_with = "wire::integer")]
    pub app_id: u64,
    #[serde(serialize_with = "wire::long")]
    pub sender: u64,
    #[serde(serialize_with = "wire::long")]
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_longs"
    )]
    pub receiver_user_id: Option<Vec<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::opt_longs"
    )]
    pub ignore_user_ids: Option<Vec<u64>>,
}

/// P2PSendMessage result; `P2PResult` may be `null` or absent (empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSendMessageResult {
    #[serde(rename = "P2PResult", default, deserialize_with = "wire::null_default")]
    pub p2p_result: Vec<P2pUserResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct P2pUserResult {
    #[serde(deserialize_with = "wire::id")]
    pub user_id: u64,
    /// `SUCCESS` or `NOT_ONLINE` in any case (the seed writes both `SUCCESS` and `Success`),
    /// kept verbatim; `null` or absent is empty. Compare with [`p2p_code`].
    #[serde(default, deserialize_with = "wire::null_default")]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_platform: Option<String>,
}

/// P2P per-user code for a delivered message.
pub const P2P_SUCCESS: &str = "SUCCESS";
/// P2P per-user code for a user who is not online (nothing stored).
pub const P2P_NOT_ONLINE: &str = "NOT_ONLINE";

/// What a P2P per-user `Code` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P2pCode {
    /// `SUCCESS` (any case).
    Success,
    /// `NOT_ONLINE` (any case).
    NotOnline,
    /// Anything else (kept verbatim in the report).
    Other,
}

/// Read a P2P per-user code, case-insensitively (the seed's own examples disagree on case).
pub fn p2p_code(code: &str) -> P2pCode {
    let c = code.trim();
    if c.eq_ignore_ascii_case(P2P_SUCCESS) {
        P2pCode::Success
    } else if c.eq_ignore_ascii_case(P2P_NOT_ONLINE) {
        P2pCode::NotOnline
    } else {
        P2pCode::Other
    }
}

/// One request as it goes on the wire: the value both the sender and `imcast preview` serialize
/// (see [`super::client::request_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Batch(BatchSendMessageRequest),
    Message(SendMessageRequest),
    P2p(P2pSendMessageRequest),
}

impl Request {
    /// The `Action` query parameter.
    pub fn action(&self) -> &'static str {
        match self {
            Request::Batch(_) => "BatchSendMessage",
            Request::Message(_) => "SendMessage",
            Request::P2p(_) => "P2PSendMessage",
        }
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Request::Batch(r) => r.serialize(s),
            Request::Message(r) => r.serialize(s),
            Request::P2p(r) => r.serialize(s),
        }
    }
}

/// The response envelope: `Error` only on failure, `Result` only on success. A missing or `null`
/// `ResponseMetadata` reads as empty (no error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(
        rename = "ResponseMetadata",
        default,
        deserialize_with = "wire::null_default"
    )]
    pub response_metadata: ResponseMetadata,
    #[serde(rename = "Result", default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

/// `ResponseMetadata`; every string may be `null` or absent (empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseMetadata {
    #[serde(default, deserialize_with = "wire::null_default")]
    pub request_id: String,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub action: String,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub version: String,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub service: String,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// `ResponseMetadata.Error`. `Code` and `Message` may be `null` or absent (empty); `CodeN` may be
/// an integer, a string, `null` or absent. An `Error` with an empty `Code` and a `CodeN` of 0 or
/// none ([`ApiError::is_empty`]) is no error at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::code_n"
    )]
    pub code_n: Option<i64>,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub code: String,
    #[serde(default, deserialize_with = "wire::null_default")]
    pub message: String,
}

impl ApiError {
    /// Present but saying nothing: no code and no code number. Success.
    pub fn is_empty(&self) -> bool {
        self.code.trim().is_empty() && self.code_n.unwrap_or(0) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{parse_envelope, request_body};
    use super::super::error::ProviderError;
    use super::*;

    fn batch(result: &str) -> Result<BatchSendMessageResult, ProviderError> {
        let body = format!(r#"{{"ResponseMetadata":{{"RequestId":"r"}},"Result":{result}}}"#);
        parse_envelope("BatchSendMessage", 200, body.as_bytes())
    }

    #[test]
    fn null_or_absent_lists_and_maps_are_empty() {
        for r in [
            r#"{"UserMessageId":{"1":7368834896},"FailedReceiver":null}"#,
            r#"{"UserMessageId":{"1":7368834896}}"#,
            r#"{"UserMessageId":{"1":7368834896},"FailedReceiver":[],"Extra":{"x":[null]}}"#,
        ] {
            let res = batch(r).expect(r);
            assert_eq!(
                res.user_message_id,
                BTreeMap::from([(1, 7368834896)]),
                "{r}"
            );
            assert!(res.failed_receiver.is_empty(), "{r}");
        }
        for r in [
            r#"{"UserMessageId":null,"FailedReceiver":[3]}"#,
            r#"{"FailedReceiver":[3]}"#,
        ] {
            let res = batch(r).expect(r);
            assert!(res.user_message_id.is_empty(), "{r}");
            assert_eq!(res.failed_receiver, vec![3], "{r}");
        }
        assert_eq!(batch("{}").expect("{}"), BatchSendMessageResult::default());
        // A user whose message id is null is not taken as delivered with some id.
        let res = batch(r#"{"UserMessageId":{"1":null,"2":5}}"#).expect("null value");
        assert_eq!(res.user_message_id, BTreeMap::from([(2, 5)]));
    }

    #[test]
    fn ids_as_numbers_or_strings_parse_exactly() {
        let res = batch(
            r#"{"UserMessageId":{"9223372036854775807":"9007199254740993","9007199254740993":9007199254740995},"FailedReceiver":["9007199254740997",9007199254740999," 12 "]}"#,
        )
        .expect("parses");
        assert_eq!(
            res.user_message_id,
            BTreeMap::from([
                (9223372036854775807, 9007199254740993),
                (9007199254740993, 9007199254740995)
            ])
        );
        assert_eq!(
            res.failed_receiver,
            vec![9007199254740997, 9007199254740999, 12]
        );
        let m: SendMessageResult = parse_envelope(
            "SendMessage",
            200,
            br#"{"ResponseMetadata":{},"Result":{"MessageId":"7368834896123456789"}}"#,
        )
        .expect("string id");
        assert_eq!(m.message_id, 7368834896123456789);
        // Never through a float: a fraction, an exponent or a number past 64 bits is refused.
        for bad in [
            r#"{"FailedReceiver":[1.5]}"#,
            r#"{"FailedReceiver":[1e3]}"#,
            r#"{"FailedReceiver":[18446744073709551616]}"#,
            r#"{"FailedReceiver":["18446744073709551616"]}"#,
            r#"{"FailedReceiver":[-1]}"#,
            r#"{"FailedReceiver":["x"]}"#,
            r#"{"UserMessageId":{"1.0":1}}"#,
        ] {
            assert!(
                matches!(batch(bad), Err(ProviderError::BadResponse { .. })),
                "{bad}"
            );
        }
        let missing: Result<SendMessageResult, _> = parse_envelope(
            "SendMessage",
            200,
            br#"{"ResponseMetadata":{},"Result":{"MessageId":null}}"#,
        );
        assert!(matches!(missing, Err(ProviderError::BadResponse { .. })));
    }

    #[test]
    fn p2p_results_read_leniently() {
        let res: P2pSendMessageResult = parse_envelope(
            "P2PSendMessage",
            200,
            br#"{"ResponseMetadata":{"RequestId":null,"Service":null,"Region":""},"Result":{"P2PResult":[
                {"UserId":"10008","Code":"Success","DevicePlatform":"Web"},
                {"UserId":10001,"Code":null,"DevicePlatform":null},
                {"UserId":10002,"Code":"not_online","New":1}]}}"#,
        )
        .expect("parses");
        assert_eq!(res.p2p_result.len(), 3);
        assert_eq!(res.p2p_result[0].user_id, 10008);
        assert_eq!(p2p_code(&res.p2p_result[0].code), P2pCode::Success);
        assert_eq!(res.p2p_result[1].code, "");
        assert_eq!(res.p2p_result[1].device_platform, None);
        assert_eq!(p2p_code(&res.p2p_result[1].code), P2pCode::Other);
        assert_eq!(p2p_code(&res.p2p_result[2].code), P2pCode::NotOnline);
        assert_eq!(p2p_code("SUCCESS"), P2pCode::Success);
        assert_eq!(p2p_code("NOT_ONLINE"), P2pCode::NotOnline);
        assert_eq!(p2p_code("USER_BLOCKED"), P2pCode::Other);
        for r in [r#"{"P2PResult":null}"#, "{}"] {
            let body = format!(r#"{{"ResponseMetadata":null,"Result":{r}}}"#);
            let res: P2pSendMessageResult =
                parse_envelope("P2PSendMessage", 200, body.as_bytes()).expect(r);
            assert!(res.p2p_result.is_empty(), "{r}");
        }
    }

    #[test]
    fn an_empty_error_object_is_success() {
        for err in [
            "null",
            "{}",
            r#"{"Code":"","CodeN":0,"Message":""}"#,
            r#"{"Code":null,"CodeN":null,"Message":null}"#,
            r#"{"Code":"  ","CodeN":"0"}"#,
        ] {
            let body = format!(
                r#"{{"ResponseMetadata":{{"RequestId":"r","Error":{err}}},"Result":{{"FailedReceiver":[4]}}}}"#
            );
            let res: BatchSendMessageResult =
                parse_envelope("BatchSendMessage", 200, body.as_bytes()).expect(err);
            assert_eq!(res.failed_receiver, vec![4], "{err}");
        }
        for err in [
            r#"{"Code":"","CodeN":100010}"#,
            r#"{"Code":"InvalidParameter","CodeN":null,"Message":null}"#,
        ] {
            let body = format!(r#"{{"ResponseMetadata":{{"Error":{err}}}}}"#);
            let e =
                parse_envelope::<BatchSendMessageResult>("BatchSendMessage", 400, body.as_bytes())
                    .expect_err(err);
            assert!(matches!(e, ProviderError::Api(_)), "{err}: {e}");
        }
    }

    #[test]
    fn requests_never_put_an_out_of_range_id_on_the_wire() {
        let mut r = BatchSendMessageRequest {
            app_id: 2147483647,
            sender: 9223372036854775807,
            receiver: vec![9223372036854775807],
            inbox_type: None,
            msg_type: 10001,
            content: "x".into(),
            is_normal_user: None,
            ext: None,
        };
        let body = request_body("BatchSendMessage", &r).expect("in range");
        assert_eq!(
            String::from_utf8(body).expect("utf8"),
            r#"{"AppId":2147483647,"Sender":9223372036854775807,"Receiver":[9223372036854775807],"MsgType":10001,"Content":"x"}"#
        );
        r.receiver.push(9223372036854775808);
        let e = request_body("BatchSendMessage", &r).expect_err("receiver too large");
        assert!(e.to_string().contains("9223372036854775808"), "{e}");
        r.receiver.pop();
        r.app_id = 2147483648;
        let e = request_body("BatchSendMessage", &r).expect_err("AppId too large");
        assert!(e.to_string().contains("AppId 2147483648"), "{e}");
        let p = P2pSendMessageRequest {
            app_id: 1,
            sender: 1,
            conversation_short_id: u64::MAX,
            msg_type: 10013,
            content: "x".into(),
            receiver_user_id: None,
            ignore_user_ids: Some(vec![1]),
        };
        assert!(request_body("P2PSendMessage", &p).is_err());
    }

    #[test]
    fn big_ids_survive_and_string_keys_map() {
        let wire = r#"{"UserMessageId":{"18446744073709551615":9007199254740993},"FailedReceiver":[9007199254740995]}"#;
        let r: BatchSendMessageResult = serde_json::from_str(wire).expect("parses");
        assert_eq!(r.user_message_id.get(&u64::MAX), Some(&9007199254740993));
        assert_eq!(r.failed_receiver, vec![9007199254740995]);
        let back = serde_json::to_string(&r).expect("serializes");
        assert_eq!(back, wire);
    }

    #[test]
    fn p2p_wire_names() {
        let req = P2pSendMessageRequest {
            app_id: 1,
            sender: 2,
            conversation_short_id: 7221856821303361536,
            msg_type: 10013,
            content: "x".into(),
            receiver_user_id: Some(vec![3]),
            ignore_user_ids: None,
        };
        let s = serde_json::to_string(&req).expect("serializes");
        assert_eq!(
            s,
            r#"{"AppId":1,"Sender":2,"ConversationShortId":7221856821303361536,"MsgType":10013,"Content":"x","ReceiverUserId":[3]}"#
        );
        let res: P2pSendMessageResult = serde_json::from_str(
            r#"{"P2PResult":[{"UserId":10008,"Code":"NOT_ONLINE","DevicePlatform":"Default"}]}"#,
        )
        .expect("parses");
        assert_eq!(res.p2p_result[0].code, P2P_NOT_ONLINE);
    }
}
