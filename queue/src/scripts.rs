//! The Lua scripts, each prefixed with `scripts/common.lua` (key names, states, helpers).
//! Every state change of a task is one script call, so it is atomic on the Redis side.
//!
//! Scripts that keep running work going (claim, complete, renew, reclaim, …) carry the
//! `allow-oom` flag (Redis 7 shebang): at `maxmemory` under `noeviction` Redis would otherwise
//! refuse them at their first write while letting others through, and leases would lapse
//! while new work is still refused. Only `submit` (new work) is refused under memory pressure,
//! which the scheduler answers as `RESOURCE_EXHAUSTED`.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("../scripts/common.lua"),
            "\n",
            include_str!(concat!("../scripts/", $file))
        ))
    };
    (read_only $file:literal) => {
        Script::new(concat!(
            "#!lua flags=no-writes,allow-oom\n",
            include_str!("../scripts/common.lua"),
            "\n",
            include_str!(concat!("../scripts/", $file))
        ))
    };
    (allow_oom $file:literal) => {
        Script::new(concat!(
            "#!lua flags=allow-oom\n",
            include_str!("../scripts/common.lua"),
            "\n",
            include_str!(concat!("../scripts/", $file))
        ))
    };
}

/// The loaded script objects (each knows its SHA and reloads itself after a Redis restart).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) submit: Script,
    pub(crate) claim: Script,
    pub(crate) complete: Script,
    pub(crate) renew: Script,
    pub(crate) reclaim: Script,
    pub(crate) promote: Script,
    pub(crate) cancel: Script,
    pub(crate) retry: Script,
    pub(crate) progress: Script,
    pub(crate) reconcile: Script,
    pub(crate) stats: Script,
    pub(crate) purge: Script,
    pub(crate) alone: Script,
    pub(crate) release: Script,
    pub(crate) group: Script,
    pub(crate) get: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            submit: script!("submit.lua"),
            claim: script!(allow_oom "claim.lua"),
            complete: script!(allow_oom "complete.lua"),
            renew: script!(allow_oom "renew.lua"),
            reclaim: script!(allow_oom "reclaim.lua"),
            promote: script!(allow_oom "promote.lua"),
            cancel: script!(allow_oom "cancel.lua"),
            retry: script!(allow_oom "retry.lua"),
            progress: script!(allow_oom "progress.lua"),
            reconcile: script!(allow_oom "reconcile.lua"),
            stats: script!("stats.lua"),
            purge: script!(allow_oom "purge.lua"),
            alone: script!(allow_oom "alone.lua"),
            release: script!(allow_oom "release.lua"),
            group: script!(allow_oom "group.lua"),
            get: script!(read_only "get.lua"),
        }
    }
}
