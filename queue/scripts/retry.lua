-- Requeues a DEAD or CANCELLED task from attempt 1 (the attempt number shown to users starts
-- again; the fencing token 'f' does not, so no outcome of an earlier run can be recorded). ARGV: task id.
-- Returns the state before the call ('' when the task does not exist).
local id = ARGV[1]
local key = record_key(id)
local state = redis.call('HGET', key, 'state')
-- A task in its finished bucket succeeded (and is not retried).
if not state then return finished_value(id) and S_SUCCEEDED or '' end
if state == S_DEAD or state == S_CANCELLED then
  local now = now_ms()
  redis.call('ZREM', DEAD, id)
  redis.call('ZREM', DONE, id)
  redis.call('HSET', key, 'att', 0, 'dlv', 0)
  redis.call('HDEL', key, 'ftime', 'cancel', 'res', 'stime', 'exec', 'prog', 'pmsg', 'dn', 'nh')
  redis.call('PERSIST', key)
  redis.call('PERSIST', errors_key(id))
  enqueue(id, key, now)
end
flush_notifications()
return state
