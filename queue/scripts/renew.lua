-- The executor's heartbeat for one queue: renews the leases of the tasks it runs, records that
-- it is alive and the lease it holds tasks under, ticks the serving clock, and tells it which
-- of its tasks were cancelled or lost.
-- A lease is the task's entry in the consumer group's pending list: one XCLAIM of them all by
-- their own consumer, with no minimum idle time, resets their idle time to zero (JUSTID: the
-- delivery counters stay as they are). reclaim.lua takes back entries idle past the holder's
-- lease.
-- ARGV: executor id, host, in-flight count, lease (ms), max deliveries, then pairs of (task id,
-- fencing token). A task still without a record (the fast path, see virtual_record) that this
-- executor holds gets one now: it has run a whole heartbeat, so its start time and holder are
-- worth writing down (they would otherwise be lost to this very renewal, which resets the
-- entry's idle time).
-- Returns {paused (0/1), lost (pairs of task id, token), cancelled (pairs of task id, token)}.
-- A task is lost when it is no longer RUNNING under that token on this executor (its lease
-- expired and it was taken back, or Redis was restored from an older snapshot).
local executor = ARGV[1]
local now = now_ms()
serving_since(now)
redis.call('HSET', EXECUTORS, executor, now .. '|' .. ARGV[2] .. '|' .. ARGV[3])
redis.call('HSET', LEASES, executor, ARGV[4])
redis.call('HSET', LAYOUTS, executor, '2')
local max_deliveries = tonumber(ARGV[5])
local lost, cancelled, entries = {}, {}, {}
for i = 6, #ARGV, 2 do
  local id, fence = ARGV[i], ARGV[i + 1]
  local r = redis.call('HMGET', record_key(id), 'state', 'f', 'cancel', 'entry', 'exec')
  if not r[1] and stream_id_parts(id) and birth_fence(id) == fence then
    local p = pending_row(id)
    if p and p[2] == executor and materialize(id, now, max_deliveries, false) then
      r = redis.call('HMGET', record_key(id), 'state', 'f', 'cancel', 'entry', 'exec')
    end
  end
  if r[1] ~= S_RUNNING or r[2] ~= fence or r[5] ~= executor then
    lost[#lost + 1] = id
    lost[#lost + 1] = fence
  else
    if r[4] and r[4] ~= '' then entries[#entries + 1] = r[4] end
    if r[3] == '1' then
      cancelled[#cancelled + 1] = id
      cancelled[#cancelled + 1] = fence
    end
  end
end
-- In slices, so a long list never exceeds Lua's unpack limit.
for i = 1, #entries, 1000 do
  local args = {'XCLAIM', STREAM, GROUP, executor, 0}
  for j = i, math.min(i + 999, #entries) do args[#args + 1] = entries[j] end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return {redis.call('EXISTS', PAUSED), lost, cancelled}
