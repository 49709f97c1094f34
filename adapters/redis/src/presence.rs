//! The presence registry in Redis.

use super::Commands;
use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId};
use relay_ports::Cause;
use relay_ports::{PresenceError, PresenceRegistry};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A [`PresenceRegistry`] shared by every instance through Redis.
///
/// A document's entries are a hash, `relay:presence:<uuid>`, from
/// `user/client_id` to the entry as JSON, beside a sorted set,
/// `relay:presence:<uuid>:expiry`, scoring each field by when it expires
/// (ms since the Unix epoch). Listing reads only unexpired fields and
/// drops expired ones, so the clients of an instance that crashed (and
/// stopped refreshing) disappear within the TTL. Both keys also expire as a
/// whole a TTL after the last write, so an abandoned document leaves
/// nothing behind.
#[derive(Clone, Debug)]
pub struct RedisPresence {
    commands: Commands,
}

impl RedisPresence {
    pub(super) fn new(commands: Commands) -> RedisPresence {
        RedisPresence { commands }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, PresenceError> {
        self.commands
            .query(&pipe)
            .await
            .map_err(|e| PresenceError::Unavailable(e.into()))
    }
}

fn keys(document: DocumentId) -> (String, String) {
    let data = format!("relay:presence:{document}");
    let expiry = format!("{data}:expiry");
    (data, expiry)
}

fn field(user: UserId, client_id: &ClientId) -> String {
    format!("{user}/{client_id}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl PresenceRegistry for RedisPresence {
    async fn upsert(
        &self,
        document: DocumentId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let (data, expiry) = keys(document);
        let f = field(entry.user, &entry.client_id);
        let json =
            serde_json::to_string(&entry).map_err(|e| PresenceError::Unavailable(Cause::new(e)))?;
        let expires = now_ms().saturating_add(millis(ttl));
        let keep = millis(ttl).saturating_add(1000);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&data, &f, json)
            .ignore()
            .zadd(&expiry, &f, expires)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&data)
            .arg(keep)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&expiry)
            .arg(keep)
            .ignore();
        self.run::<()>(pipe).await
    }

    /// One transaction for every entry: an `HSET` and a `ZADD` of them all,
    /// then the keys' expiry (a room refreshing its clients costs one round
    /// trip, not one per client).
    async fn upsert_many(
        &self,
        document: DocumentId,
        entries: Vec<PresenceEntry>,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (data, expiry) = keys(document);
        let expires = now_ms().saturating_add(millis(ttl));
        let keep = millis(ttl).saturating_add(1000);
        let mut fields = Vec::with_capacity(entries.len());
        let mut scores = Vec::with_capacity(entries.len());
        for entry in &entries {
            let f = field(entry.user, &entry.client_id);
            let json = serde_json::to_string(entry)
                .map_err(|e| PresenceError::Unavailable(Cause::new(e)))?;
            scores.push((expires, f.clone()));
            fields.push((f, json));
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&data, &fields)
            .ignore()
            .zadd_multiple(&expiry, &scores)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&data)
            .arg(keep)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&expiry)
            .arg(keep)
            .ignore();
        self.run::<()>(pipe).await
    }

    async fn remove(
        &self,
        document: DocumentId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError> {
        let (data, expiry) = keys(document);
        let f = field(user, client_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(&data, &f)
            .ignore()
            .zrem(&expiry, &f)
            .ignore();
        self.run::<()>(pipe).await
    }

    async fn list(&self, document: DocumentId) -> Result<Vec<PresenceEntry>, PresenceError> {
        let (data, expiry) = keys(document);
        let now = now_ms();
        // Expired fields first go, then the live ones are read.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZRANGE")
            .arg(&expiry)
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE");
        let (expired,): (Vec<String>,) = self.run(pipe).await?;
        if !expired.is_empty() {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HDEL")
                .arg(&data)
                .arg(&expired)
                .ignore()
                .cmd("ZREM")
                .arg(&expiry)
                .arg(&expired)
                .ignore();
            self.run::<()>(pipe).await?;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE")
            .arg(&expiry)
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("BYSCORE");
        let (live,): (Vec<String>,) = self.run(pipe).await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&data).arg(&live);
        let (values,): (Vec<Option<String>>,) = self.run(pipe).await?;
        let mut entries: Vec<PresenceEntry> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        entries.sort_by(|a, b| (a.user, &a.client_id).cmp(&(b.user, &b.client_id)));
        Ok(entries)
    }
}
