//! The Lua scripts, as one Redis function library: `scripts/common.lua` (key names, states,
//! helpers) then one function per script. Every state change of a task is one function call,
//! so it is atomic on the Redis side.
//!
//! A library rather than `EVALSHA` scripts: Redis runs the shared part once, when it loads the
//! library, where a script would make its ~40 helpers again on every call (about 36 k of Redis's
//! instructions a call, more than the work of a claim). The library's name and its functions'
//! carry a hash of its text (`tarefa_<hash>_claim`), so versions side by side in one Redis
//! (a rolling upgrade) each call their own functions. It is loaded on first use and again
//! whenever Redis answers that a function is missing (a new or flushed Redis); Redis keeps it
//! in its snapshot and append-only file, and replicas get it with the data.
//!
//! Functions that keep running work going (claim, complete, renew, reclaim, …) carry the
//! `allow-oom` flag: at `maxmemory` under `noeviction` Redis would otherwise refuse them while
//! letting others through, and leases would lapse while new work is still refused. Only
//! `submit` (new work) is refused under memory pressure, which the scheduler answers as
//! `RESOURCE_EXHAUSTED`. Read-only ones (`get`, `stats`) are `no-writes`.

use std::fmt::Write as _;
use std::sync::Arc;

use redis::{FromRedisValue, RedisResult, ToRedisArgs};

/// What Redis may do with a function, as its `flags`.
#[derive(Debug, Clone, Copy)]
enum Flags {
    /// Writes; refused at `maxmemory` (new work).
    Writes,
    /// Writes, even at `maxmemory` (keeps running work going).
    AllowOom,
    /// Reads only, even at `maxmemory`.
    ReadOnly,
}

impl Flags {
    fn lua(self) -> &'static str {
        match self {
            Flags::Writes => "{}",
            Flags::AllowOom => "{'allow-oom'}",
            Flags::ReadOnly => "{'no-writes', 'allow-oom'}",
        }
    }
}

/// The scripts of the library: name, flags, text.
const SCRIPTS: [(&str, Flags, &str); 16] = [
    (
        "submit",
        Flags::Writes,
        include_str!("../scripts/submit.lua"),
    ),
    (
        "claim",
        Flags::AllowOom,
        include_str!("../scripts/claim.lua"),
    ),
    (
        "complete",
        Flags::AllowOom,
        include_str!("../scripts/complete.lua"),
    ),
    (
        "renew",
        Flags::AllowOom,
        include_str!("../scripts/renew.lua"),
    ),
    (
        "reclaim",
        Flags::AllowOom,
        include_str!("../scripts/reclaim.lua"),
    ),
    (
        "promote",
        Flags::AllowOom,
        include_str!("../scripts/promote.lua"),
    ),
    (
        "cancel",
        Flags::AllowOom,
        include_str!("../scripts/cancel.lua"),
    ),
    (
        "retry",
        Flags::AllowOom,
        include_str!("../scripts/retry.lua"),
    ),
    (
        "progress",
        Flags::AllowOom,
        include_str!("../scripts/progress.lua"),
    ),
    (
        "reconcile",
        Flags::AllowOom,
        include_str!("../scripts/reconcile.lua"),
    ),
    (
        "stats",
        Flags::ReadOnly,
        include_str!("../scripts/stats.lua"),
    ),
    (
        "purge",
        Flags::AllowOom,
        include_str!("../scripts/purge.lua"),
    ),
    (
        "alone",
        Flags::AllowOom,
        include_str!("../scripts/alone.lua"),
    ),
    (
        "release",
        Flags::AllowOom,
        include_str!("../scripts/release.lua"),
    ),
    (
        "group",
        Flags::AllowOom,
        include_str!("../scripts/group.lua"),
    ),
    ("get", Flags::ReadOnly, include_str!("../scripts/get.lua")),
];

const COMMON: &str = include_str!("../scripts/common.lua");

/// The library's source and the name every function of it starts with.
#[derive(Debug)]
struct Library {
    prefix: String,
    source: String,
}

impl Library {
    fn new() -> Self {
        // The hash of what the functions do, so that two versions never share a name. (The
        // `redis` crate's script hash: SHA-1, as EVALSHA would name the same text.)
        let mut text = String::from(COMMON);
        for (name, flags, body) in SCRIPTS {
            let _ = write!(text, "\n{name} {flags:?}\n{body}");
        }
        let hash = redis::Script::new(&text).get_hash().to_owned();
        let prefix = format!("tarefa_{}", &hash[..12]);
        let mut source = format!("#!lua name={prefix}\n{COMMON}\n");
        for (name, flags, body) in SCRIPTS {
            // Each script becomes the body of its function: KEYS and ARGV are its arguments,
            // and bind() names the queue's keys first.
            let _ = write!(
                source,
                "redis.register_function{{function_name = '{prefix}_{name}', flags = {}, \
                 callback = function(KEYS, ARGV)\nbind(KEYS)\n{body}\nend}}\n",
                flags.lua()
            );
        }
        Self { prefix, source }
    }
}

/// One function of the library.
#[derive(Debug)]
pub(crate) struct Function {
    name: String,
    library: Arc<Library>,
}

impl Function {
    /// A call of this function, starting with its first key.
    pub(crate) fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut invocation = Invocation {
            function: self,
            keys: Vec::new(),
            args: Vec::new(),
        };
        invocation.key(key);
        invocation
    }
}

/// The keys and arguments of one call of a [`Function`].
pub(crate) struct Invocation<'a> {
    function: &'a Function,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Calls the function (`FCALL`), loading the library first when Redis does not have it.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        con: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<T> {
        let mut call = redis::cmd("FCALL");
        call.arg(&self.function.name)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        match call.query_async(con).await {
            Err(error) if is_missing_function(&error) => {
                load(con, &self.function.library.source).await?;
                call.query_async(con).await
            }
            answer => answer,
        }
    }
}

/// Whether Redis answered that the called function does not exist.
fn is_missing_function(error: &redis::RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|detail| detail.starts_with("Function not found"))
}

/// Loads the library; another process having just loaded the same one is as good.
async fn load(con: &mut impl redis::aio::ConnectionLike, source: &str) -> RedisResult<()> {
    let loaded: RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(source)
        .query_async(con)
        .await;
    match loaded {
        Err(error)
            if error
                .detail()
                .is_some_and(|detail| detail.contains("already exists")) =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// The library's functions.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) submit: Function,
    pub(crate) claim: Function,
    pub(crate) complete: Function,
    pub(crate) renew: Function,
    pub(crate) reclaim: Function,
    pub(crate) promote: Function,
    pub(crate) cancel: Function,
    pub(crate) retry: Function,
    pub(crate) progress: Function,
    pub(crate) reconcile: Function,
    pub(crate) stats: Function,
    pub(crate) purge: Function,
    pub(crate) alone: Function,
    pub(crate) release: Function,
    pub(crate) group: Function,
    pub(crate) get: Function,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let library = Arc::new(Library::new());
        let function = |name: &str| Function {
            name: format!("{}_{name}", library.prefix),
            library: Arc::clone(&library),
        };
        Self {
            submit: function("submit"),
            claim: function("claim"),
            complete: function("complete"),
            renew: function("renew"),
            reclaim: function("reclaim"),
            promote: function("promote"),
            cancel: function("cancel"),
            retry: function("retry"),
            progress: function("progress"),
            reconcile: function("reconcile"),
            stats: function("stats"),
            purge: function("purge"),
            alone: function("alone"),
            release: function("release"),
            group: function("group"),
            get: function("get"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_a_function_of_one_versioned_library() {
        let library = Library::new();
        assert!(
            library
                .source
                .starts_with(&format!("#!lua name={}\n", library.prefix))
        );
        assert_eq!(library.prefix.len(), "tarefa_".len() + 12);
        for (name, _, _) in SCRIPTS {
            assert!(
                library
                    .source
                    .contains(&format!("function_name = '{}_{name}'", library.prefix)),
                "{name}"
            );
        }
        // The same text, the same names: processes of one version share the library.
        assert_eq!(Library::new().prefix, library.prefix);
    }
}
