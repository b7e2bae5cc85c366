//! Handler discovery in Redis: a handler process announces the task types it serves and its
//! address, and renews that announcement as a heartbeat; executors read the live ones.
//!
//! Two keys under one hash tag (`{ns}:{handlers}:…`, one cluster slot):
//! - `live`: sorted set of address -> expiry (Unix ms by Redis's `TIME`, so clocks of handler
//!   hosts do not matter);
//! - `info`: hash of address -> the packed announcement ([`pack`]).
//!
//! An address is announced by one handler at a time: announcing it again (a restarted process)
//! replaces the record. Lapsed announcements are filtered out on read and deleted by the next
//! announce. The scripts live here rather than in `scripts/`: they touch no task state.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::broker::Broker;
use crate::keys::{HANDLERS_INFO, HANDLERS_LIVE};
use crate::{Error, Result};

/// Version tag of the packed announcement, its first line.
const RECORD_VERSION: &str = "1";
/// Separates the packed announcement's lines.
const RECORD_LINES: char = '\n';
/// Separates the items of a list line (task types, queues).
const RECORD_ITEMS: char = ',';

/// Announces (or renews) one handler. KEYS: live, info. ARGV: address, packed record, ttl ms.
/// Deletes lapsed announcements first. Replies the new expiry (Unix ms).
const ANNOUNCE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, address in ipairs(lapsed) do
  redis.call('HDEL', KEYS[2], address)
end
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return expires
";

/// Withdraws an announcement if `handler_id` still owns it. KEYS: live, info. ARGV: address,
/// the `version\nhandler_id\n` prefix of its record. Replies 1 if withdrawn, else 0.
const WITHDRAW_LUA: &str = r"
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record or string.sub(record, 1, string.len(ARGV[2])) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
";

/// The live announcements. KEYS: live, info. Replies `{address, expiry, record, …}` for every
/// address whose expiry is after Redis's now.
const LIVE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local record = redis.call('HGET', KEYS[2], live[i])
  if record then
    out[#out + 1] = live[i]
    out[#out + 1] = live[i + 1]
    out[#out + 1] = record
  end
end
return out
";

// Each hashed once per process; `invoke_async` loads a script again after a Redis restart.
static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| Script::new(ANNOUNCE_LUA));
static WITHDRAW: LazyLock<Script> = LazyLock::new(|| Script::new(WITHDRAW_LUA));
static LIVE: LazyLock<Script> = LazyLock::new(|| Script::new(LIVE_LUA));

/// What a handler process says about itself. Values are validated by the caller (the
/// scheduler's RPC boundary): none may contain a newline, and list items no comma.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerAnnouncement {
    /// Names the process; only it may withdraw the announcement.
    pub handler_id: String,
    /// Where executors reach it, `grpc://HOST:PORT`.
    pub address: String,
    /// The task types it serves.
    pub task_types: Vec<String>,
    /// The queues its tasks are submitted to (informative).
    pub queues: Vec<String>,
}

/// A live announcement and when it lapses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedHandler {
    /// What the handler announced.
    pub announcement: HandlerAnnouncement,
    /// When it lapses unless renewed (Unix ms, Redis's clock).
    pub expires_at_ms: u64,
}

/// Packs an announcement (without its address, the hash field) as
/// `1\n<handler_id>\n<type,type…>\n<queue,queue…>`.
fn pack(announcement: &HandlerAnnouncement) -> String {
    let items = |list: &[String]| list.join(&RECORD_ITEMS.to_string());
    [
        RECORD_VERSION.to_owned(),
        announcement.handler_id.clone(),
        items(&announcement.task_types),
        items(&announcement.queues),
    ]
    .join(&RECORD_LINES.to_string())
}

/// The owner prefix of a packed record, which a withdraw must match.
fn owner_prefix(handler_id: &str) -> String {
    format!("{RECORD_VERSION}{RECORD_LINES}{handler_id}{RECORD_LINES}")
}

/// Unpacks what [`pack`] wrote; a damaged record is [`Error::Corrupt`].
fn unpack(address: &str, record: &str) -> Result<HandlerAnnouncement> {
    let corrupt = || Error::Corrupt(format!("handler announcement of {address}: {record:?}"));
    let lines: Vec<&str> = record.split(RECORD_LINES).collect();
    let [version, handler_id, task_types, queues] = lines[..] else {
        return Err(corrupt());
    };
    if version != RECORD_VERSION || handler_id.is_empty() || task_types.is_empty() {
        return Err(corrupt());
    }
    let items = |line: &str| -> Vec<String> {
        line.split(RECORD_ITEMS)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(HandlerAnnouncement {
        handler_id: handler_id.to_owned(),
        address: address.to_owned(),
        task_types: items(task_types),
        queues: items(queues),
    })
}

impl Broker {
    /// Announces (or renews) `announcement` for `ttl`, and returns when it lapses (Unix ms by
    /// Redis's clock).
    pub async fn announce_handler(
        &self,
        announcement: &HandlerAnnouncement,
        ttl: Duration,
    ) -> Result<u64> {
        let mut con = self.con.clone();
        let mut invocation = ANNOUNCE.key(self.keys.handlers_key(HANDLERS_LIVE));
        invocation
            .key(self.keys.handlers_key(HANDLERS_INFO))
            .arg(&announcement.address)
            .arg(pack(announcement))
            .arg(ttl.as_millis() as u64);
        self.timed(invocation.invoke_async(&mut con)).await
    }

    /// Withdraws the announcement at `address` if `handler_id` made it; false otherwise.
    pub async fn withdraw_handler(&self, handler_id: &str, address: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let mut invocation = WITHDRAW.key(self.keys.handlers_key(HANDLERS_LIVE));
        invocation
            .key(self.keys.handlers_key(HANDLERS_INFO))
            .arg(address)
            .arg(owner_prefix(handler_id));
        let withdrawn: u8 = self.timed(invocation.invoke_async(&mut con)).await?;
        Ok(withdrawn == 1)
    }

    /// Every live announcement, by address. A damaged record is skipped with a warning, so one
    /// bad entry cannot hide the others from executors.
    pub async fn live_handlers(&self) -> Result<Vec<AnnouncedHandler>> {
        let mut con = self.con.clone();
        let mut invocation = LIVE.key(self.keys.handlers_key(HANDLERS_LIVE));
        invocation.key(self.keys.handlers_key(HANDLERS_INFO));
        let flat: Vec<String> = self.timed(invocation.invoke_async(&mut con)).await?;
        let mut handlers = Vec::with_capacity(flat.len() / 3);
        for row in flat.chunks(3) {
            let [address, expiry, record] = row else {
                return Err(Error::Corrupt(format!(
                    "live handlers reply of {} items",
                    flat.len()
                )));
            };
            let expires_at_ms = expiry
                .parse::<f64>()
                .map_err(|_| Error::Corrupt(format!("expiry {expiry:?} of handler {address}")))?
                as u64;
            match unpack(address, record) {
                Ok(announcement) => handlers.push(AnnouncedHandler {
                    announcement,
                    expires_at_ms,
                }),
                Err(error) => tracing::warn!(%error, "skipping a damaged handler announcement"),
            }
        }
        Ok(handlers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement() -> HandlerAnnouncement {
        HandlerAnnouncement {
            handler_id: "web-1-abcd".to_owned(),
            address: "grpc://10.0.0.7:50061".to_owned(),
            task_types: vec!["mail.send".to_owned(), "resize".to_owned()],
            queues: vec!["mail".to_owned()],
        }
    }

    #[test]
    fn a_packed_announcement_unpacks_to_itself() {
        let a = announcement();
        assert_eq!(unpack(&a.address, &pack(&a)).ok(), Some(a.clone()));
        let none = HandlerAnnouncement {
            queues: Vec::new(),
            ..a
        };
        assert_eq!(unpack(&none.address, &pack(&none)).ok(), Some(none.clone()));
    }

    #[test]
    fn the_owner_prefix_matches_only_its_own_record() {
        let a = announcement();
        assert!(pack(&a).starts_with(&owner_prefix("web-1-abcd")));
        assert!(!pack(&a).starts_with(&owner_prefix("web-1")));
    }

    #[test]
    fn damaged_records_are_corrupt() {
        for record in ["", "2\nid\nt\nq", "1\nid\nt", "1\n\nt\nq", "1\nid\n\nq"] {
            assert!(
                matches!(unpack("grpc://x:1", record), Err(Error::Corrupt(_))),
                "{record:?}"
            );
        }
    }
}
