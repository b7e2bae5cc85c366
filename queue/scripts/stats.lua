-- Reads one queue's counts for ListQueues. ARGV: none.
-- Returns {waiting (not yet delivered), pending, oldest waiting age (ms), running, scheduled,
-- retrying, dead, paused, stats (flat hash), executors (flat hash), succeeded per minute (60,
-- oldest first), failed per minute (60), ms into the current minute}.
-- The stream may also hold acknowledged entries not yet trimmed (see complete.lua), so the
-- waiting count is the group's lag, not the stream's length.
local now = now_ms()
local length = redis.call('XLEN', STREAM)
local info = group_info()
local pending = info and tonumber(entry_field(info, 'pending')) or 0
local last_delivered = info and entry_field(info, 'last-delivered-id')
local waiting = waiting_count(info, length, pending)
local oldest = 0
if waiting > 0 then
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
return {waiting, pending, oldest, pending, redis.call('ZCARD', SCHEDULED),
  redis.call('ZCARD', RETRYING), redis.call('ZCARD', DEAD), redis.call('EXISTS', PAUSED),
  redis.call('HGETALL', STATS), redis.call('HGETALL', EXECUTORS), succeeded, failed, now % 60000}
