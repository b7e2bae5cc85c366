-- Shared prelude of every Tarefa script (prepended by the queue crate at build time).
-- KEYS[1] is the queue's key prefix, e.g. "tarefa:{default}:". Every key a script touches is
-- built from it, so all of them share the queue's hash tag and live in one cluster slot.
local base = KEYS[1]
local STREAM = base .. 'stream'
local GROUP = 'executors'
local SCHEDULED = base .. 'scheduled'
local RETRYING = base .. 'retrying'
local DEAD = base .. 'dead'
local DONE = base .. 'done'
local STATS = base .. 'stats'
local EXECUTORS = base .. 'executors'
local PAUSED = base .. 'paused'

-- Task states, numbered as in tarefa.v1.TaskState.
local S_SCHEDULED, S_QUEUED, S_RUNNING, S_SUCCEEDED = '1', '2', '3', '4'
local S_RETRYING, S_DEAD, S_CANCELLED = '5', '6', '7'

local MAX_ERRORS = 25

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The value of `name` in a flat list of field/value pairs (a stream entry, an XINFO row).
local function entry_field(pairs_list, name)
  for i = 1, #pairs_list, 2 do
    if pairs_list[i] == name then return pairs_list[i + 1] end
  end
  return nil
end

local function record_key(id) return base .. 't:' .. id end
local function errors_key(id) return base .. 'e:' .. id end

-- Task ids changed by this script call, announced to watchers (WatchTask) by one PUBLISH on
-- the queue's events channel when the script ends (`flush_notifications`): one message per
-- call, not per task, so batches stay cheap.
local changed = {}
local function notify(id, state)
  changed[#changed + 1] = id
end
local function flush_notifications()
  if #changed > 0 then
    redis.call('PUBLISH', base .. 'events', table.concat(changed, ' '))
  end
end

-- Counts an event in the queue's totals and in its per-minute bucket (kept two hours).
local function count(field, n, now)
  redis.call('HINCRBY', STATS, field, n)
  local bucket = base .. 'm:' .. math.floor(now / 60000)
  -- The bucket's first count of this field sets its expiry; later ones need not.
  if redis.call('HINCRBY', bucket, field, n) == n then
    redis.call('PEXPIRE', bucket, 7200000)
  end
end

-- Removes a stream entry: acknowledged (leaves the group's pending list) and deleted (leaves
-- the stream), so the stream holds only waiting and running tasks.
local function drop_entry(entry)
  if entry and entry ~= '' then
    redis.call('XACK', STREAM, GROUP, entry)
    redis.call('XDEL', STREAM, entry)
  end
end

-- The consumer group's row of XINFO GROUPS (a flat field/value list), or nil.
local function group_info()
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', STREAM)
  if not ok then return nil end
  for _, g in ipairs(groups) do
    if entry_field(g, 'name') == GROUP then return g end
  end
  return nil
end

-- Entries waiting to be delivered: the group's lag, or, when Redis cannot tell it (an entry
-- not yet delivered was deleted), the stream's length less the pending entries.
local function waiting_count(info, length, pending)
  local lag = info and entry_field(info, 'lag')
  if lag then return tonumber(lag) end
  return math.max(0, length - pending)
end

-- Puts a task at the end of the stream and marks it QUEUED.
local function enqueue(id, key, now)
  local entry = redis.call('XADD', STREAM, '*', 'id', id)
  redis.call('HSET', key, 'state', S_QUEUED, 'entry', entry, 'rtime', now)
  notify(id, S_QUEUED)
  return entry
end

local function push_error(id, attempt, now, message)
  local ekey = errors_key(id)
  redis.call('RPUSH', ekey, attempt .. '|' .. now .. '|' .. message)
  redis.call('LTRIM', ekey, -MAX_ERRORS, -1)
  redis.call('HSET', record_key(id), 'err', message)
end

-- Moves a task to DEAD: kept for inspection and RetryTask for dead_ttl milliseconds.
local function bury(id, key, now, dead_ttl)
  redis.call('HSET', key, 'state', S_DEAD, 'ftime', now)
  redis.call('HDEL', key, 'entry')
  redis.call('ZADD', DEAD, now, id)
  redis.call('ZREMRANGEBYSCORE', DEAD, '-inf', now - dead_ttl)
  redis.call('PEXPIRE', key, dead_ttl)
  redis.call('PEXPIRE', errors_key(id), dead_ttl)
  count('dead', 1, now)
  notify(id, S_DEAD)
end

-- Ends a task in a final state that expires after the task's result TTL.
local function finish(id, key, state, now)
  local ttl = tonumber(redis.call('HGET', key, 'ttl')) or 86400000
  redis.call('HSET', key, 'state', state, 'ftime', now)
  redis.call('HDEL', key, 'entry')
  redis.call('ZADD', DONE, now, id)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - ttl)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', errors_key(id), ttl)
  notify(id, state)
end
