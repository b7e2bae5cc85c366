-- Counts a task's last allowed delivery, once its executor runs it alone (see claim.lua).
-- ARGV: task id, fencing token, deliveries. Returns 1 when counted, 0 when the token is stale.
local id, fence = ARGV[1], ARGV[2]
local key = record_key(id)
if redis.call('EXISTS', key) == 0 then materialize(id, now_ms(), nil, false) end
local r = redis.call('HMGET', key, 'state', 'f')
if r[1] ~= S_RUNNING or r[2] ~= fence then return 0 end
redis.call('HSET', key, 'dlv', ARGV[3])
return 1
