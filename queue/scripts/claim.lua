-- Claims stream entries an executor has just read: each task becomes RUNNING, its attempt
-- number (the fencing token) goes up by one, and its record is returned. The lease is the
-- entry's place in the group's pending list, which XREADGROUP has just given this executor:
-- its idle time is the lease's age (renew.lua resets it, reclaim.lua takes back entries idle
-- longer than the lease), so a claim writes no lease of its own.
-- ARGV: executor id, max deliveries, dead ttl (ms), then pairs of (entry id, task id).
-- Returns, per claimed task: id, attempt, spec (the immutable fields, packed), max attempts,
-- ms spent waiting since queued, deliveries without an outcome (more than 1: an earlier
-- delivery ended with its executor gone). Entries whose task is gone,
-- cancelled or superseded are acknowledged and skipped; a task delivered more than max
-- deliveries times without an outcome is poison and goes DEAD.
local executor = ARGV[1]
local max_deliveries = tonumber(ARGV[2])
local dead_ttl = tonumber(ARGV[3])
local now = now_ms()
local now_s = tostring(now)
local out = {}

-- The row returned for a claimed task, from the fields of the HMGET below.
local function claimed_row(id, attempt, r, deliveries)
  return {id, attempt, r[7] or '', r[5] or '1', math.max(0, now - (tonumber(r[8]) or now)),
    deliveries}
end

for i = 4, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local key = record_key(id)
  local r = redis.call('HMGET', key, 'state', 'entry', 'dlv', 'att', 'max', 'exec', 'spec',
    'rtime')
  if r[1] == S_RUNNING and r[2] == entry and r[6] == executor then
    -- This executor's own claim, retried because the first answer was lost (a timeout while
    -- Redis was slow): hand the same attempt back instead of leaving it held by nobody.
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
        'stime', now_s, 'exec', executor)
      notify(id, S_RUNNING)
      out[#out + 1] = claimed_row(id, attempt, r, deliveries)
    end
  end
end
flush_notifications()
return out
