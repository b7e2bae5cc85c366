//! The Lua scripts, each prefixed with `scripts/common.lua` (key names, states, helpers).
//! Every state change of a task is one script call, so it is atomic on the Redis side.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
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
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            submit: script!("submit.lua"),
            claim: script!("claim.lua"),
            complete: script!("complete.lua"),
            renew: script!("renew.lua"),
            reclaim: script!("reclaim.lua"),
            promote: script!("promote.lua"),
            cancel: script!("cancel.lua"),
            retry: script!("retry.lua"),
            progress: script!("progress.lua"),
            reconcile: script!("reconcile.lua"),
            stats: script!("stats.lua"),
            purge: script!("purge.lua"),
            alone: script!("alone.lua"),
        }
    }
}
