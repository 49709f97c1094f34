//! Permissions of open sessions follow the permission source within
//! PERMISSION_CACHE_TTL (paused clock, service in process).

use crate::config::Config;
use crate::service::Relay;
use crate::test_support::{next_frame, next_message};
use crate::wiring;
use relay_adapter_jwt::{DevKeys, TokenRequest};
use relay_adapter_memory::MemoryPermissions;
use relay_domain::{ClientId, Delta, DocumentId, Seq, UserId, Version};
use relay_ports::protocol::{ErrorCode, Join, Role, ServerMessage};
use relay_ports::{ClientMessage, CollaborationService, Outbound};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn submit(seq: u64, base: u64, text: &str) -> ClientMessage {
    let mut d = Delta::new();
    d.insert(text);
    ClientMessage::Submit {
        seq: Seq::new(seq).unwrap(),
        base: Version::new(base).unwrap(),
        delta: d,
    }
}

#[tokio::test(start_paused = true)]
async fn a_revoked_or_downgraded_permission_applies_to_open_sessions_within_the_cache_ttl() {
    let keys = DevKeys::from_seed([4; 32]);
    let mut config = Config::default();
    config.auth.permission_cache_ttl = Duration::from_secs(300);
    let (mut adapters, _) = wiring::memory_adapters(wiring::dev_verifier(&config, &keys));
    let permissions = MemoryPermissions::new();
    adapters.permissions = Arc::new(permissions.clone());
    let relay = Relay::new(config, adapters, Vec::new());
    let (user, doc) = (Uuid::new_v4(), DocumentId::new(Uuid::new_v4()));
    permissions.grant(UserId::new(user), doc, Role::Editor);
    let token = keys
        .mint(&TokenRequest {
            sub: user,
            name: None,
            docs: BTreeMap::new(),
            ttl_secs: 3600,
        })
        .unwrap();
    let join = Join {
        client_id: ClientId::new("tab").unwrap(),
        token: Some(token),
        since: None,
    };
    let mut started = relay
        .join(relay.admit().unwrap(), doc, None, join)
        .await
        .unwrap();
    let rx = &mut started.outbound;
    assert!(matches!(
        next_message(rx).await,
        ServerMessage::Joined {
            role: Role::Editor,
            ..
        }
    ));
    started.session.handle(submit(1, 0, "a")).await;
    assert!(matches!(next_message(rx).await, ServerMessage::Ack { .. }));

    // Downgraded: still an editor until the cached answer is older than the TTL.
    permissions.grant(UserId::new(user), doc, Role::Viewer);
    tokio::time::advance(Duration::from_secs(299)).await;
    started.session.handle(submit(2, 1, "b")).await;
    assert!(matches!(next_message(rx).await, ServerMessage::Ack { .. }));
    tokio::time::advance(Duration::from_secs(2)).await;
    started.session.handle(submit(3, 2, "c")).await;
    match next_message(rx).await {
        ServerMessage::Error {
            code, seq, fatal, ..
        } => {
            assert_eq!(
                (code, seq, fatal),
                (ErrorCode::Forbidden, Some(Seq::from(3)), false)
            );
        }
        other => panic!("expected forbidden, got {other:?}"),
    }

    // Revoked: the next check closes the session with 4403.
    permissions.revoke(UserId::new(user), doc);
    tokio::time::advance(Duration::from_secs(301)).await;
    started.session.handle(submit(3, 2, "c")).await;
    assert!(matches!(
        next_message(rx).await,
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    match next_frame(rx).await {
        Outbound::Close(order) => assert_eq!(order.code.as_u16(), 4403),
        other => panic!("expected a close, got {other:?}"),
    }
}
