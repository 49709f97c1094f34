//! The WebSocket handshake for `GET /collab/{document_id}`.

use super::WsConfig;
use super::connection;
use crate::admission::AdmissionCell;
use crate::first_frame::{FIRST_MESSAGE_BYTES, FirstFrameLimit};
use relay_domain::DocumentId;
use relay_ports::metrics::RejectReason;
use relay_ports::protocol::SUBPROTOCOL;
use relay_ports::{CollaborationService, Metrics, Refusal};
use std::sync::Arc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use warp::hyper::upgrade::OnUpgrade;
use warp::reply::Response as WarpResponse;

pub(super) fn collab(
    service: Arc<dyn CollaborationService>,
    config: Arc<WsConfig>,
    metrics: Arc<dyn Metrics>,
) -> impl Filter<Extract = (WarpResponse,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::path("collab")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<AdmissionCell>())
        .map(
            move |id: String,
                  headers: HeaderMap,
                  query: String,
                  on_upgrade: Option<OnUpgrade>,
                  admission: Option<AdmissionCell>| {
                let request = Request {
                    id: &id,
                    headers: &headers,
                    query: &query,
                };
                match handshake(&service, &config, &metrics, request, on_upgrade, admission) {
                    Ok(switching) => switching,
                    Err(refusal) => {
                        metrics.connection_rejected(refusal.reject_reason());
                        refusal.response()
                    }
                }
            },
        )
}

/// Why an upgrade request is answered without switching protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HandshakeRefusal {
    NotAUuid,
    TokenInUrl,
    NotWebSocket,
    BadVersion,
    MissingKey,
    UnsupportedSubprotocol,
    OriginNotAllowed,
    BadAuthorization,
    NotUpgradable,
    /// The service refused a connection slot.
    Service(Refusal),
}

impl HandshakeRefusal {
    fn status(&self) -> StatusCode {
        match self {
            HandshakeRefusal::NotWebSocket => StatusCode::UPGRADE_REQUIRED,
            HandshakeRefusal::OriginNotAllowed => StatusCode::FORBIDDEN,
            HandshakeRefusal::BadAuthorization => StatusCode::UNAUTHORIZED,
            HandshakeRefusal::Service(_) => StatusCode::SERVICE_UNAVAILABLE,
            HandshakeRefusal::NotAUuid
            | HandshakeRefusal::TokenInUrl
            | HandshakeRefusal::BadVersion
            | HandshakeRefusal::MissingKey
            | HandshakeRefusal::UnsupportedSubprotocol
            | HandshakeRefusal::NotUpgradable => StatusCode::BAD_REQUEST,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            HandshakeRefusal::NotAUuid => "document_id must be a UUID",
            HandshakeRefusal::TokenInUrl => {
                "tokens in the URL are not accepted: use the Authorization header or join.token"
            }
            HandshakeRefusal::NotWebSocket => "this endpoint speaks WebSocket (relay.v1)",
            HandshakeRefusal::BadVersion => "Sec-WebSocket-Version must be 13",
            HandshakeRefusal::MissingKey => "missing Sec-WebSocket-Key",
            HandshakeRefusal::UnsupportedSubprotocol => "unsupported subprotocol: offer relay.v1",
            HandshakeRefusal::OriginNotAllowed => "origin not allowed",
            HandshakeRefusal::BadAuthorization => "Authorization must be `Bearer <jwt>`",
            HandshakeRefusal::NotUpgradable => "connection cannot be upgraded",
            HandshakeRefusal::Service(Refusal::AtCapacity { .. }) => "server at capacity",
            HandshakeRefusal::Service(Refusal::Draining { .. }) => "server shutting down",
        }
    }

    fn reject_reason(&self) -> RejectReason {
        match self {
            HandshakeRefusal::BadAuthorization => RejectReason::Unauthorized,
            HandshakeRefusal::OriginNotAllowed => RejectReason::Forbidden,
            HandshakeRefusal::Service(Refusal::AtCapacity { .. }) => RejectReason::Capacity,
            HandshakeRefusal::Service(Refusal::Draining { .. }) => RejectReason::Unavailable,
            _ => RejectReason::BadRequest,
        }
    }

    fn response(&self) -> WarpResponse {
        let mut r = plain(self.status(), self.message());
        if let HandshakeRefusal::Service(
            Refusal::AtCapacity { retry_after_secs } | Refusal::Draining { retry_after_secs },
        ) = self
        {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        r
    }
}

fn plain(status: StatusCode, body: &str) -> WarpResponse {
    let mut r = Response::new(format!("{body}\n").into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The parts of an upgrade request the handshake reads.
struct Request<'a> {
    id: &'a str,
    headers: &'a HeaderMap,
    query: &'a str,
}

/// The connection's slot and pending place, taken at accept (`server`);
/// asked for now when the connection got no slot then (the service was at
/// capacity or draining), or when it was not accepted by Relay's loop.
fn admission(
    service: &Arc<dyn CollaborationService>,
    cell: Option<AdmissionCell>,
) -> Result<
    (
        relay_ports::ConnectionSlot,
        Option<crate::admission::PendingPlace>,
    ),
    HandshakeRefusal,
> {
    let (slot, pending) = match cell.and_then(|c| c.take()) {
        Some(a) => (a.slot, a.pending),
        None => (None, None),
    };
    match slot {
        Some(slot) => Ok((slot, pending)),
        None => match service.admit() {
            Ok(slot) => Ok((slot, pending)),
            Err(refusal) => Err(HandshakeRefusal::Service(refusal)),
        },
    }
}

fn handshake(
    service: &Arc<dyn CollaborationService>,
    config: &Arc<WsConfig>,
    metrics: &Arc<dyn Metrics>,
    request: Request<'_>,
    on_upgrade: Option<OnUpgrade>,
    cell: Option<AdmissionCell>,
) -> Result<WarpResponse, HandshakeRefusal> {
    let Request { id, headers, query } = request;
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Err(HandshakeRefusal::NotAUuid);
    };
    let document = DocumentId::new(uuid);
    if query
        .split('&')
        .any(|kv| matches!(kv.split('=').next(), Some("token" | "access_token" | "jwt")))
    {
        return Err(HandshakeRefusal::TokenInUrl);
    }
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(HandshakeRefusal::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(HandshakeRefusal::BadVersion);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(HandshakeRefusal::MissingKey);
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect();
    let select_protocol = if offered.is_empty() {
        false
    } else if offered.iter().any(|p| p == SUBPROTOCOL) {
        true
    } else {
        return Err(HandshakeRefusal::UnsupportedSubprotocol);
    };
    if let (Some(allowed), Some(origin)) = (&config.allowed_origins, headers.get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        if !allowed.iter().any(|a| a == origin) {
            return Err(HandshakeRefusal::OriginNotAllowed);
        }
    }
    let bearer = match headers.get(header::AUTHORIZATION) {
        None => None,
        // The scheme name is case-insensitive (RFC 7235).
        Some(v) => match v
            .to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        {
            Some(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => {
                return Err(HandshakeRefusal::BadAuthorization);
            }
        },
    };
    let Some(on_upgrade) = on_upgrade else {
        return Err(HandshakeRefusal::NotUpgradable);
    };
    let (slot, pending) = admission(service, cell)?;
    let accept = derive_accept_key(key.as_bytes());
    let service = service.clone();
    let config = config.clone();
    let metrics = metrics.clone();
    let connections = config.connections.clone();
    let stop = connections.stop_token();
    connections.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let admitted = connection::Admitted {
            slot,
            pending,
            upgraded_at: tokio::time::Instant::now(),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_bytes)
            .write_buffer_size(config.write_buffer_bytes)
            // What tungstenite may hold beyond `write_buffer_size`: the
            // writer queues a frame only once the previous ones are
            // flushed, and no frame is larger than one fragment.
            .max_write_buffer_size(config.write_buffer_bytes + connection::MAX_WRITE_AHEAD)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let io = FirstFrameLimit::new(hyper_util::rt::TokioIo::new(upgraded), FIRST_MESSAGE_BYTES);
        let stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        // The connection's future is made here, inside the select, so the
        // task stores it once.
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = connection::run(stream, service, &config, &*metrics, document, bearer, admitted) => {}
        }
    });
    let mut r = Response::new(warp::hyper::body::Bytes::new().into());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if select_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(r)
}
