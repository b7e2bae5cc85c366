-- Moves due SCHEDULED and RETRYING tasks into the stream. Safe to run on every executor at
-- once: a task is promoted by the one caller whose ZREM removed it.
-- ARGV: limit per set.
-- Returns {promoted count, ms until the next task is due (-1 when none waits)}.
local limit = tonumber(ARGV[1])
local now = now_ms()
local n = 0
local next_due = -1
for _, set in ipairs({SCHEDULED, RETRYING}) do
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    if redis.call('ZREM', set, id) == 1 then
      local key = record_key(id)
      local state = redis.call('HGET', key, 'state')
      if state == S_SCHEDULED or state == S_RETRYING then
        enqueue(id, key, now)
        n = n + 1
      end
    end
  end
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(0, tonumber(first[2]) - now)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
flush_notifications()
return {n, next_due}
