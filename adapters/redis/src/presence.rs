//! The presence registry in Redis.

use super::Commands;
use async_trait::async_trait;
use relay_domain::{ClientId, DocumentId, PresenceEntry, UserId};
use relay_ports::Cause;
use relay_ports::{Held, InstanceId, PresenceError, PresenceRegistry};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A [`PresenceRegistry`] shared by every instance through Redis.
///
/// A document's entries are a hash, `relay:presence:<uuid>`, from
/// `user/client_id/instance` (the instance's UUID: each instance owns its
/// own field for a client, so removing it leaves another instance's entry
/// for the same client) to the entry as JSON, beside a sorted set,
/// `relay:presence:<uuid>:expiry`, scoring each field by when it expires
/// (ms since the Unix epoch). Listing reads only unexpired fields and
/// drops expired ones, so the clients of an instance that crashed (and
/// stopped refreshing) disappear within the TTL. Both keys also expire as a
/// whole a TTL after the last write, so an abandoned document leaves
/// nothing behind. A field of the older `user/client_id` form (no
/// instance) is never listed; it expires like any other.
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

fn field(user: UserId, client_id: &ClientId, instance: InstanceId) -> String {
    format!("{user}/{client_id}/{}", instance.as_uuid())
}

/// What a listed field and its value hold, if the field is of the current
/// form and names the entry it holds. A `client_id` may contain '/', so
/// the instance is the last segment, and the whole field must be the one
/// [`field`] makes for the entry: an older `user/client_id` field (whose
/// `client_id` may itself end in a UUID) is not mistaken for one.
fn held(f: &str, json: &str) -> Option<Held> {
    let (_, instance) = f.rsplit_once('/')?;
    let instance = InstanceId::from_uuid(Uuid::try_parse(instance).ok()?);
    let entry: PresenceEntry = serde_json::from_str(json).ok()?;
    (field(entry.user, &entry.client_id, instance) == f).then_some(Held { instance, entry })
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
        instance: InstanceId,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let (data, expiry) = keys(document);
        let f = field(entry.user, &entry.client_id, instance);
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
        instance: InstanceId,
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
            let f = field(entry.user, &entry.client_id, instance);
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
        instance: InstanceId,
        user: UserId,
        client_id: &ClientId,
    ) -> Result<(), PresenceError> {
        let (data, expiry) = keys(document);
        let f = field(user, client_id, instance);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(&data, &f)
            .ignore()
            .zrem(&expiry, &f)
            .ignore();
        self.run::<()>(pipe).await
    }

    async fn list(&self, document: DocumentId) -> Result<Vec<Held>, PresenceError> {
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
        let mut entries: Vec<Held> = live
            .iter()
            .zip(values)
            .filter_map(|(f, v)| held(f, &v?))
            .collect();
        entries.sort_by(|a, b| {
            (a.entry.user, &a.entry.client_id, a.instance.as_uuid()).cmp(&(
                b.entry.user,
                &b.entry.client_id,
                b.instance.as_uuid(),
            ))
        });
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_domain::Version;

    fn entry(client_id: &str) -> PresenceEntry {
        PresenceEntry {
            user: UserId::new(Uuid::new_v4()),
            client_id: ClientId::new(client_id).unwrap(),
            name: None,
            selection: None,
            version: Version::ZERO,
        }
    }

    fn json(entry: &PresenceEntry) -> String {
        serde_json::to_string(entry).unwrap()
    }

    #[test]
    fn a_field_names_its_instance_even_when_the_client_id_has_slashes() {
        let instance = InstanceId::new_v4();
        for client_id in ["tab", "a/b", "/", "a//", "x/4b5c-/"] {
            let e = entry(client_id);
            let f = field(e.user, &e.client_id, instance);
            assert_eq!(
                held(&f, &json(&e)),
                Some(Held { instance, entry: e }),
                "{client_id:?}"
            );
        }
    }

    #[test]
    fn an_old_field_without_an_instance_is_not_listed() {
        let e = entry("tab");
        assert_eq!(held(&format!("{}/tab", e.user), &json(&e)), None);
        // A client_id ending in a UUID looks like an instance: the field
        // does not name the entry it holds, so it is still not listed.
        let uuid = Uuid::new_v4();
        let e = entry(&format!("tab/{uuid}"));
        assert_eq!(held(&format!("{}/tab/{uuid}", e.user), &json(&e)), None);
        let e = entry(&uuid.to_string());
        assert_eq!(held(&format!("{}/{uuid}", e.user), &json(&e)), None);
    }

    #[test]
    fn a_field_that_does_not_match_its_value_is_not_listed() {
        let instance = InstanceId::new_v4();
        let (e, other) = (entry("tab"), entry("other"));
        let f = field(e.user, &e.client_id, instance);
        assert_eq!(held(&f, &json(&other)), None);
        assert_eq!(held(&f, "not json"), None);
        assert_eq!(held(&format!("{}/tab/not-a-uuid", e.user), &json(&e)), None);
    }
}
