//! The adapters between the engine's traits and the real stages: a [`CallSource`] over a
//! [`Plan`] (payload: [`PlannedCall`]), a [`Transport`] over [`provider::Client`] and the journal
//! seed rows from `plan.rows()`.
//!
//! Invariants: the request for a call is built from the campaign and the planned call alone
//! (the same shape `plan::request_body` shows in `imcast preview`); only the receivers still to
//! send (the engine's `OutgoingCall::receivers`) go into a batch request. Provider errors are
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
    SendMessageRequest,
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
            };
            SeedRow {
                line: row.line,
                id: row.id,
                raw_id: row.raw_id,
                status,
                call_seq,
                variant: None,
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
                raw_id: id.to_string(),
                status: RecipientStatus::Pending,
                call_seq: Some(c.seq),
                variant: Some(c.variant.clone()),
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
        let c = &self.campaign;
        let p = &call.payload;
        let target = call.receivers.first().copied().unwrap_or(0);
        let ext = (!p.ext.is_empty()).then(|| p.ext.clone());
        match c.action {
            Action::Batch => {
                let r = BatchSendMessageRequest {
                    app_id: c.app_id,
                    sender: c.sender,
                    receiver: call.receivers.clone(),
                    inbox_type: c.batch.inbox_type,
                    msg_type: p.msg_type,
                    content: p.content.clone(),
                    is_normal_user: c.batch.is_normal_user,
                    ext,
                };
                let res = self.client.batch_send(&r).await?;
                Ok(CallOutcome::Batch {
                    message_ids: res.user_message_id,
                    failed: res.failed_receiver,
                })
            }
            Action::Conversation => {
                let o = &c.conversation;
                let r = SendMessageRequest {
                    app_id: c.app_id,
                    sender: c.sender,
                    conversation_short_id: target,
                    msg_type: p.msg_type,
                    content: p.content.clone(),
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
                    client_msg_id: call.client_msg_id.clone(),
                    create_time: None,
                    priority: o.priority,
                };
                let res = self.client.send_message(&r).await?;
                Ok(CallOutcome::Message {
                    message_id: res.message_id,
                })
            }
            Action::P2p => {
                let o = &c.p2p;
                let r = P2pSendMessageRequest {
                    app_id: c.app_id,
                    sender: c.sender,
                    conversation_short_id: target,
                    msg_type: p.msg_type,
                    content: p.content.clone(),
                    receiver_user_id: o.receiver_user_ids.clone(),
                    ignore_user_ids: o.ignore_user_ids.clone(),
                };
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
        code: e.code().map(str::to_string),
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
