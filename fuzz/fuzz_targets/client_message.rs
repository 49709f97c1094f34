//! Any text frame a client can send: decoding never panics, and what it
//! accepts is within the wire's bounds and in canonical form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_domain::{Component, Delta};
use relay_domain::ids::MAX_WIRE_INT;
use relay_domain::testing::assert_normal;
use relay_fuzz::assert_wire_round_trip;
use relay_ports::protocol::{ClientMessage, ErrorCode};

/// What every delta that came off the wire must be.
fn check_wire_delta(d: &Delta, what: &str) {
    assert!(d.check_storable().is_ok(), "{what}: not storable: {d:?}");
    assert!(d.base_len() as u64 <= MAX_WIRE_INT, "{what}: base length");
    assert!(d.target_len() as u64 <= MAX_WIRE_INT, "{what}: target length");
    assert!(
        !d.components()
            .windows(2)
            .any(|w| matches!(w, [Component::Delete { .. }, Component::Insert { .. }])),
        "{what}: a delete directly followed by an insert: {d:?}"
    );
    assert_normal(d, what);
    // The wire form spans exactly what its components span.
    assert_eq!(d.spanned(), d.base_len(), "{what}: from_json spans its components");
    assert_wire_round_trip(d, what);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Delta::from_json_str(text) {
        check_wire_delta(&d, "from_json_str");
    }
    match ClientMessage::decode(text) {
        Ok(msg) => {
            match &msg {
                ClientMessage::Submit { seq, base, delta } => {
                    assert!(seq.get() <= MAX_WIRE_INT && base.get() <= MAX_WIRE_INT);
                    check_wire_delta(delta, "submit");
                }
                ClientMessage::Cursor { version, selection } => {
                    assert!(version.get() <= MAX_WIRE_INT);
                    if let Some(s) = selection {
                        assert!(s.anchor as u64 <= MAX_WIRE_INT && s.head as u64 <= MAX_WIRE_INT);
                    }
                }
                ClientMessage::Join(j) => {
                    let n = j.client_id.as_str().chars().count();
                    assert!((1..=64).contains(&n) && !j.client_id.as_str().contains('\0'));
                    assert!(j.since.is_none_or(|v| v.get() <= MAX_WIRE_INT));
                }
                ClientMessage::Typing | ClientMessage::Leave => {}
            }
            // What a client encodes decodes to the same message (a submit's
            // delta once fitted again: its trailing retain is not sent).
            let again = ClientMessage::decode(&msg.encode())
                .unwrap_or_else(|e| panic!("own encoding {} refused: {e}", msg.encode()));
            match (&msg, again) {
                (
                    ClientMessage::Submit { seq, base, delta },
                    ClientMessage::Submit {
                        seq: s2,
                        base: b2,
                        delta: d2,
                    },
                ) => {
                    assert_eq!((*seq, *base), (s2, b2));
                    let d2 = d2.fit(delta.base_len()).expect("fits its own base");
                    assert_eq!(d2, *delta, "submit: encode then decode");
                }
                (m, again) => assert_eq!(*m, again),
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadMessage | ErrorCode::InvalidDelta),
                "unexpected code {:?}",
                e.code
            );
            assert!(!e.message.is_empty());
            if e.code == ErrorCode::InvalidDelta {
                assert!(e.seq.is_some(), "an invalid delta names its submit's seq");
            }
        }
    }
});
