//! The wire protocol, version 1 (PROTOCOL.md): client and server messages,
//! error codes and close codes, and their JSON text.
//!
//! Decoding never fails silently: anything that is not a well-formed client
//! message becomes a [`DecodeError`] with the code (`bad_message` or
//! `invalid_delta`) and a message a client author can act on.

use relay_domain::{ClientId, CommittedOp, Delta, PresenceEntry, Selection, Seq, UserId, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The WebSocket subprotocol.
pub const SUBPROTOCOL: &str = "relay.v1";

/// The WebSocket close codes Relay sends (PROTOCOL.md, "Close codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client said `leave`.
    Normal,
    /// 1001: the server is going away (shutdown) or the session ended.
    GoingAway,
    /// 1003: a binary or non-UTF-8 frame.
    UnsupportedData,
    /// 1008: a protocol violation (heartbeat timeout, WebSocket errors).
    Policy,
    /// 1009: a frame over MAX_MESSAGE_BYTES.
    TooBig,
    /// 1011: the server failed (a room that panicked).
    Internal,
    /// 1013: try again later (a dependency is down, or the client is slow).
    TryAgainLater,
    /// 4400: the first message was not a valid `join`.
    BadFirstMessage,
    /// 4401: no token, an invalid one, or one that expired.
    Unauthenticated,
    /// 4403: no access to the document (or it was revoked).
    Forbidden,
    /// 4408: no `join` within AUTH_TIMEOUT_SECS.
    JoinTimeout,
    /// 4429: too many connections or joins for this user; retry later,
    /// with backoff.
    TooManyRequests,
}

impl CloseCode {
    /// The number on the wire.
    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::BadFirstMessage => 4400,
            CloseCode::Unauthenticated => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::JoinTimeout => 4408,
            CloseCode::TooManyRequests => 4429,
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

/// The close codes as the numbers a client reads off the wire (tests and
/// clients compare these); [`CloseCode`] is what the server sends.
pub mod close {
    use super::CloseCode;
    pub const NORMAL: u16 = CloseCode::Normal.as_u16();
    pub const GOING_AWAY: u16 = CloseCode::GoingAway.as_u16();
    pub const UNSUPPORTED_DATA: u16 = CloseCode::UnsupportedData.as_u16();
    pub const POLICY: u16 = CloseCode::Policy.as_u16();
    pub const TOO_BIG: u16 = CloseCode::TooBig.as_u16();
    pub const INTERNAL: u16 = CloseCode::Internal.as_u16();
    pub const TRY_AGAIN_LATER: u16 = CloseCode::TryAgainLater.as_u16();
    pub const BAD_FIRST_MESSAGE: u16 = CloseCode::BadFirstMessage.as_u16();
    pub const UNAUTHENTICATED: u16 = CloseCode::Unauthenticated.as_u16();
    pub const FORBIDDEN: u16 = CloseCode::Forbidden.as_u16();
    pub const JOIN_TIMEOUT: u16 = CloseCode::JoinTimeout.as_u16();
    pub const TOO_MANY_REQUESTS: u16 = CloseCode::TooManyRequests.as_u16();
}

/// Error codes of `error` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    InvalidDelta,
    FutureBase,
    StaleBase,
    InFlight,
    OutOfOrder,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        relay_domain::wire_name::unit_variant_name(&self).expect("an error code is a unit variant")
    }

    /// The code of a sequencer rejection.
    pub fn of(rejection: &relay_domain::Rejection) -> ErrorCode {
        use relay_domain::Rejection as R;
        match rejection {
            R::FutureBase { .. } => ErrorCode::FutureBase,
            R::StaleBase { .. } => ErrorCode::StaleBase,
            R::OutOfOrder { .. } => ErrorCode::OutOfOrder,
            R::InvalidDelta(_) => ErrorCode::InvalidDelta,
            R::TooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}

// re-exported: the wire names them.
pub use relay_domain::{Departed, Role};

/// `join`: the first message of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    pub client_id: ClientId,
    pub token: Option<String>,
    pub since: Option<Version>,
}

/// A message from a client, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Join(Join),
    Submit {
        seq: Seq,
        base: Version,
        /// As received: a trailing retain may be missing.
        delta: Delta,
    },
    Cursor {
        version: Version,
        /// `None` hides the caret.
        selection: Option<Selection>,
    },
    Typing,
    Leave,
}

/// Why a client message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The submit's `seq`, when it could be read.
    pub seq: Option<Seq>,
}

impl DecodeError {
    fn bad(message: impl Into<String>, seq: Option<Seq>) -> DecodeError {
        DecodeError {
            code: ErrorCode::BadMessage,
            message: bound_echoes(&message.into()),
            seq,
        }
    }
}

/// Most characters of one piece of client text an error message repeats
/// (PROTOCOL.md, "Before the join").
pub const MAX_ECHO_CHARS: usize = 64;

/// `message` with every quoted piece (`"..."` or `` `...` ``, where serde
/// and `Debug` put client text) cut to [`MAX_ECHO_CHARS`] characters, an
/// escape sequence counting as one; and the whole message cut to
/// [`MAX_ERROR_CHARS`], so no answer grows with what the client sent.
pub fn bound_echoes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        let close = c;
        let mut kept = 0;
        let mut cut = false;
        while let Some(q) = chars.next() {
            if q == close {
                break;
            }
            // One unit: a character, or an escape (`\n`, `\"`, `\u{85}`).
            let mut unit = String::from(q);
            if q == '\\'
                && let Some(e) = chars.next()
            {
                unit.push(e);
                if e == 'u' && chars.as_str().starts_with('{') {
                    for h in chars.by_ref() {
                        unit.push(h);
                        if h == '}' {
                            break;
                        }
                    }
                }
            }
            if kept < MAX_ECHO_CHARS {
                out.push_str(&unit);
                kept += 1;
            } else {
                cut = true;
            }
        }
        if cut {
            out.push_str("...");
        }
        out.push(close);
    }
    if let Some((at, _)) = out.char_indices().nth(MAX_ERROR_CHARS) {
        out.truncate(at);
        out.push_str("...");
    }
    out
}

/// Most characters of an `error` message about a client's frame.
pub const MAX_ERROR_CHARS: usize = 1024;

#[derive(Deserialize)]
struct JoinFields {
    client_id: ClientId,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    since: Option<Version>,
}

#[derive(Deserialize)]
struct SubmitFields {
    seq: Seq,
    base: Version,
    delta: Value,
}

#[derive(Deserialize)]
struct CursorFields {
    version: Version,
    #[serde(deserialize_with = "position")]
    anchor: Option<usize>,
    #[serde(default, deserialize_with = "position")]
    head: Option<usize>,
}

/// A position on the wire: an integer from 0 to 2^53 - 1, or null.
fn position<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<u64>::deserialize(d)? else {
        return Ok(None);
    };
    if n > relay_domain::ids::MAX_WIRE_INT {
        return Err(serde::de::Error::custom(format!(
            "position {n} is out of range: it must be an integer from 0 to 2^53 - 1"
        )));
    }
    usize::try_from(n)
        .map(Some)
        .map_err(|_| serde::de::Error::custom("position out of range"))
}

impl ClientMessage {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DecodeError::bad(format!("not JSON: {e}"), None))?;
        let Value::Object(obj) = &value else {
            return Err(DecodeError::bad("a message must be a JSON object", None));
        };
        let seq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .and_then(|n| Seq::new(n).ok());
        let kind = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(DecodeError::bad("`type` must be a string", seq)),
            None => return Err(DecodeError::bad("missing `type`", seq)),
        };
        let fields = |e: serde_json::Error| DecodeError::bad(format!("{kind}: {e}"), seq);
        match kind {
            "join" => {
                let f: JoinFields = serde_json::from_value(value.clone()).map_err(fields)?;
                Ok(ClientMessage::Join(Join {
                    client_id: f.client_id,
                    token: f.token,
                    since: f.since,
                }))
            }
            "submit" => {
                let f: SubmitFields = serde_json::from_value(value.clone()).map_err(fields)?;
                let delta = Delta::from_json(&f.delta).map_err(|e| DecodeError {
                    code: ErrorCode::InvalidDelta,
                    message: bound_echoes(&e.to_string()),
                    seq: Some(f.seq),
                })?;
                Ok(ClientMessage::Submit {
                    seq: f.seq,
                    base: f.base,
                    delta,
                })
            }
            "cursor" => {
                let f: CursorFields = serde_json::from_value(value.clone()).map_err(fields)?;
                let selection = match (f.anchor, f.head) {
                    (None, _) => None,
                    (Some(anchor), Some(head)) => Some(Selection { anchor, head }),
                    (Some(_), None) => {
                        return Err(DecodeError::bad(
                            "cursor: `head` is required with `anchor`",
                            None,
                        ));
                    }
                };
                Ok(ClientMessage::Cursor {
                    version: f.version,
                    selection,
                })
            }
            "typing" => Ok(ClientMessage::Typing),
            "leave" => Ok(ClientMessage::Leave),
            other => {
                let shown: String = other.chars().take(MAX_ECHO_CHARS + 1).collect();
                Err(DecodeError::bad(
                    format!("unknown message type {shown:?}"),
                    seq,
                ))
            }
        }
    }

    /// Encodes the message as a client would send it (for clients and
    /// tests).
    pub fn encode(&self) -> String {
        let v = match self {
            ClientMessage::Join(j) => serde_json::json!({
                "type": "join", "client_id": j.client_id, "token": j.token, "since": j.since
            }),
            ClientMessage::Submit { seq, base, delta } => serde_json::json!({
                "type": "submit", "seq": seq, "base": base, "delta": delta
            }),
            ClientMessage::Cursor { version, selection } => serde_json::json!({
                "type": "cursor", "version": version,
                "anchor": selection.map(|s| s.anchor), "head": selection.map(|s| s.head)
            }),
            ClientMessage::Typing => serde_json::json!({"type": "typing"}),
            ClientMessage::Leave => serde_json::json!({"type": "leave"}),
        };
        v.to_string()
    }
}

/// `joined.user`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: UserId,
    pub name: Option<String>,
}

/// `joined.limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub operation_batch_size: usize,
    pub cursor_throttle_ms: u64,
    pub typing_debounce_ms: u64,
    pub heartbeat_interval_secs: u64,
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        session: String,
        user: UserInfo,
        role: Role,
        version: Version,
        content: Option<Delta>,
        ops: Option<Vec<CommittedOp>>,
        presence: Vec<PresenceEntry>,
        limits: Limits,
    },
    Ack {
        seq: Seq,
        version: Version,
    },
    Ops {
        ops: Vec<CommittedOp>,
    },
    Cursor {
        user: UserId,
        client_id: ClientId,
        version: Version,
        anchor: Option<usize>,
        head: Option<usize>,
    },
    Presence {
        joined: Vec<PresenceEntry>,
        left: Vec<Departed>,
    },
    Typing {
        user: UserId,
        client_id: ClientId,
        active: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
        seq: Option<Seq>,
        fatal: bool,
    },
    Shutdown {
        reconnect_in_ms: u64,
    },
}

impl ServerMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }

    /// Decodes a server message (for clients and tests). Deltas come back
    /// as sent: fit them to the document before applying.
    pub fn decode(text: &str) -> Result<ServerMessage, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        seq: Option<Seq>,
        fatal: bool,
    ) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            seq,
            fatal,
        }
    }
}

/// Encodes an `ops` frame from ops already encoded one by one, so a batch
/// fanned out to many clients is serialised once.
pub fn encode_ops_frame<'a>(ops: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from(r#"{"type":"ops","ops":["#);
    for (i, op) in ops.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(op);
    }
    out.push_str("]}");
    out
}

/// Encodes one op for [`encode_ops_frame`].
pub fn encode_op(op: &CommittedOp) -> String {
    serde_json::to_string(op).expect("ops always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_codes_are_named_as_serde_writes_them() {
        let codes = [
            (ErrorCode::BadMessage, "bad_message"),
            (ErrorCode::InvalidDelta, "invalid_delta"),
            (ErrorCode::FutureBase, "future_base"),
            (ErrorCode::StaleBase, "stale_base"),
            (ErrorCode::InFlight, "in_flight"),
            (ErrorCode::OutOfOrder, "out_of_order"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::TooLarge, "too_large"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::Unavailable, "unavailable"),
            (ErrorCode::Internal, "internal"),
        ];
        for (code, name) in codes {
            assert_eq!(code.as_str(), name);
            assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        }
    }

    #[test]
    fn decodes_every_client_message() {
        let j = ClientMessage::decode(
            r#"{"type":"join","client_id":"tab-1","token":"t","since":null}"#,
        )
        .unwrap();
        assert!(matches!(
            j,
            ClientMessage::Join(Join {
                since: None,
                token: Some(_),
                ..
            })
        ));
        let s = ClientMessage::decode(
            r#"{"type":"submit","seq":1,"base":2,"delta":[{"retain":2},{"insert":"!"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            s,
            ClientMessage::Submit { seq, base, .. } if seq == Seq::from(1) && base == Version::from(2)
        ));
        let c = ClientMessage::decode(r#"{"type":"cursor","version":3,"anchor":null}"#).unwrap();
        assert_eq!(
            c,
            ClientMessage::Cursor {
                version: Version::from(3),
                selection: None
            }
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"typing"}"#).unwrap(),
            ClientMessage::Typing
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let e = ClientMessage::decode("{nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
        assert!(e.message.starts_with("not JSON"));
        let e = ClientMessage::decode(r#"{"type":"submit","seq":4,"base":"x","delta":[]}"#)
            .unwrap_err();
        assert_eq!((e.code, e.seq), (ErrorCode::BadMessage, Some(Seq::from(4))));
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = ClientMessage::decode(r#"{"type":"dance"}"#).unwrap_err();
        assert!(e.message.contains("unknown message type"));
        let e = ClientMessage::decode(r#"[1]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
        let e = ClientMessage::decode(r#"{"type":"join","client_id":""}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage);
    }

    #[test]
    fn integers_over_two_to_the_fifty_three_minus_one_are_bad_messages() {
        let max = relay_domain::ids::MAX_WIRE_INT;
        let over = max + 1;
        for (text, code, seq) in [
            (
                format!(r#"{{"type":"submit","seq":{over},"base":0,"delta":[]}}"#),
                ErrorCode::BadMessage,
                None,
            ),
            (
                format!(
                    r#"{{"type":"submit","seq":{},"base":0,"delta":[]}}"#,
                    u64::MAX
                ),
                ErrorCode::BadMessage,
                None,
            ),
            (
                format!(r#"{{"type":"submit","seq":1,"base":{over},"delta":[]}}"#),
                ErrorCode::BadMessage,
                Some(Seq::from(1)),
            ),
            (
                r#"{"type":"submit","seq":1,"base":-1,"delta":[]}"#.to_owned(),
                ErrorCode::BadMessage,
                Some(Seq::from(1)),
            ),
            (
                format!(r#"{{"type":"submit","seq":1,"base":0,"delta":[{{"retain":{over}}}]}}"#),
                ErrorCode::InvalidDelta,
                Some(Seq::from(1)),
            ),
            (
                format!(r#"{{"type":"join","client_id":"t","since":{over}}}"#),
                ErrorCode::BadMessage,
                None,
            ),
            (
                format!(r#"{{"type":"cursor","version":{over},"anchor":null}}"#),
                ErrorCode::BadMessage,
                None,
            ),
            (
                format!(r#"{{"type":"cursor","version":1,"anchor":{over},"head":0}}"#),
                ErrorCode::BadMessage,
                None,
            ),
            (
                format!(
                    r#"{{"type":"cursor","version":1,"anchor":0,"head":{}}}"#,
                    u64::MAX
                ),
                ErrorCode::BadMessage,
                None,
            ),
            (
                r#"{"type":"join","client_id":"a\u0000b"}"#.to_owned(),
                ErrorCode::BadMessage,
                None,
            ),
        ] {
            let e = ClientMessage::decode(&text).unwrap_err();
            assert_eq!((e.code, e.seq), (code, seq), "{text}: {}", e.message);
        }
        let ok =
            format!(r#"{{"type":"submit","seq":{max},"base":{max},"delta":[{{"retain":{max}}}]}}"#);
        assert!(ClientMessage::decode(&ok).is_ok());
        let ok = format!(r#"{{"type":"cursor","version":{max},"anchor":{max},"head":0}}"#);
        assert!(ClientMessage::decode(&ok).is_ok());
    }

    #[test]
    fn an_invalid_delta_is_its_own_code() {
        let e =
            ClientMessage::decode(r#"{"type":"submit","seq":4,"base":0,"delta":[{"retain":0}]}"#)
                .unwrap_err();
        assert_eq!(
            (e.code, e.seq),
            (ErrorCode::InvalidDelta, Some(Seq::from(4)))
        );
    }

    #[test]
    fn server_messages_have_the_protocol_shape() {
        let m = ServerMessage::Ack {
            seq: Seq::from(1),
            version: Version::from(3),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"ack","seq":1,"version":3})
        );
        let e = ServerMessage::error(
            ErrorCode::InFlight,
            "one at a time",
            Some(Seq::from(2)),
            false,
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type":"error","code":"in_flight","message":"one at a time","seq":2,"fatal":false})
        );
        assert_eq!(
            ServerMessage::Shutdown { reconnect_in_ms: 5 }.encode(),
            r#"{"type":"shutdown","reconnect_in_ms":5}"#
        );
    }

    #[test]
    fn an_ops_frame_from_encoded_ops_decodes_as_ops() {
        let mut d = Delta::new();
        d.insert("Oh, ");
        let op = CommittedOp {
            version: Version::from(4),
            user: UserId::new(uuid::Uuid::nil()),
            client_id: ClientId::new("tab-9").unwrap(),
            seq: Seq::from(12),
            delta: d,
        };
        let frame = encode_ops_frame([encode_op(&op).as_str()]);
        assert_eq!(
            ServerMessage::decode(&frame).unwrap(),
            ServerMessage::Ops { ops: vec![op] }
        );
    }

    #[test]
    fn an_error_never_repeats_more_than_64_characters_of_the_client_text() {
        let long = "\u{85}".repeat(100_000);
        let unknown = ClientMessage::decode(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        assert!(
            unknown.message.starts_with("unknown message type"),
            "{}",
            unknown.message
        );
        assert_eq!(
            unknown.message.matches("\\u{85}").count(),
            MAX_ECHO_CHARS,
            "{}",
            unknown.message
        );
        let x = "x".repeat(100_000);
        for frame in [
            format!(r#"{{"type":"join","client_id":"t","since":"{x}"}}"#),
            format!(r#"{{"type":"submit","seq":"{x}","base":0,"delta":[]}}"#),
            format!(r#"{{"type":"cursor","version":1,"anchor":"{x}","head":0}}"#),
            format!(
                r#"{{"type":"submit","seq":1,"base":0,"delta":[{{"insert":"a","attributes":{{"{x}":1}}}}]}}"#
            ),
            format!(r#"{{"type":"join","client_id":"{x}"}}"#),
            format!("{{\"type\":\"join\",\"client_id\":\"{x}"),
        ] {
            let e = ClientMessage::decode(&frame).unwrap_err();
            let longest_run = e
                .message
                .split(|c: char| c != 'x')
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(
                longest_run <= MAX_ECHO_CHARS && e.message.chars().count() <= MAX_ERROR_CHARS + 3,
                "{} chars, a run of {longest_run}: {}",
                e.message.len(),
                &e.message[..e.message.len().min(200)]
            );
        }
    }

    #[test]
    fn a_client_id_with_a_control_character_is_a_bad_message() {
        for bad in [
            "a\\nb",
            "a\\rb",
            "\\u001b[31m",
            "a\\u007fb",
            "a\\u0085b",
            "a\\u009fb",
            "\\u0000",
        ] {
            let e = ClientMessage::decode(&format!(r#"{{"type":"join","client_id":"{bad}"}}"#))
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::BadMessage, "{bad}");
        }
        for good in ["tab-1", "a b", "caf\\u00e9", "\\u00a0x", "\\u4e2d"] {
            assert!(
                ClientMessage::decode(&format!(r#"{{"type":"join","client_id":"{good}"}}"#))
                    .is_ok(),
                "{good}"
            );
        }
    }
}
