//! Naming learned addresses: user space decodes the same answers the kernel learned from (sent
//! with each learning event) to say which hostname each address belongs to. The kernel's map is
//! the authority on what is allowed; this is for people reading logs.

use std::net::IpAddr;

use dns_parser::{Packet, RData};

/// An address on the CNAME chain of an answer, with the names that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedAddress {
    pub addr: IpAddr,
    /// The question (what the client asked for).
    pub question: String,
    /// The name that owns the address record (the question, or the end of its CNAME chain).
    pub owner: String,
    pub ttl: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("not a DNS message")]
    Malformed(#[from] dns_parser::Error),
    #[error("the answer has no question")]
    NoQuestion,
}

/// The question of a query (`name`, type), as the audit log names it.
pub fn query_question(message: &[u8]) -> Result<(String, String), AnswerError> {
    let packet = Packet::parse(message)?;
    let question = packet.questions.first().ok_or(AnswerError::NoQuestion)?;
    Ok((question.qname.to_string(), format!("{:?}", question.qtype)))
}

/// Decodes `message` and follows its CNAME chain from the question, as the kernel does.
pub fn named_addresses(message: &[u8]) -> Result<Vec<NamedAddress>, AnswerError> {
    let packet = Packet::parse(message)?;
    let question = packet
        .questions
        .first()
        .ok_or(AnswerError::NoQuestion)?
        .qname
        .to_string()
        .to_ascii_lowercase();
    let mut current = question.clone();
    let mut found = Vec::new();
    for record in &packet.answers {
        let owner = record.name.to_string().to_ascii_lowercase();
        if owner != current {
            continue;
        }
        match &record.data {
            RData::A(a) => found.push(NamedAddress {
                addr: IpAddr::V4(a.0),
                question: question.clone(),
                owner,
                ttl: record.ttl,
            }),
            RData::AAAA(aaaa) => found.push(NamedAddress {
                addr: IpAddr::V6(aaaa.0),
                question: question.clone(),
                owner,
                ttl: record.ttl,
            }),
            RData::CNAME(target) => current = target.0.to_string().to_ascii_lowercase(),
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    #[test]
    fn follows_the_chain_like_the_kernel() {
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0];
        msg.extend(wire("Reg.Test"));
        msg.extend([0, 1, 0, 1]);
        // reg.test CNAME cdn.test; other.test A (ignored); cdn.test A 198.51.100.2
        msg.extend([0xc0, 12, 0, 5, 0, 1, 0, 0, 1, 44]);
        let target = wire("cdn.test");
        msg.extend((target.len() as u16).to_be_bytes());
        msg.extend(&target);
        msg.extend(wire("other.test"));
        msg.extend([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 9]);
        msg.extend(wire("cdn.test"));
        msg.extend([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 2]);
        let named = named_addresses(&msg).unwrap();
        assert_eq!(
            named,
            [NamedAddress {
                addr: "198.51.100.2".parse().unwrap(),
                question: "reg.test".into(),
                owner: "cdn.test".into(),
                ttl: 60,
            }]
        );
        assert!(named_addresses(&[1, 2, 3]).is_err());
    }
}
