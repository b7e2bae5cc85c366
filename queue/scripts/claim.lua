-- Claims stream entries an executor has just read: each task becomes RUNNING, its attempt
-- number goes up by one and it gets a new fencing token (`f`, see next_fence: it only ever
-- grows), and its record is returned. The lease is the entry's place in the group's pending
-- list, which XREADGROUP has just given this executor: its idle time is the lease's age
-- (renew.lua resets it and records the holder's lease in LEASES; reclaim.lua takes back
-- entries idle longer than it), so a claim writes no lease of its own.
-- ARGV: executor id, max deliveries (>= 1), dead ttl (ms), the number B of birth entries
-- (entries without an `id` field: the fast path), the B birth entry ids, the number K of
-- their birth seconds (their finished buckets, see common.lua) and the K seconds, then pairs
-- of (entry id, task id) for the other entries.
-- A paused queue claims nothing: the entries go back to the end of the stream as they were,
-- so no task starts once PauseQueue has answered, whatever an executor has heard so far.
-- Returns {paused (0/1), rows, births, now}:
--   births = 1 when every birth entry was claimed as one (none of them has a record or is in
--   its finished bucket, the common case): each is RUNNING at attempt 1 under its birth
--   token, with nothing written, and the executor builds its task from the entry it read (its
--   token from the entry id,
--   its wait from `now`, Redis's clock in ms). The reply carries nothing per birth entry:
--   converting a row into a reply is the largest part of a claim's cost.
--   births = 0 when some birth entry has a record (cancelled, or its record materialized while
--   it waited) or finished (delivered again after the consumer group was recreated): then
--   every entry is claimed as below and has its row, or none.
--   A row per claimed task: id, attempt, spec (the immutable fields, packed; empty for a birth
--   entry, whose spec the executor has just read), max attempts (empty likewise), ms spent
--   waiting since queued, deliveries without an outcome (this one included; more than 1: an
--   earlier delivery ended with its executor gone), fencing token. Entries whose task is gone,
--   cancelled or superseded are acknowledged and skipped; a task delivered more than max
--   deliveries times without an outcome is poison and goes DEAD.
local executor = ARGV[1]
local max_deliveries = tonumber(ARGV[2])
local dead_ttl = tonumber(ARGV[3])
local births = tonumber(ARGV[4]) or 0
local seconds = tonumber(ARGV[5 + births]) or 0
local first_second = 6 + births
local first_pair = first_second + seconds
local now = now_ms()
local now_s = tostring(now)
local out = {}
-- (The executor's lease is recorded in LEASES by its heartbeat, which starts with the executor
-- and repeats every heartbeat interval: not once more per claim call. Until it lands, reclaim
-- judges the consumer by its own lease, and just-claimed entries are not idle anyway.)

-- Every entry read, as (entry id, task id): a birth entry names its task.
local function each_entry(visit)
  for i = 5, 4 + births do visit(ARGV[i], ARGV[i]) end
  for i = first_pair, #ARGV, 2 do visit(ARGV[i], ARGV[i + 1]) end
end

-- One EXISTS of the pause flag and the birth entries' records tells, in the common case (0),
-- that the queue is not paused and no birth entry has a record.
local flag_and_records = {PAUSED}
for i = 5, 4 + births do flag_and_records[#flag_and_records + 1] = record_key(ARGV[i]) end
local found = existing(flag_and_records)
if found > 0 and redis.call('EXISTS', PAUSED) == 1 then
  each_entry(function(entry, id)
    local key = record_key(id)
    if id == entry and redis.call('EXISTS', key) == 0 then materialize(id, now, nil, true) end
    local r = redis.call('HMGET', key, 'state', 'entry')
    if r[1] == S_QUEUED and r[2] == entry then
      drop_entry(entry)
      enqueue(id, key, now)
    end
  end)
  flush_notifications()
  return {1, {}, 0, now}
end

-- The row returned for a claimed task, from the fields of the HMGET below.
local function claimed_row(id, attempt, r, deliveries, fence)
  return {id, attempt, r[7] or '', r[5] or '1', math.max(0, now - (tonumber(r[8]) or now)),
    deliveries, fence}
end

-- Whether any birth entry's task is in a finished bucket: one HMGET per birth second.
local function any_finished()
  for s = first_second, first_pair - 1 do
    for i = 5, 4 + births, 1000 do
      local last = math.min(i + 999, 4 + births)
      local found = redis.call('HMGET', fin_key(ARGV[s]), unpack(ARGV, i, last))
      for _, v in ipairs(found) do
        if v then return true end
      end
    end
  end
  return false
end

-- The fast path: when none of the birth entries has a record (the EXISTS above) or a finished
-- one (one HMGET per birth second), all of them are claimed by the read itself.
local births_claimed = 0
if births > 0 then
  if found == 0 and not any_finished() then
    births_claimed = 1
    for i = 5, 4 + births do changed[#changed + 1] = ARGV[i] end
  end
end

local function claim_entry(entry, id)
  local key = record_key(id)
  local r
  if id == entry and redis.call('EXISTS', key) == 0 then
    r = {}
  else
    r = redis.call('HMGET', key, 'state', 'entry', 'dn', 'att', 'max', 'exec', 'spec', 'rtime',
      'f', 'dlv')
  end
  if not r[1] and id == entry and finished_value(id) then
    -- Finished already (in its finished bucket): delivered again after the consumer group was
    -- recreated. Dropped, like any entry of a finished task.
    drop_entry(entry)
  elseif not r[1] and id == entry then
    -- A birth entry (the fast path): RUNNING from this read on, at attempt 1 under the birth
    -- token, with nothing written. Its spec and options are in the entry the executor read,
    -- so the row leaves them empty.
    local ms = stream_id_parts(entry)
    out[#out + 1] = {id, 1, '', '', math.max(0, now - ms), 1, (birth_fence(entry))}
    notify(id, S_RUNNING)
  elseif r[1] == S_RUNNING and r[2] == entry and r[6] == executor then
    -- This executor's own claim, delivered again: a retried claim whose first answer was lost
    -- (a timeout while Redis was slow), or a re-delivery after the group was recreated. The
    -- same attempt and token are handed back; the executor starts it only if it does not run
    -- it already.
    out[#out + 1] = claimed_row(id, tonumber(r[4]), r, tonumber(r[3]) or 1, r[9])
  elseif r[1] ~= S_QUEUED or r[2] ~= entry then
    -- Gone (expired, purged), cancelled, or a stale duplicate entry: drop it. Never drop the
    -- entry the record points at.
    if r[2] ~= entry then drop_entry(entry) end
  else
    local deliveries = (tonumber(r[10]) or 0) + 1
    if deliveries > max_deliveries then
      drop_entry(entry)
      push_error(id, tonumber(r[4]) or 0, now, 'poison task: delivered ' .. (deliveries - 1) ..
        ' times without an outcome (its handler may crash the executor)')
      bury(id, key, now, dead_ttl)
    else
      -- One HSET for the attempt, token and state; the fields returned came with the HMGET.
      local attempt = (tonumber(r[4]) or 0) + 1
      local fence = next_fence(r[9])
      -- The last allowed delivery counts only once the executor runs the task alone (it
      -- calls alone.lua then): crashing while it waits for that is not this task's fault.
      local counted = deliveries
      if deliveries >= max_deliveries then counted = deliveries - 1 end
      redis.call('HSET', key, 'att', attempt, 'f', fence, 'state', S_RUNNING, 'dlv', counted,
        'dn', deliveries, 'stime', now_s, 'exec', executor)
      notify(id, S_RUNNING)
      out[#out + 1] = claimed_row(id, attempt, r, deliveries, fence)
    end
  end
end
if births_claimed == 1 then
  for i = first_pair, #ARGV, 2 do claim_entry(ARGV[i], ARGV[i + 1]) end
else
  each_entry(claim_entry)
end
flush_notifications()
return {0, out, births_claimed, now}
