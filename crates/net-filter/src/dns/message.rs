//! The DNS messages the server writes itself: local answers, the query it
//! sends upstream in the guest's place, and the check that a response
//! answers that query.

use std::net::Ipv4Addr;

use simple_dns::rdata::{RData, A, OPT};
use simple_dns::{
    Packet, PacketFlag, Question, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE,
};

use crate::policy::normalize_name;

/// The EDNS payload size the server's own answers advertise (RFC 9715's
/// safe default).
const LOCAL_UDP_PAYLOAD: u16 = 1232;
/// The largest answer asked of upstream on the guest's behalf (larger
/// ones come truncated, and the guest retries over TCP).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// What a guest asked: its query's single question and the header bits
/// the answer depends on. Everything else in the query (other sections,
/// EDNS options, trailing bytes) is left behind, so nothing the server did
/// not check travels upstream.
#[derive(Debug, Clone)]
pub(super) struct Asked<'a> {
    /// The guest's transaction id.
    pub id: u16,
    /// The question, as the guest spelled it (case kept for 0x20 checks).
    pub question: Question<'a>,
    /// The guest's EDNS UDP payload size, if its query had an OPT record.
    edns: Option<u16>,
    /// The guest asked for recursion (echoed in answers).
    recursion_desired: bool,
    /// The guest asked for DNSSEC checking to be disabled.
    checking_disabled: bool,
    /// The payload size asked of upstream when it is not the guest's own
    /// (a guest on TCP takes any size).
    upstream_size: Option<u16>,
}

impl<'a> Asked<'a> {
    /// The parts of `query` that matter, `question` being its only one.
    pub fn new(query: &Packet<'a>, question: &Question<'a>) -> Self {
        Asked {
            id: query.id(),
            question: question.clone(),
            // RFC 6891: a size below 512 means 512.
            edns: query
                .opt()
                .map(|o| o.udp_packet_size.clamp(512, MAX_UDP_PAYLOAD)),
            recursion_desired: query.has_flags(PacketFlag::RECURSION_DESIRED),
            checking_disabled: query.has_flags(PacketFlag::CHECKING_DISABLED),
            upstream_size: None,
        }
    }

    /// Asks upstream for the largest answer a datagram brings (for a
    /// client on TCP, which takes any size).
    /// The server's own answers stay as the guest asked (no OPT record
    /// unless it sent one).
    pub fn widen(&mut self) {
        self.upstream_size = Some(MAX_UDP_PAYLOAD);
    }

    /// The same, owning its name (to wait for upstream).
    pub fn into_owned(self) -> Asked<'static> {
        Asked {
            question: self.question.into_owned(),
            ..self
        }
    }

    /// The name asked for, normalized; `None` when the policy could not
    /// judge it (the root, escapes, non-ASCII bytes, a dot inside a label).
    pub fn name(&self) -> Option<String> {
        normalize_name(&self.question.qname.to_string()).ok()
    }

    /// Whether the question is for records of type `t`.
    pub fn is(&self, t: TYPE) -> bool {
        self.question.qtype == QTYPE::TYPE(t)
    }

    /// The answer the server gives itself: `rcode`, the question echoed,
    /// and an A record for `address` if given (only for an A question of
    /// class IN; any other question gets an empty answer).
    pub fn reply(&self, rcode: RCODE, address: Option<(Ipv4Addr, u32)>) -> Option<Vec<u8>> {
        let mut reply = Packet::new_reply(self.id);
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if self.recursion_desired {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        *reply.rcode_mut() = rcode;
        reply.questions.push(self.question.clone());
        let is_a_in = self.is(TYPE::A) && self.question.qclass == QCLASS::CLASS(CLASS::IN);
        if let (Some((ip, ttl)), true) = (address, is_a_in) {
            reply.answers.push(ResourceRecord::new(
                self.question.qname.clone(),
                CLASS::IN,
                ttl,
                RData::A(A { address: ip.into() }),
            ));
        }
        if self.edns.is_some() {
            *reply.opt_mut() = Some(opt(LOCAL_UDP_PAYLOAD));
        }
        reply.build_bytes_vec().ok()
    }

    /// The query sent upstream under transaction id `id`: the question
    /// and the guest's payload size, recursion desired.
    pub fn upstream_query(&self, id: u16) -> Option<Vec<u8>> {
        let mut query = Packet::new_query(id);
        query.set_flags(PacketFlag::RECURSION_DESIRED);
        if self.checking_disabled {
            query.set_flags(PacketFlag::CHECKING_DISABLED);
        }
        query.questions.push(self.question.clone());
        *query.opt_mut() = self.upstream_size.or(self.edns).map(opt);
        query.build_bytes_vec().ok()
    }

    /// Whether `response` answers this question (same name, type, class):
    /// a guessed transaction id alone does not get an answer relayed.
    pub fn answered_by(&self, response: &Packet) -> bool {
        let asked = &self.question;
        response.has_flags(PacketFlag::RESPONSE)
            && matches!(response.questions.as_slice(), [q]
                if q.qname == asked.qname && q.qtype == asked.qtype && q.qclass == asked.qclass)
    }
}

/// An answer with `rcode` and no question, for a query the server does
/// not take apart (several questions, an opcode other than QUERY).
pub(super) fn bare_reply(query: &Packet, rcode: RCODE) -> Option<Vec<u8>> {
    let mut reply = Packet::new_reply(query.id());
    *reply.opcode_mut() = match query.opcode() {
        OPCODE::Reserved => OPCODE::StandardQuery,
        opcode => opcode,
    };
    *reply.rcode_mut() = rcode;
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    reply.build_bytes_vec().ok()
}

/// `message` with its transaction id replaced by `id`.
pub(super) fn with_id(message: &[u8], id: u16) -> Vec<u8> {
    let mut out = message.to_vec();
    if let Some(head) = out.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// An OPT record advertising `udp_packet_size`, EDNS version 0, no options.
fn opt(udp_packet_size: u16) -> OPT<'static> {
    OPT {
        opt_codes: Vec::new(),
        udp_packet_size,
        version: 0,
    }
}
