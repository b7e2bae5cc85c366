-- Records a running task's progress. ARGV: task id, which token identifies the attempt ('f':
-- the fencing token; 'att': the attempt number, from remote handlers that predate tokens),
-- its value, fraction, message.
-- Returns 1 when written, 0 when the task is no longer RUNNING under that token.
local id, field, value = ARGV[1], ARGV[2], ARGV[3]
if field ~= 'f' and field ~= 'att' then return redis.error_reply('ERR bad token field') end
local key = record_key(id)
if redis.call('EXISTS', key) == 0 then materialize(id, now_ms(), nil, false) end
local r = redis.call('HMGET', key, 'state', field)
if r[1] ~= S_RUNNING or r[2] ~= value then return 0 end
redis.call('HSET', key, 'prog', ARGV[4], 'pmsg', ARGV[5])
notify(id, S_RUNNING)
flush_notifications()
return 1
