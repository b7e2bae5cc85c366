-- Claims stream entries an executor has just read: each task becomes RUNNING under a lease,
-- its attempt number (the fencing token) goes up by one, and its record is returned.
-- ARGV: executor id, lease (ms), max deliveries, dead ttl (ms), then pairs of
--   (entry id, task id).
-- Returns, per claimed task: id, attempt, type, payload, content type, timeout, max attempts,
-- backoff, headers, traceparent, ms spent waiting since queued. Entries whose task is gone, cancelled or superseded are
-- acknowledged and skipped; a task delivered more than max deliveries times without an
-- outcome is poison and goes DEAD.
local executor = ARGV[1]
local lease = tonumber(ARGV[2])
local max_deliveries = tonumber(ARGV[3])
local dead_ttl = tonumber(ARGV[4])
local now = now_ms()
local out = {}
for i = 5, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local key = record_key(id)
  local r = redis.call('HMGET', key, 'state', 'entry', 'dlv', 'att', 'max')
  if r[1] ~= S_QUEUED or r[2] ~= entry then
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
      local attempt = redis.call('HINCRBY', key, 'att', 1)
      redis.call('HSET', key, 'state', S_RUNNING, 'dlv', deliveries, 'stime', now, 'exec', executor)
      redis.call('ZADD', LEASES, now + lease, id)
      notify(id, S_RUNNING)
      local t = redis.call('HMGET', key, 'type', 'payload', 'ct', 'tmo', 'max', 'bo', 'hdr', 'tp', 'rtime')
      out[#out + 1] = {id, attempt, t[1] or '', t[2] or '', t[3] or '', t[4] or '0', t[5] or '1',
        t[6] or '', t[7] or '', t[8] or '', math.max(0, now - (tonumber(t[9]) or now))}
    end
  end
end
return out
