-- Records a running task's progress. ARGV: task id, attempt, fraction, message.
-- Returns 1 when written, 0 when the task is no longer RUNNING at that attempt.
local id, attempt = ARGV[1], ARGV[2]
local key = record_key(id)
local r = redis.call('HMGET', key, 'state', 'att')
if r[1] ~= S_RUNNING or r[2] ~= attempt then return 0 end
redis.call('HSET', key, 'prog', ARGV[3], 'pmsg', ARGV[4])
notify(id, S_RUNNING)
flush_notifications()
return 1
