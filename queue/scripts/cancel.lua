-- Cancels a task. ARGV: task id.
-- Returns the state before the call ('' when the task does not exist). A waiting task is
-- CANCELLED at once; a RUNNING one is flagged, and its executor sees the flag at its next
-- heartbeat and stops the handler.
local id = ARGV[1]
local key = record_key(id)
local now = now_ms()
if redis.call('EXISTS', key) == 0 then materialize(id, now, nil, false) end
local r = redis.call('HMGET', key, 'state', 'entry')
local state = r[1]
-- A task in its finished bucket succeeded (it has no record to change).
if not state then return finished_value(id) and S_SUCCEEDED or '' end
if state == S_SCHEDULED or state == S_RETRYING or state == S_QUEUED then
  redis.call('ZREM', SCHEDULED, id)
  redis.call('ZREM', RETRYING, id)
  drop_entry(r[2])
  finish(id, key, S_CANCELLED, now)
elseif state == S_RUNNING then
  redis.call('HSET', key, 'cancel', '1')
  notify(id, S_RUNNING)
end
flush_notifications()
return state
