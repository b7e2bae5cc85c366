-- The executor's heartbeat for one queue: extends the leases of the tasks it runs, records
-- that it is alive, and tells it which of its tasks were cancelled or lost.
-- ARGV: executor id, lease (ms), host, in-flight count, then pairs of (task id, attempt).
-- Returns {paused (0/1), lost ids, cancelled ids}. A task is lost when it is no longer RUNNING
-- at that attempt (its lease expired and another executor took it).
local executor, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('HSET', EXECUTORS, executor, now .. '|' .. ARGV[3] .. '|' .. ARGV[4])
local lost, cancelled = {}, {}
for i = 5, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  local r = redis.call('HMGET', record_key(id), 'state', 'att', 'cancel')
  if r[1] ~= S_RUNNING or r[2] ~= attempt then
    lost[#lost + 1] = id
  else
    redis.call('ZADD', LEASES, 'XX', now + lease, id)
    if r[3] == '1' then cancelled[#cancelled + 1] = id end
  end
end
return {redis.call('EXISTS', PAUSED), lost, cancelled}
