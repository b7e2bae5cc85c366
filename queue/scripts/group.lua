-- Creates the queue's stream and consumer group if missing. The group starts at the stream's
-- beginning, so tasks submitted before any executor existed are not skipped. A script (flagged
-- allow-oom) rather than a plain XGROUP CREATE, which Redis refuses at maxmemory: an executor
-- must be able to start and finish running work while new work is refused.
-- ARGV: none. Returns 1 when created, 0 when it existed.
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', STREAM, GROUP, '0', 'MKSTREAM')
if ok then return 1 end
local message = type(err) == 'table' and err.err or tostring(err)
if string.find(message, 'BUSYGROUP', 1, true) then return 0 end
return redis.error_reply(message)
