-- Records the outcomes of a batch of attempts and acknowledges their entries.
-- ARGV: dead ttl (ms), then 5 values per outcome:
--   id, attempt (the fencing token), kind (ok | retry | fail | cancel), result or error,
--   retry delay (ms).
-- An outcome is written only if the task is still RUNNING at that attempt: a late outcome
-- from an executor that lost its lease is rejected. Returns 1 (written) or 0 (rejected) per
-- outcome.
local dead_ttl = tonumber(ARGV[1])
local now = now_ms()
local out = {}
local succeeded, failed = 0, 0
for i = 2, #ARGV, 5 do
  local id, fence, kind, body, delay = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local key = record_key(id)
  local r = redis.call('HMGET', key, 'state', 'att', 'entry', 'max', 'cancel')
  if r[1] ~= S_RUNNING or r[2] ~= fence then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    redis.call('ZREM', LEASES, id)
    drop_entry(r[3])
    redis.call('HSET', key, 'dlv', 0)
    if kind == 'ok' then
      redis.call('HSET', key, 'res', body)
      finish(id, key, S_SUCCEEDED, now)
      succeeded = succeeded + 1
    elseif kind == 'cancel' then
      push_error(id, fence, now, body)
      finish(id, key, S_CANCELLED, now)
    else
      failed = failed + 1
      push_error(id, fence, now, body)
      if kind == 'fail' or tonumber(fence) >= tonumber(r[4]) then
        bury(id, key, now, dead_ttl)
      elseif r[5] == '1' then
        finish(id, key, S_CANCELLED, now)
      else
        local due = now + delay
        redis.call('HSET', key, 'state', S_RETRYING, 'rtime', due)
        redis.call('HDEL', key, 'entry')
        redis.call('ZADD', RETRYING, due, id)
        notify(id, S_RETRYING)
      end
    end
  end
end
if succeeded > 0 then count('succeeded', succeeded, now) end
if failed > 0 then count('failed', failed, now) end
return out
