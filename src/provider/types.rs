//! Typed requests and responses for the three IM actions and the response envelope.
//!
//! Invariants: ids are `u64` end to end (they exceed 2^53; they never pass through a float);
//! optional fields are omitted from the wire when `None`; field names are the provider's
//! PascalCase. `UserMessageId` has string keys on the wire and `u64` keys here. This module does
//! no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// BatchSendMessage: one Content to up to 500 users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchSendMessageRequest {
    pub app_id: u64,
    pub sender: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchSendMessageResult {
    /// user id → message id (the wire has the user id as a string key; serde_json maps it).
    #[serde(default)]
    pub user_message_id: BTreeMap<u64, u64>,
    #[serde(default)]
    pub failed_receiver: Vec<u64>,
}

/// SendMessage: one message into a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageRequest {
    pub app_id: u64,
    pub sender: u64,
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentioned_users: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_msg_info: Option<RefMsgInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_users: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced_message_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced_message_type: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageResult {
    pub message_id: u64,
}

/// P2PSendMessage: a passthrough message to the online members of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct P2pSendMessageRequest {
    pub app_id: u64,
    pub sender: u64,
    pub conversation_short_id: u64,
    pub msg_type: i32,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_user_id: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_user_ids: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct P2pSendMessageResult {
    #[serde(rename = "P2PResult", default)]
    pub p2p_result: Vec<P2pUserResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct P2pUserResult {
    pub user_id: u64,
    /// `SUCCESS` or `NOT_ONLINE`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_platform: Option<String>,
}

/// P2P per-user code for a delivered message.
pub const P2P_SUCCESS: &str = "SUCCESS";
/// P2P per-user code for a user who is not online (nothing stored).
pub const P2P_NOT_ONLINE: &str = "NOT_ONLINE";

/// The response envelope: `Error` only on failure, `Result` only on success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(rename = "ResponseMetadata")]
    pub response_metadata: ResponseMetadata,
    #[serde(rename = "Result", default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseMetadata {
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// `ResponseMetadata.Error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_n: Option<i64>,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
