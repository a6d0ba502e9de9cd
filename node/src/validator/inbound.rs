//! The driver's inputs: messages from peers (consensus, sync, forwarded transactions), decoded
//! payloads and execution results, each followed by whatever is due at the time (`step`).

use super::{Driver, Pending};
use crate::validator::{
    metrics::PAYLOADS_REJECTED,
    payload::{Payload, Rejected},
    wire::ConsensusEnvelope,
};
use kestrel_consensus::bft::{self, Block, Event, Message, ValidatorIndex};
use kestrel_net::{Inbound, Kind, PeerClass};
use kestrel_types::ExecutionResult;

/// What wakes the driver besides time.
#[allow(
    clippy::large_enum_variant,
    reason = "one at a time, on the loop's stack: boxing would cost an allocation a proposal"
)]
pub enum Input {
    Inbound(Inbound),
    Executed(ExecutionResult),
    Decoded(Pending, Result<Payload, Rejected>),
}

impl Driver {
    /// One turn of the loop: the input, if any, then whatever is due now (timers, a build,
    /// forwarding, requests).
    pub(in crate::validator) fn step(&mut self, input: Option<Input>) {
        match input {
            Some(Input::Inbound(msg)) => self.on_inbound(msg),
            Some(Input::Executed(result)) => self.feed(Event::Executed(result)),
            Some(Input::Decoded(pending, result)) => self.on_decoded(pending, result),
            None => {}
        }
        self.on_tick(self.now());
    }

    fn on_inbound(&mut self, msg: Inbound) {
        if msg.class == PeerClass::FullNode {
            return self.on_full_node(msg);
        }
        let Some(from) = self.members.ids.iter().position(|id| *id == msg.peer) else {
            return;
        };
        let from = ValidatorIndex(from as u16);
        match msg.kind {
            Kind::Consensus => self.on_consensus(from, &msg.payload),
            Kind::SyncRequest => self.on_sync_request(&msg.peer, &msg.payload),
            Kind::SyncResponse => self.on_sync_response(&msg.payload),
            Kind::TxForward => self.on_forwarded(&msg),
        }
    }

    /// A full node is served blocks and may forward transactions; nothing it sends reaches
    /// consensus. Its key is not in the validator set, so the state machine would refuse its
    /// messages anyway, but it is never asked: the transport already closes a full node's
    /// connection on any other kind.
    fn on_full_node(&mut self, msg: Inbound) {
        match msg.kind {
            Kind::SyncRequest => self.on_sync_request(&msg.peer, &msg.payload),
            Kind::TxForward => self.on_forwarded(&msg),
            Kind::Consensus | Kind::SyncResponse => {
                tracing::warn!(target: "node::validator", peer = %msg.peer, kind = ?msg.kind, "ignored a full node's message")
            }
        }
    }

    fn on_forwarded(&mut self, msg: &Inbound) {
        let forwarder = self.forwarder.as_mut().expect("running");
        if let Err(err) = forwarder.incoming(&msg.payload) {
            tracing::debug!(target: "node::validator", peer = %msg.peer, %err, "undecodable forwarded transactions")
        }
    }

    fn on_consensus(&mut self, from: ValidatorIndex, bytes: &[u8]) {
        let (message, payload) = match ConsensusEnvelope::open(bytes) {
            Ok(opened) => opened,
            Err(err) => {
                metrics::counter!(bft::metrics::INVALID_MESSAGES).increment(1);
                tracing::debug!(target: "node::validator", %err, "undecodable consensus message");
                return;
            }
        };
        let certified_height = match message.peek() {
            Message::Proposal(p) => Some(p.block.qc.height),
            Message::Timeout(t) => Some(t.high_qc.height),
            Message::Certificate(qc) => Some(qc.height),
            Message::TimeoutCertificate(tc) => Some(tc.high_qc.height),
            _ => None,
        };
        if let Some(height) = certified_height {
            self.check_behind(height);
        }
        if self.sync.is_some() {
            return;
        }
        if let Message::Proposal(p) = message.peek() {
            let (hash, timestamp_ms) = (p.block.payload_hash, p.block.timestamp_ms);
            if !self.payloads.contains(&hash) {
                // Decoded off this thread; consensus sees the proposal when it is done.
                if let Some(bytes) = payload {
                    let decoder = self.decoder.as_ref().expect("running");
                    if decoder.submit(Pending { from, message }, hash, bytes, timestamp_ms) {
                        self.payloads.decoder_took(hash);
                    } else {
                        metrics::counter!(PAYLOADS_REJECTED, "reason" => "busy").increment(1);
                    }
                }
                return;
            }
            let block = p.block.clone();
            self.payloads.remember(&block);
        }
        self.feed(Event::Message { from, message });
    }

    fn on_decoded(&mut self, pending: Pending, result: Result<Payload, Rejected>) {
        let Message::Proposal(p) = pending.message.peek() else {
            unreachable!("only proposals are decoded")
        };
        let block = p.block.clone();
        self.payloads.decoder_returned(&block.payload_hash);
        if self.sync.is_some() {
            return;
        }
        let payload = match result {
            Ok(payload) => payload,
            Err(err) => {
                tracing::warn!(target: "node::validator", height = block.height, %err, "invalid payload");
                metrics::counter!(PAYLOADS_REJECTED, "reason" => err.reason()).increment(1);
                return;
            }
        };
        // Recovery here is on the way to the vote; what the pool held was not.
        tracing::debug!(target: "node::validator", height = block.height, txs = payload.tx_count(), recovered = payload.senders_recovered(), "payload decoded");
        if self.keep_payload(&block, payload) {
            self.feed(Event::Message {
                from: pending.from,
                message: pending.message,
            });
        }
    }

    /// Checks and keeps a proposed block's decoded payload (a proposal's, or the one a leader
    /// fetched for the block it builds on); false if refused.
    pub(in crate::validator) fn keep_payload(&mut self, block: &Block, payload: Payload) -> bool {
        let parent_fees = self.parent_known(block.parent()).map(|(_, fees)| fees);
        let (height, round) = (self.finality.height(), self.bft.round());
        match self
            .payloads
            .accept(block, payload.clone(), parent_fees, height, round)
        {
            // In flight here too: not proposed again by us, and back in the pool if it loses
            // (a proposal at or below our head already lost, or is final).
            Ok(new) => {
                if new && block.height > height {
                    self.pool.on_proposed(block.height, payload.txs());
                }
            }
            Err(refused) => {
                tracing::warn!(target: "node::validator", height = block.height, ?refused, "payload refused");
                metrics::counter!(PAYLOADS_REJECTED, "reason" => refused.reason()).increment(1);
                return false;
            }
        }
        self.payloads.remember(block);
        true
    }
}
