//! The adapters between the engine's traits and the real stages: a [`CallSource`] over a
//! [`Plan`] (payload: [`PlannedCall`]), a [`Transport`] over [`provider::Client`] and the journal
//! seed rows from `plan.rows()`.
//!
//! Invariants: the request for a call is built by [`build_request`] from the campaign and the
//! planned call alone — the one builder, which `imcast preview` also calls, so preview shows the
//! bytes the client sends; only the receivers still to send (the engine's
//! `OutgoingCall::receivers`) go into a batch request. Provider errors are
//! classified by `ProviderError::class()` and mapped one to one; nothing here retries.
//! Must not: touch the journal or the limiter, log bodies or credentials.

use std::sync::Arc;

use super::{
    CallOutcome, CallSource, Calls, ErrorClass, OutgoingCall, P2pUser, Transport, TransportError,
};
use crate::action::Action;
use crate::journal::{RecipientStatus, SeedRow, SeedRows};
use crate::plan::{Plan, PlanError, PlannedCall, RowStatus};
use crate::provider::{
    self, BatchSendMessageRequest, Client, P2pSendMessageRequest, ProviderError, RefMsgInfo,
    Request, SendMessageRequest,
};
use crate::spec::Campaign;

/// The calls to make: the whole plan, or a fixed list (a `--test-to` run).
pub enum PlanSource {
    Plan(Arc<Plan>),
    Fixed(Vec<PlannedCall>),
}

impl CallSource for PlanSource {
    type Payload = PlannedCall;
    type Error = PlanError;

    fn calls(&self) -> Calls<'_, PlannedCall, PlanError> {
        let to_call = |c: PlannedCall| super::Call {
            seq: c.seq,
            variant: c.variant.clone(),
            receivers: c.receivers.clone(),
            payload: c,
        };
        match self {
            PlanSource::Plan(p) => Box::new(p.calls().map(move |c| c.map(to_call))),
            PlanSource::Fixed(v) => Box::new(v.iter().cloned().map(move |c| Ok(to_call(c)))),
        }
    }
}

/// Re-queued receivers of calls with the same Content and Ext (and message type) may share a call.
impl super::SameContent for PlannedCall {
    fn same_content(&self, other: &Self) -> bool {
        self.msg_type == other.msg_type && self.content == other.content && self.ext == other.ext
    }
}

/// The journal seed rows of a plan: valid rows pending with their call, the rest final with the
/// reason as note.
pub fn seed_rows(plan: &Plan) -> SeedRows<'_, PlanError> {
    Box::new(plan.rows().map(|r| {
        r.map(|row| {
            let (status, call_seq, note) = match row.status {
                RowStatus::Valid { call } => (RecipientStatus::Pending, Some(call), None),
                RowStatus::Invalid { reason } => (RecipientStatus::Invalid, None, Some(reason)),
                RowStatus::Duplicate { first_line } => (
                    RecipientStatus::Duplicate,
                    None,
                    Some(format!("duplicate of line {first_line}")),
                ),
                RowStatus::Suppressed { list } => (
                    RecipientStatus::Suppressed,
                    None,
                    Some(format!("suppressed by {list}")),
                ),
                RowStatus::Holdout => (
                    RecipientStatus::Holdout,
                    None,
                    Some("in the holdout: not sent".to_string()),
                ),
            };
            SeedRow {
                line: row.line,
                id: row.id,
                raw_id: row.raw_id,
                status,
                call_seq,
                variant: None,
                variant_name: row.variant_name,
                note,
            }
        })
    }))
}

/// Seed rows for a `--test-to` run: one pending row per seed id (line = position, 1-based).
pub fn test_seed_rows(calls: &[PlannedCall]) -> SeedRows<'static, PlanError> {
    let mut rows = Vec::new();
    for c in calls {
        for &id in &c.receivers {
            rows.push(SeedRow {
                line: rows.len() as u64 + 1,
                id: Some(id),
                raw_id: None,
                status: RecipientStatus::Pending,
                call_seq: Some(c.seq),
                variant: Some(c.variant.clone()),
                variant_name: None,
                note: Some("test send (--test-to)".into()),
            });
        }
    }
    Box::new(rows.into_iter().map(Ok))
}

/// Sends planned calls through the provider client.
pub struct ProviderTransport {
    client: Client,
    campaign: Arc<Campaign>,
}

impl ProviderTransport {
    pub fn new(client: Client, campaign: Arc<Campaign>) -> Self {
        ProviderTransport { client, campaign }
    }

    async fn send_call(
        &self,
        call: &OutgoingCall<PlannedCall>,
    ) -> Result<CallOutcome, ProviderError> {
        let req = build_request(
            &self.campaign,
            &call.payload,
            &call.receivers,
            call.client_msg_id.clone(),
        );
        match req {
            Request::Batch(r) => {
                let res = self.client.batch_send(&r).await?;
                Ok(CallOutcome::Batch {
                    message_ids: res.user_message_id,
                    failed: res.failed_receiver,
                })
            }
            Request::Message(r) => {
                let res = self.client.send_message(&r).await?;
                Ok(CallOutcome::Message {
                    message_id: res.message_id,
                })
            }
            Request::P2p(r) => {
                let res = self.client.p2p_send(&r).await?;
                Ok(CallOutcome::P2p {
                    results: res
                        .p2p_result
                        .into_iter()
                        .map(|u| P2pUser {
                            user_id: u.user_id,
                            code: u.code,
                            device_platform: u.device_platform,
                        })
                        .collect(),
                })
            }
        }
    }
}

/// The request for one call: the one builder of what goes on the wire, used by the sender and by
/// `imcast preview` (which serializes it with `provider::client::request_body`, as the client
/// does). Built from the campaign and the planned call alone; `receivers` are the receivers still
/// to send (batch: a subset of `call.receivers` on a retry; conversation/p2p: the one
/// conversation); `client_msg_id` is SendMessage's idempotency key (see `send::client_msg_id`).
/// P2PSendMessage has no `Ext`: the spec refuses `message.ext` on a p2p campaign, so nothing is
/// dropped here.
pub fn build_request(
    c: &Campaign,
    call: &PlannedCall,
    receivers: &[u64],
    client_msg_id: Option<String>,
) -> Request {
    let target = receivers.first().copied().unwrap_or(0);
    let ext = (!call.ext.is_empty()).then(|| call.ext.clone());
    match c.action {
        Action::Batch => Request::Batch(BatchSendMessageRequest {
            app_id: c.app_id,
            sender: c.sender,
            receiver: receivers.to_vec(),
            inbox_type: c.batch.inbox_type,
            msg_type: call.msg_type,
            content: call.content.clone(),
            is_normal_user: c.batch.is_normal_user,
            ext,
        }),
        Action::Conversation => {
            let o = &c.conversation;
            Request::Message(SendMessageRequest {
                app_id: c.app_id,
                sender: c.sender,
                conversation_short_id: target,
                msg_type: call.msg_type,
                content: call.content.clone(),
                mentioned_users: o.mentioned_users.clone(),
                ref_msg_info: o.ref_msg.as_ref().map(|m| RefMsgInfo {
                    referenced_message_id: m.referenced_message_id,
                    hint: m.hint.clone(),
                    referenced_message_type: m.referenced_message_type,
                    status: m.status,
                }),
                visible_users: o.visible_users.clone(),
                invisible_users: o.invisible_users.clone(),
                ext,
                client_msg_id,
                create_time: None,
                priority: o.priority,
            })
        }
        Action::P2p => {
            let o = &c.p2p;
            Request::P2p(P2pSendMessageRequest {
                app_id: c.app_id,
                sender: c.sender,
                conversation_short_id: target,
                msg_type: call.msg_type,
                content: call.content.clone(),
                receiver_user_id: o.receiver_user_ids.clone(),
                ignore_user_ids: o.ignore_user_ids.clone(),
            })
        }
    }
}

/// The engine's view of a provider error.
pub fn transport_error(e: &ProviderError) -> TransportError {
    let class = match e.class() {
        provider::ErrorClass::NotProcessed => ErrorClass::NotProcessed,
        provider::ErrorClass::Clock => ErrorClass::Clock,
        provider::ErrorClass::Fatal => ErrorClass::Fatal,
        provider::ErrorClass::Unknown => ErrorClass::Unknown,
    };
    TransportError {
        class,
        rate_limited: e.is_rate_limited(),
        code: e.shown_code(),
        http_status: e.http_status(),
        message: e.to_string(),
        access: e.is_access(),
    }
}

impl Transport for ProviderTransport {
    type Payload = PlannedCall;

    async fn send(&self, call: &OutgoingCall<PlannedCall>) -> Result<CallOutcome, TransportError> {
        self.send_call(call).await.map_err(|e| transport_error(&e))
    }
}
