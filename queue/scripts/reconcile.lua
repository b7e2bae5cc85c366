-- One pass of the reconciler: finds state that no other script would ever repair and heals it.
-- (Idle pending entries, the other kind of damage, are reclaim.lua's: it drops those that lead
-- nowhere and queues again those read but never claimed.)
-- Safe on every executor at once (each repair is checked and made atomically here).
-- ARGV: records to scan, executor staleness (ms).
-- Returns counts: {running tasks given a lease, waiting tasks re-indexed, dead consumers
-- removed}.
local scan_count, stale = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local unleased, reindexed, removed = 0, 0, 0

-- 1. Records whose index is missing: a waiting task absent from its sorted set, a RUNNING task
-- with no lease (its entry is not in the group's pending list, so reclaim would never see
-- it), a QUEUED task whose entry is gone. Scanned incrementally by cursor.
local scan_key = base .. 'reconcile:scan'
local scan_cursor = redis.call('GET', scan_key) or '0'
local page = redis.call('SCAN', scan_cursor, 'MATCH', base .. 't:*', 'COUNT', scan_count)
redis.call('SET', scan_key, page[1])
local prefix_len = #base + 3
for _, key in ipairs(page[2]) do
  local id = string.sub(key, prefix_len)
  local r = redis.call('HMGET', key, 'state', 'rtime', 'entry', 'exec')
  if r[1] == S_SCHEDULED and not redis.call('ZSCORE', SCHEDULED, id) then
    redis.call('ZADD', SCHEDULED, tonumber(r[2]) or now, id)
    reindexed = reindexed + 1
  elseif r[1] == S_RETRYING and not redis.call('ZSCORE', RETRYING, id) then
    redis.call('ZADD', RETRYING, tonumber(r[2]) or now, id)
    reindexed = reindexed + 1
  elseif r[1] == S_RUNNING and not (r[3] and r[3] ~= '' and
      #redis.call('XPENDING', STREAM, GROUP, r[3], r[3], 1) > 0) then
    if r[3] and r[3] ~= '' and #redis.call('XRANGE', STREAM, r[3], r[3]) > 0 then
      -- Give it an expired lease: pending again, idle for years, so reclaim takes it back
      -- (counting the attempt as failed) as if its executor had died.
      redis.call('XCLAIM', STREAM, GROUP, r[4] or 'reconciler', 0, r[3], 'IDLE', 100000000000,
        'FORCE', 'JUSTID')
    else
      enqueue(id, key, now)
    end
    unleased = unleased + 1
  elseif r[1] == S_QUEUED then
    local present = r[3] and #redis.call('XRANGE', STREAM, r[3], r[3]) > 0
    if not present then
      enqueue(id, key, now)
      reindexed = reindexed + 1
    end
  end
end

-- 2. Consumers of executors that stopped heartbeating. A consumer is removed only once it
-- holds no pending entry: removing one with pending entries would make them unclaimable.
local ok2, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', STREAM, GROUP)
if ok2 then
  for _, c in ipairs(consumers) do
    local name = entry_field(c, 'name')
    local pending_count, idle = tonumber(entry_field(c, 'pending')), tonumber(entry_field(c, 'idle'))
    if pending_count == 0 and idle and idle > stale then
      local seen = redis.call('HGET', EXECUTORS, name)
      local last_seen = seen and tonumber(string.match(seen, '^(%d+)')) or 0
      if now - last_seen > stale then
        redis.call('XGROUP', 'DELCONSUMER', STREAM, GROUP, name)
        redis.call('HDEL', EXECUTORS, name)
        redis.call('HDEL', LAYOUTS, name)
        removed = removed + 1
      end
    end
  end
end
-- Heartbeats of executors gone for long are dropped even if their consumer never existed.
local beats = redis.call('HGETALL', EXECUTORS)
for i = 1, #beats, 2 do
  local last_seen = tonumber(string.match(beats[i + 1], '^(%d+)')) or 0
  if now - last_seen > stale * 10 then
    redis.call('HDEL', EXECUTORS, beats[i])
    redis.call('HDEL', LAYOUTS, beats[i])
  end
end

flush_notifications()
return {unleased, reindexed, removed}
