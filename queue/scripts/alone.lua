-- Counts a task's last allowed delivery, once its executor runs it alone (see claim.lua).
-- ARGV: task id, attempt, deliveries. Returns 1 when counted, 0 when the attempt is stale.
local id, attempt = ARGV[1], ARGV[2]
local key = record_key(id)
local r = redis.call('HMGET', key, 'state', 'att')
if r[1] ~= S_RUNNING or r[2] ~= attempt then return 0 end
redis.call('HSET', key, 'dlv', ARGV[3])
return 1
