-- Reads one queue's counts for ListQueues. ARGV: none.
-- Returns {stream length, pending, oldest waiting age (ms), running, scheduled, retrying, dead,
-- paused, stats (flat hash), executors (flat hash), succeeded per minute (60, oldest first),
-- failed per minute (60), ms into the current minute}.
local now = now_ms()
local length = redis.call('XLEN', STREAM)
local pending = 0
local last_delivered = nil
local ok, summary = pcall(redis.call, 'XPENDING', STREAM, GROUP)
if ok then pending = tonumber(summary[1]) or 0 end
local ok2, groups = pcall(redis.call, 'XINFO', 'GROUPS', STREAM)
if ok2 then
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == GROUP then last_delivered = last end
  end
end
local oldest = 0
if length > pending then
  local first
  if last_delivered then
    first = redis.call('XRANGE', STREAM, '(' .. last_delivered, '+', 'COUNT', 1)
  else
    first = redis.call('XRANGE', STREAM, '-', '+', 'COUNT', 1)
  end
  if first[1] then
    local ms = tonumber(string.match(first[1][1], '^(%d+)'))
    oldest = math.max(0, now - ms)
  end
end
local minute = math.floor(now / 60000)
local succeeded, failed = {}, {}
for m = minute - 59, minute do
  local b = redis.call('HMGET', base .. 'm:' .. m, 'succeeded', 'failed')
  succeeded[#succeeded + 1] = tonumber(b[1]) or 0
  failed[#failed + 1] = tonumber(b[2]) or 0
end
return {length, pending, oldest, pending, redis.call('ZCARD', SCHEDULED),
  redis.call('ZCARD', RETRYING), redis.call('ZCARD', DEAD), redis.call('EXISTS', PAUSED),
  redis.call('HGETALL', STATS), redis.call('HGETALL', EXECUTORS), succeeded, failed, now % 60000}
