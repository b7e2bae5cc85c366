-- One pass of the reconciler: finds state that no other script would ever repair and heals it.
-- Safe on every executor at once (each repair is checked and made atomically here).
-- ARGV: min idle (ms) before a pending entry is suspect, records to scan, executor staleness (ms).
-- Returns counts: {orphan entries dropped, running tasks given a lease, stuck deliveries
-- requeued, waiting tasks re-indexed, dead consumers removed}.
local min_idle, scan_count, stale = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local orphans, unleased, stuck, reindexed, removed = 0, 0, 0, 0, 0

local function field(entry_fields, name)
  for i = 1, #entry_fields, 2 do
    if entry_fields[i] == name then return entry_fields[i + 1] end
  end
  return nil
end

-- 1. Entries delivered long ago and never acknowledged. The scan resumes where the last pass
-- stopped, so a long list of legitimately running tasks does not hide the rest.
local cursor_key = base .. 'reconcile:pending'
local from = redis.call('GET', cursor_key) or '-'
local ok, pending = pcall(redis.call, 'XPENDING', STREAM, GROUP, 'IDLE', min_idle, from, '+', 100)
if ok then
  local last = nil
  for _, p in ipairs(pending) do
    local entry = p[1]
    last = entry
    local rows = redis.call('XRANGE', STREAM, entry, entry)
    if #rows == 0 then
      redis.call('XACK', STREAM, GROUP, entry)
      orphans = orphans + 1
    else
      local id = field(rows[1][2], 'id')
      local key = record_key(id or '')
      local r = redis.call('HMGET', key, 'state', 'entry')
      if not id or not r[1] or r[2] ~= entry then
        -- The record is gone or points at another entry: this one leads nowhere.
        drop_entry(entry)
        orphans = orphans + 1
      elseif r[1] == S_RUNNING then
        if not redis.call('ZSCORE', LEASES, id) then
          -- RUNNING with no lease would never be reclaimed: give it an expired lease.
          redis.call('ZADD', LEASES, now, id)
          unleased = unleased + 1
        end
      elseif r[1] == S_QUEUED then
        -- Read by an executor that died before claiming it: queue it again.
        drop_entry(entry)
        enqueue(id, key, now)
        stuck = stuck + 1
      end
    end
  end
  if last and #pending == 100 then
    redis.call('SET', cursor_key, '(' .. last)
  else
    redis.call('DEL', cursor_key)
  end
end

-- 2. Records whose index is missing: a waiting task absent from its sorted set, a RUNNING task
-- with no lease, a QUEUED task whose entry is gone. Scanned incrementally by cursor.
local scan_key = base .. 'reconcile:scan'
local scan_cursor = redis.call('GET', scan_key) or '0'
local page = redis.call('SCAN', scan_cursor, 'MATCH', base .. 't:*', 'COUNT', scan_count)
redis.call('SET', scan_key, page[1])
local prefix_len = #base + 3
for _, key in ipairs(page[2]) do
  local id = string.sub(key, prefix_len)
  local r = redis.call('HMGET', key, 'state', 'rtime', 'entry')
  if r[1] == S_SCHEDULED and not redis.call('ZSCORE', SCHEDULED, id) then
    redis.call('ZADD', SCHEDULED, tonumber(r[2]) or now, id)
    reindexed = reindexed + 1
  elseif r[1] == S_RETRYING and not redis.call('ZSCORE', RETRYING, id) then
    redis.call('ZADD', RETRYING, tonumber(r[2]) or now, id)
    reindexed = reindexed + 1
  elseif r[1] == S_RUNNING and not redis.call('ZSCORE', LEASES, id) then
    redis.call('ZADD', LEASES, now, id)
    unleased = unleased + 1
  elseif r[1] == S_QUEUED then
    local present = r[3] and #redis.call('XRANGE', STREAM, r[3], r[3]) > 0
    if not present then
      enqueue(id, key, now)
      reindexed = reindexed + 1
    end
  end
end

-- 3. Consumers of executors that stopped heartbeating. A consumer is removed only once it
-- holds no pending entry: removing one with pending entries would make them unclaimable.
local ok2, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', STREAM, GROUP)
if ok2 then
  for _, c in ipairs(consumers) do
    local name, pending_count, idle = field(c, 'name'), tonumber(field(c, 'pending')), tonumber(field(c, 'idle'))
    if pending_count == 0 and idle and idle > stale then
      local seen = redis.call('HGET', EXECUTORS, name)
      local last_seen = seen and tonumber(string.match(seen, '^(%d+)')) or 0
      if now - last_seen > stale then
        redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, name)
        redis.call('HDEL', EXECUTORS, name)
        removed = removed + 1
      end
    end
  end
end
-- Heartbeats of executors gone for long are dropped even if their consumer never existed.
local beats = redis.call('HGETALL', EXECUTORS)
for i = 1, #beats, 2 do
  local last_seen = tonumber(string.match(beats[i + 1], '^(%d+)')) or 0
  if now - last_seen > stale * 10 then redis.call('HDEL', EXECUTORS, beats[i]) end
end

flush_notifications()
return {orphans, unleased, stuck, reindexed, removed}
