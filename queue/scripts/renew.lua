-- The executor's heartbeat for one queue: renews the leases of the tasks it runs, records that
-- it is alive, and tells it which of its tasks were cancelled or lost.
-- A lease is the task's entry in the consumer group's pending list: one XCLAIM of them all by
-- their own consumer, with no minimum idle time, resets their idle time to zero (JUSTID: the
-- delivery counters stay as they are). reclaim.lua takes back entries idle past the lease.
-- ARGV: executor id, host, in-flight count, then pairs of (task id, attempt).
-- Returns {paused (0/1), lost ids, cancelled ids}. A task is lost when it is no longer RUNNING
-- at that attempt (its lease expired and another executor took it).
local executor = ARGV[1]
local now = now_ms()
redis.call('HSET', EXECUTORS, executor, now .. '|' .. ARGV[2] .. '|' .. ARGV[3])
local lost, cancelled, entries = {}, {}, {}
for i = 4, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  local r = redis.call('HMGET', record_key(id), 'state', 'att', 'cancel', 'entry', 'exec')
  if r[1] ~= S_RUNNING or r[2] ~= attempt or r[5] ~= executor then
    lost[#lost + 1] = id
  else
    if r[4] and r[4] ~= '' then entries[#entries + 1] = r[4] end
    if r[3] == '1' then cancelled[#cancelled + 1] = id end
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
