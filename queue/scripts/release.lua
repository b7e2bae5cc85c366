-- Hands running attempts back without charging them: the task is queued again with the
-- attempt number and delivery count it had before this claim (the fencing token stays, so
-- the released attempt's outcome, should it still arrive, is rejected).
-- kind 'shutdown': the executor is stopping and its grace period ran out; the task is queued
--   again at once.
-- kind 'nohandler': this executor has no handler for the task's type (a mixed fleet mid-deploy);
--   the task waits in RETRYING, 0.5 s doubling to 30 s, for an executor that has one, and goes
--   DEAD after `limit` such bounces.
-- ARGV: executor id, kind, limit, dead ttl (ms), then triples of (task id, token, message).
-- Returns, per task, 1 when released, 0 when this executor no longer held it under that token.
local executor, kind, limit, dead_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
for i = 5, #ARGV, 3 do
  local id, fence, message = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = record_key(id)
  if redis.call('EXISTS', key) == 0 then materialize(id, now, nil, false) end
  local r = redis.call('HMGET', key, 'state', 'f', 'exec', 'entry', 'att', 'dn', 'nh')
  if r[1] ~= S_RUNNING or r[2] ~= fence or r[3] ~= executor then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    drop_entry(r[4])
    local attempt = math.max(0, (tonumber(r[5]) or 1) - 1)
    local deliveries = math.max(0, (tonumber(r[6]) or 1) - 1)
    redis.call('HSET', key, 'att', attempt, 'dlv', deliveries)
    if kind == 'nohandler' then
      local bounces = (tonumber(r[7]) or 0) + 1
      redis.call('HSET', key, 'nh', bounces)
      if bounces == 1 or bounces > limit then push_error(id, attempt + 1, now, message) end
      if bounces > limit then
        bury(id, key, now, dead_ttl)
      else
        local due = now + math.min(500 * 2 ^ (bounces - 1), 30000)
        redis.call('HSET', key, 'state', S_RETRYING, 'rtime', due)
        redis.call('HDEL', key, 'entry')
        redis.call('ZADD', RETRYING, due, id)
        notify(id, S_RETRYING)
      end
    else
      push_error(id, attempt + 1, now, message)
      enqueue(id, key, now)
    end
  end
end
flush_notifications()
return out
