-- Takes back tasks whose lease expired (their executor died or stalled): each one's attempt
-- counts as failed; it is queued again, or DEAD when it has no attempts left or was
-- delivered max deliveries times without an outcome (a poison task). Safe to run on every
-- executor at once: a lease is removed by exactly one caller.
-- ARGV: max deliveries, dead ttl (ms), limit.
-- Returns the number of tasks taken back.
local max_deliveries, dead_ttl, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, limit)
local n = 0
for _, id in ipairs(expired) do
  if redis.call('ZREM', LEASES, id) == 1 then
    local key = record_key(id)
    local r = redis.call('HMGET', key, 'state', 'att', 'max', 'dlv', 'entry', 'cancel', 'exec')
    if r[1] == S_RUNNING then
      n = n + 1
      drop_entry(r[5])
      push_error(id, r[2], now, 'lease expired: executor ' .. (r[7] or '?') ..
        ' stopped renewing it (attempt ' .. r[2] .. ')')
      count('failed', 1, now)
      if r[6] == '1' then
        finish(id, key, S_CANCELLED, now)
      elseif (tonumber(r[4]) or 0) >= max_deliveries then
        push_error(id, r[2], now, 'poison task: delivered ' .. r[4] ..
          ' times without an outcome (its handler may crash the executor)')
        bury(id, key, now, dead_ttl)
      elseif tonumber(r[2]) >= tonumber(r[3]) then
        bury(id, key, now, dead_ttl)
      else
        enqueue(id, key, now)
      end
    end
  end
end
flush_notifications()
return n
