-- Claims stream entries an executor has just read: each task becomes RUNNING under a lease,
-- its attempt number (the fencing token) goes up by one, and its record is returned.
-- ARGV: executor id, lease (ms), max deliveries, dead ttl (ms), then pairs of
--   (entry id, task id).
-- Returns, per claimed task: id, attempt, type, payload, content type, timeout, max attempts,
-- backoff, headers, traceparent, ms spent waiting since queued, deliveries without an outcome
-- (more than 1: an earlier delivery ended with its executor gone). Entries whose task is gone,
-- cancelled or superseded are acknowledged and skipped; a task delivered more than max
-- deliveries times without an outcome is poison and goes DEAD.
local executor = ARGV[1]
local lease = tonumber(ARGV[2])
local max_deliveries = tonumber(ARGV[3])
local dead_ttl = tonumber(ARGV[4])
local now = now_ms()
local out = {}
-- Leases of the whole batch, written by one ZADD at the end.
local leases = {}

-- The row returned for a claimed task, from the fields of the HMGET below.
local function claimed_row(id, attempt, r, deliveries)
  return {id, attempt, r[7] or '', r[8] or '', r[9] or '', r[10] or '0', r[5] or '1',
    r[11] or '', r[12] or '', r[13] or '', math.max(0, now - (tonumber(r[14]) or now)), deliveries}
end

for i = 5, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local key = record_key(id)
  local r = redis.call('HMGET', key, 'state', 'entry', 'dlv', 'att', 'max', 'exec',
    'type', 'payload', 'ct', 'tmo', 'bo', 'hdr', 'tp', 'rtime')
  if r[1] == S_RUNNING and r[2] == entry and r[6] == executor then
    -- This executor's own claim, retried because the first answer was lost (a timeout while
    -- Redis was slow): hand the same attempt back instead of leaving it leased to nobody.
    redis.call('ZADD', LEASES, now + lease, id)
    out[#out + 1] = claimed_row(id, tonumber(r[4]), r, tonumber(r[3]) or 1)
  elseif r[1] ~= S_QUEUED or r[2] ~= entry then
    -- Gone (expired, purged), cancelled, or a stale duplicate entry: drop it. Never drop the
    -- entry the record points at.
    if r[2] ~= entry then
      redis.call('XACK', STREAM, GROUP, entry)
      redis.call('XDEL', STREAM, entry)
    end
  else
    local deliveries = (tonumber(r[3]) or 0) + 1
    if deliveries > max_deliveries then
      drop_entry(entry)
      push_error(id, tonumber(r[4]) or 0, now, 'poison task: delivered ' .. (deliveries - 1) ..
        ' times without an outcome (its handler may crash the executor)')
      bury(id, key, now, dead_ttl)
    else
      -- One HSET for the attempt and the state; the fields returned came with the HMGET above.
      local attempt = (tonumber(r[4]) or 0) + 1
      -- The last allowed delivery counts only once the executor runs the task alone (it
      -- calls alone.lua then): crashing while it waits for that is not this task's fault.
      local counted = deliveries
      if deliveries >= max_deliveries then counted = deliveries - 1 end
      redis.call('HSET', key, 'att', attempt, 'state', S_RUNNING, 'dlv', counted,
        'stime', now, 'exec', executor)
      leases[#leases + 1] = now + lease
      leases[#leases + 1] = id
      notify(id, S_RUNNING)
      out[#out + 1] = claimed_row(id, attempt, r, deliveries)
    end
  end
end
-- In slices, so a large batch never exceeds Lua's unpack limit.
for i = 1, #leases, 1000 do
  redis.call('ZADD', LEASES, unpack(leases, i, math.min(i + 999, #leases)))
end
flush_notifications()
return out
