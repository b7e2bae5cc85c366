-- Takes back tasks whose lease expired (their executor died or stalled). A lease is the task's
-- entry in the consumer group's pending list; it expires when the entry has been idle (not
-- renewed by its holder's heartbeat) longer than the holder's own lease (LEASES, written by
-- its claims and heartbeats; the caller's lease only for a consumer that never recorded one),
-- counting only time inside the current serving period (serving_since): after Redis was down,
-- frozen or restarted, every holder gets a whole lease to renew before anything is taken.
-- Each task taken back has its attempt counted as failed; it is queued again, or DEAD when it
-- has no attempts left or was delivered max deliveries times without an outcome (a poison
-- task). An idle entry that was read but never claimed (its executor died in between) is
-- queued again as it was; one that leads to no task is dropped. Safe to run on every executor
-- at once: the script is atomic and drops each entry it handles.
-- ARGV: fallback lease (ms), max deliveries, dead ttl (ms), limit.
-- Returns {running tasks taken back, unclaimed entries queued again, entries dropped}.
local fallback_lease, max_deliveries = tonumber(ARGV[1]), tonumber(ARGV[2])
local dead_ttl, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local up, backwards = serving_since(now)
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', STREAM, GROUP)
if not ok then return {0, 0, 0} end
local expired = {}
for _, c in ipairs(consumers) do
  local name = entry_field(c, 'name')
  local pending = tonumber(entry_field(c, 'pending')) or 0
  if pending > 0 and #expired < limit then
    if backwards then
      -- Redis's clock went back: idle times measured from the old clock would keep the leases
      -- of dead holders from expiring until it catches up. Every lease restarts from now.
      local rows = redis.call('XPENDING', STREAM, GROUP, '-', '+', limit, name)
      local args = {'XCLAIM', STREAM, GROUP, name, 0}
      for _, p in ipairs(rows) do args[#args + 1] = p[1] end
      args[#args + 1] = 'IDLE'
      args[#args + 1] = 0
      args[#args + 1] = 'JUSTID'
      if #rows > 0 then redis.call(unpack(args)) end
    else
      local lease = tonumber(redis.call('HGET', LEASES, name)) or fallback_lease
      if now - up >= lease then
        local rows = redis.call('XPENDING', STREAM, GROUP, 'IDLE', lease, '-', '+',
          limit - #expired, name)
        for _, p in ipairs(rows) do expired[#expired + 1] = p end
      end
    end
  end
end
local n, requeued, dropped = 0, 0, 0
for _, p in ipairs(expired) do
  local entry = p[1]
  local rows = redis.call('XRANGE', STREAM, entry, entry)
  local id = nil
  if #rows > 0 then id = entry_field(rows[1][2], 'id') or entry end
  local key = record_key(id or '')
  -- A birth entry's task has no record yet (the fast path): written now, RUNNING under the
  -- holder named by the pending list, so it is handled like any other.
  if id == entry and redis.call('EXISTS', key) == 0 then
    materialize(id, now, max_deliveries, false)
  end
  local r = redis.call('HMGET', key, 'state', 'att', 'max', 'dlv', 'entry', 'cancel', 'exec')
  -- Every idle entry leaves the pending list and the stream; what follows decides the task's fate.
  drop_entry(entry)
  if not id or r[5] ~= entry or (r[1] ~= S_QUEUED and r[1] ~= S_RUNNING) then
    -- Leads to no task, or to a task that moved on to another entry or state.
    dropped = dropped + 1
  elseif r[1] == S_QUEUED then
    enqueue(id, key, now)
    requeued = requeued + 1
  else
    n = n + 1
    local attempt = r[2] or '?'
    push_error(id, attempt, now, 'lease expired: executor ' .. (r[7] or '?') ..
      ' stopped renewing it (attempt ' .. attempt .. ')')
    count('failed', 1, now)
    if r[6] == '1' then
      finish(id, key, S_CANCELLED, now)
    elseif not tonumber(r[2]) or not tonumber(r[3]) then
      push_error(id, attempt, now, 'damaged task record: attempt ' .. tostring(r[2]) ..
        ', max attempts ' .. tostring(r[3]))
      bury(id, key, now, dead_ttl)
    elseif (tonumber(r[4]) or 0) >= max_deliveries then
      push_error(id, attempt, now, 'poison task: delivered ' .. r[4] ..
        ' times without an outcome (its handler may crash the executor)')
      bury(id, key, now, dead_ttl)
    elseif tonumber(r[2]) >= tonumber(r[3]) then
      bury(id, key, now, dead_ttl)
    else
      enqueue(id, key, now)
    end
  end
end
flush_notifications()
return {n, requeued, dropped}
