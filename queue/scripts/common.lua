-- Shared part of Tarefa's function library (queue/src/scripts.rs puts it before the scripts,
-- each of which becomes one function). It is run once, when Redis loads the library: its
-- helpers are made once, not on every call. KEYS[1] of every call is the queue's key prefix,
-- e.g. "tarefa:{default}:"; bind() names the queue's keys from it at the start of each call.
-- Every key a script touches is built from it, so all of them share the queue's hash tag and
-- live in one cluster slot.
local base, STREAM, SCHEDULED, RETRYING, DEAD, DONE, STATS, EXECUTORS
local GROUP = 'executors'
-- LAYOUTS: executor -> the task layout it reads ('2': birth entries), written by its
-- heartbeat. An executor of an earlier version has no field here (see queue/src/submit.rs).
-- LEASES: consumer -> lease (ms) it holds its tasks under: reclaim judges a holder by its own
-- terms. CLOCK, the serving clock: 'tick' (the last time a lease script ran) and 'up' (when
-- the current serving period began). See serving_since().
local LAYOUTS, PAUSED, LEASES, CLOCK
-- What one call keeps: the tasks whose state it changed (see notify) and the clock its new
-- fencing tokens start from (see next_fence). bind() clears both.
local changed, fence_clock_us
-- Key prefix -> the queue's key names, made once per queue.
local key_names = {}

-- Names the keys of this call's queue and clears what the previous call kept.
local function bind(keys)
  base = keys[1]
  local k = key_names[base]
  if not k then
    k = {base .. 'stream', base .. 'scheduled', base .. 'retrying', base .. 'dead',
      base .. 'done', base .. 'stats', base .. 'executors', base .. 'layouts', base .. 'paused',
      base .. 'leases', base .. 'clock'}
    key_names[base] = k
  end
  STREAM, SCHEDULED, RETRYING, DEAD, DONE, STATS, EXECUTORS = k[1], k[2], k[3], k[4], k[5],
    k[6], k[7]
  LAYOUTS, PAUSED, LEASES, CLOCK = k[8], k[9], k[10], k[11]
  changed, fence_clock_us = {}, nil
end

-- Task states, numbered as in tarefa.v1.TaskState.
local S_SCHEDULED, S_QUEUED, S_RUNNING, S_SUCCEEDED = '1', '2', '3', '4'
local S_RETRYING, S_DEAD, S_CANCELLED = '5', '6', '7'

local MAX_ERRORS = 25

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A new fencing token for a task whose last one was `previous`: larger than every token the
-- task ever had, even across RetryTask (which resets the attempt number shown to users) and a
-- restore of Redis from an older snapshot (the token is at least Redis's clock in
-- microseconds, so one issued after the restore exceeds those issued before it).
-- Redis's clock is read once per script call (a batch of claims shares it: tokens need only be
-- unique per task).
local function next_fence(previous)
  if not fence_clock_us then
    local t = redis.call('TIME')
    fence_clock_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local now_us = fence_clock_us
  local p = tonumber(previous) or 0
  if p + 1 > now_us then now_us = p + 1 end
  return string.format('%d', now_us)
end

-- Longest gap between two ticks of the serving clock that is still one serving period. Live
-- executors tick it at every heartbeat (at most every 500 ms) and reclaim pass; a longer gap
-- means Redis was down, frozen or restarted, or its clock jumped.
local OUTAGE_GAP_MS = 1500

-- Ticks the queue's serving clock and returns when the current serving period began (Redis
-- time, ms), and whether the clock went backwards since the last tick. A lease is never
-- judged expired before it has lasted a whole lease inside the current period: time that Redis
-- was not serving does not count against a live holder, who could not renew.
local function serving_since(now)
  local c = redis.call('HMGET', CLOCK, 'tick', 'up')
  local tick, up = tonumber(c[1]), tonumber(c[2])
  local backwards = tick ~= nil and now < tick
  if tick == nil or up == nil or backwards or now - tick > OUTAGE_GAP_MS then up = now end
  redis.call('HSET', CLOCK, 'tick', now, 'up', up)
  return up, backwards
end

-- The value of `name` in a flat list of field/value pairs (a stream entry, an XINFO row).
local function entry_field(pairs_list, name)
  for i = 1, #pairs_list, 2 do
    if pairs_list[i] == name then return pairs_list[i + 1] end
  end
  return nil
end

-- Appends `name`, `value` to a flat field/value list when there is a value (an optional field:
-- priority, idempotency key).
local function put_field(list, name, value)
  if value and value ~= '' then
    list[#list + 1] = name
    list[#list + 1] = value
  end
end

-- How many of `keys` exist: one EXISTS per slice of 1000 (Lua's unpack limit is ~8000).
local function existing(keys)
  local n = 0
  for i = 1, #keys, 1000 do
    n = n + redis.call('EXISTS', unpack(keys, i, math.min(i + 999, #keys)))
  end
  return n
end

local function record_key(id) return base .. 't:' .. id end
local function errors_key(id) return base .. 'e:' .. id end

-- Finished buckets: a task born in the stream (the fast path) that succeeds at its first
-- attempt gets no record of its own. Its record, packed (queue/src/record.rs, `Finished`), is
-- a field of the hash of the second it was born in (its id's ms / 1000), which expires with
-- its longest-kept task: one HSET and one PEXPIRE per batch instead of two commands and a
-- key per task.
local function fin_key(second) return base .. 'fin:' .. second end

-- The packed record of an entry-named task in its finished bucket, or nil.
local function finished_value(id)
  local ms = string.match(id, '^0*(%d+)%-%d+$')
  if not ms then return nil end
  local second = '0'
  if #ms > 3 then second = string.sub(ms, 1, -4) end
  return redis.call('HGET', fin_key(second), id) or nil
end

-- Whether `id` is in its finished bucket with the outcome `packed` (the value less its
-- `<ftime>,` prefix): a write of that outcome is being retried.
local function finished_as(id, packed)
  local v = finished_value(id)
  if not v then return false end
  local comma = string.find(v, ',', 1, true)
  return comma ~= nil and string.sub(v, comma + 1) == packed
end

-- Task ids changed by this script call, announced to watchers (WatchTask) by one PUBLISH on
-- the queue's events channel when the script ends (`flush_notifications`): one message per
-- call, not per task, so batches stay cheap.
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

-- Ends a task in a final state that expires after the task's result TTL. DONE lists it until
-- then: its score is when it expires, so one trim up to now drops exactly the expired.
local function finish(id, key, state, now)
  local ttl = tonumber(redis.call('HGET', key, 'ttl')) or 86400000
  redis.call('HSET', key, 'state', state, 'ftime', now)
  redis.call('HDEL', key, 'entry')
  redis.call('ZADD', DONE, now + ttl, id)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', errors_key(id), ttl)
  notify(id, state)
end

-- The stream-native fast path. A task submitted to run now has no record: its stream entry
-- carries it (field 's', the packed spec, and its options 'max', 'ttl', 'prio', 'idem'), and
-- its id is the entry's id (a "birth entry", with no 'id' field). While it waits it is QUEUED
-- and while its entry is in the group's pending list it is RUNNING, at attempt 1 under the
-- birth token; nothing is written until its outcome. Anything else that happens to it first
-- (a cancel, a release, a progress report, a heartbeat, its lease running out, a pause)
-- materializes its record from the entry, and from then on it is an ordinary recorded task.

-- The (ms, seq) numbers of a stream id, or nil when `id` is not one.
local function stream_id_parts(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end

-- The fencing token of a birth entry's first attempt: its id in microseconds-ish
-- (ms * 1000 + min(seq, 999)): a value any later token (next_fence, from Redis's clock in
-- microseconds) exceeds. Built with string operations (no number parsing or formatting, which
-- cost more in Lua), equal to the executor's `birth_fence` (queue/src/consumer.rs). Also
-- returns the entry's ms part. `entry` must be a stream id.
local function birth_fence(entry)
  local ms, seq = string.match(entry, '^0*(%d+)%-0*(%d+)$')
  if #seq > 3 then
    seq = '999'
  elseif #seq < 3 then
    seq = string.rep('0', 3 - #seq) .. seq
  end
  if ms == '0' then return string.format('%d', tonumber(seq)), ms end
  return ms .. seq, ms
end

-- The pending row {entry, consumer, idle ms, deliveries} of `entry`, or nil (also when no
-- executor has created the group yet).
local function pending_row(entry)
  local ok, p = pcall(redis.call, 'XPENDING', STREAM, GROUP, entry, entry, 1)
  if not ok then return nil end
  return p[1]
end

-- Whether `entry` was delivered to the group (so, when no longer pending, acknowledged).
local function delivered(entry)
  local info = group_info()
  local last = info and entry_field(info, 'last-delivered-id')
  if not last then return false end
  local ms, seq = stream_id_parts(entry)
  local lms, lseq = stream_id_parts(last)
  if not lms then return false end
  return ms < lms or (ms == lms and seq <= lseq)
end

-- The record a task without one would have now, as a flat field/value list, or nil when `id`
-- names no waiting or running birth entry. `max_deliveries` (when known) decides whether the
-- running delivery is counted yet (see claim.lua); `queued` describes it as QUEUED even though
-- it was just delivered (a claim handing entries back while paused).
local function virtual_record(id, now, max_deliveries, queued)
  local ms = stream_id_parts(id)
  if not ms then return nil end
  local rows = redis.call('XRANGE', STREAM, id, id)
  if #rows == 0 then return nil end
  local fields = rows[1][2]
  local spec = entry_field(fields, 's')
  if not spec then return nil end
  local ms_s = string.format('%d', ms)
  local r = {'spec', spec, 'max', entry_field(fields, 'max') or '1',
    'ttl', entry_field(fields, 'ttl') or '86400000', 'ctime', ms_s, 'rtime', ms_s, 'entry', id}
  put_field(r, 'prio', entry_field(fields, 'prio'))
  put_field(r, 'idem', entry_field(fields, 'idem'))
  local p = (not queued) and pending_row(id)
  if p then
    local dn = tonumber(p[4]) or 1
    local counted = dn
    if max_deliveries and dn >= max_deliveries then counted = dn - 1 end
    local running = {'state', S_RUNNING, 'att', '1', 'f', birth_fence(id), 'exec', p[2],
      'dn', string.format('%d', dn), 'dlv', string.format('%d', counted),
      'stime', string.format('%d', now - (tonumber(p[3]) or 0))}
    for _, v in ipairs(running) do r[#r + 1] = v end
  elseif queued or not delivered(id) then
    r[#r + 1] = 'state'; r[#r + 1] = S_QUEUED
    r[#r + 1] = 'att'; r[#r + 1] = '0'
  else
    -- Delivered and acknowledged (its outcome recorded, and the record since expired or
    -- purged): gone, though the entry is not yet trimmed.
    return nil
  end
  return r
end

-- The position after `n` length-prefixed fields (LEB128 length, then bytes) of `s` starting
-- at `pos`, or nil when `s` ends first.
local function skip_fields(s, pos, n)
  for _ = 1, n do
    local length, scale = 0, 1
    repeat
      local b = string.byte(s, pos)
      if not b then return nil end
      pos = pos + 1
      length = length + (b % 128) * scale
      scale = scale * 128
    until b < 128
    pos = pos + length
  end
  return pos
end

-- The packed spec without its payload (the tail): the version byte and the six
-- length-prefixed fields of queue/src/spec.rs. A damaged spec comes back whole (its reader
-- reports it).
local function spec_head(spec)
  local stop = skip_fields(spec, 2, 6)
  if not stop then return spec end
  return string.sub(spec, 1, stop - 1)
end

-- A finished bucket's value for a list page: cut after the spec's head, its eighth field (no
-- payload, no result). A damaged value comes back whole (its reader reports it).
local function finished_head(v)
  local comma = string.find(v, ',', 1, true)
  local stop = comma and skip_fields(v, comma + 2, 8)
  if not stop then return v end
  return string.sub(v, 1, stop - 1)
end

-- Writes the record of a task that has none yet (see virtual_record). Returns whether it did.
-- A task in its finished bucket has its record there: never another one (its entry can be
-- delivered again once its consumer group is recreated, before it is trimmed).
local function materialize(id, now, max_deliveries, queued)
  if finished_value(id) then return false end
  local r = virtual_record(id, now, max_deliveries, queued)
  if not r then return false end
  redis.call('HSET', record_key(id), unpack(r))
  return true
end
