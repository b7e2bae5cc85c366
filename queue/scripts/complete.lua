-- Records the outcomes of a batch of attempts and acknowledges their entries.
-- ARGV: dead ttl (ms), executor id, the smallest and the largest outcome id that is a stream
-- entry id (both empty when none is), trim (1: also trim acknowledged entries off the stream,
-- see remove_acknowledged; the executor asks every so many outcomes, and at its heartbeat
-- with no outcome at all), then 8 values per outcome:
--   id, fencing token (the claim's `f`), then, for the success of a task claimed without a
--   record (the fast path), its finished record packed by the executor (queue/src/record.rs,
--   `Finished`: all of it but the finish time and the result's bytes), its birth second and
--   its result ttl (ms) (all three empty otherwise); then kind (ok | retry | fail | cancel),
--   result or error, retry delay (ms).
-- An outcome is written only if the task is still RUNNING under that token: a late outcome
-- from an executor that lost its lease is rejected. (A record-less task is RUNNING while its
-- entry is pending: see the fast path's fence below.) A fast-path success gets no record: its
-- packed record (`<ftime>,` .. packed .. result) becomes a field of its birth second's
-- finished bucket (FIN), one HSET per bucket per batch. Returns one character per outcome, in
-- order (a string: a table of numbers costs more to send back): '1' written, '0' rejected,
-- 'd' the task's record is damaged, '2' this very outcome had already been recorded (`of`,
-- the token of the recorded outcome, matches: a retried write whose first answer was lost);
-- then an 'x' when a trim found acknowledged entries piling up behind a long task (they are
-- deleted one by one, so the executor trims on every call until they no longer do).
local dead_ttl = tonumber(ARGV[1])
local executor = ARGV[2]
local lowest_entry, highest_entry = ARGV[3], ARGV[4]
local trim = ARGV[5] == '1'
local FIRST = 6
local now = now_ms()
local now_s = tostring(now)
local out = {}
local succeeded, failed = 0, 0
-- Successes, the common case, share batch-wide commands: one XACK of their entries (which
-- also ends their leases: a lease is the entry's place in the group's pending list), their
-- removal from the stream (below), one ZADD into DONE (scored by when each expires; trimmed
-- up to now with the stream), and for fast-path successes one HSET and one PEXPIRE per finished
-- bucket, which DONE lists as one member; a success of a task with a record costs an HMGET, an
-- HSET and a PEXPIRE of its own.
-- ok_entries: entries still to acknowledge; removed: every entry acknowledged, to remove.
local ok_entries, ok_done, removed = {}, {}, {}
-- Birth second -> the finished bucket's field/value list, and the longest TTL among them.
local fin_fields, fin_ttl = {}, {}
-- Runs `command key [prefix...] values...` in slices, so a large batch never exceeds Lua's
-- unpack limit (about 8000 values). Returns the sum of the replies (XACK: entries
-- acknowledged).
local function call_in_slices(command, key, prefix, values, step)
  local total = 0
  for i = 1, #values, step do
    local last = math.min(i + step - 1, #values)
    if prefix then
      total = total + redis.call(command, key, prefix, unpack(values, i, last))
    else
      total = total + redis.call(command, key, unpack(values, i, last))
    end
  end
  return total
end
-- Acknowledged entries leave the stream by trimming rather than one XDEL each (an XDEL seeks
-- its entry through its stream node: a tenth of Redis's work per task). Everything older than
-- both the oldest pending entry and the first entry not yet delivered has been acknowledged,
-- so XTRIM MINID to that point removes finished entries only (whole nodes, with `~`). A long
-- task pins that point: once more than RESIDUE_MAX acknowledged entries would stay behind it,
-- or when the group's lag is unknown (so acknowledged entries could not be told from waiting
-- ones), the batch is deleted entry by entry instead, and the answer says so (true). Entries
-- acknowledged by calls that did not trim stay behind that point until it moves.
local RESIDUE_MAX = 10000
local function remove_acknowledged(entries)
  local info = group_info()
  local lag = info and entry_field(info, 'lag')
  local pending = info and tonumber(entry_field(info, 'pending'))
  local last = info and entry_field(info, 'last-delivered-id')
  if lag and pending and last then
    local residue = redis.call('XLEN', STREAM) - pending - tonumber(lag)
    if residue <= RESIDUE_MAX then
      local floor
      if pending > 0 then
        floor = redis.call('XPENDING', STREAM, GROUP, '-', '+', 1)[1][1]
      else
        local ms, seq = string.match(last, '^(%d+)-(%d+)$')
        floor = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
      end
      redis.call('XTRIM', STREAM, 'MINID', '~', floor)
      return false
    end
  end
  call_in_slices('XDEL', STREAM, nil, entries, 1000)
  return true
end
-- A result TTL (as stored: a string) as a number, and the time it runs out (a string, for
-- DONE's score), each worked out once per distinct TTL in the call: a batch's tasks mostly
-- share one, and number conversions are the dear part of Lua.
local ttl_numbers, expiries = {}, {}
local function ttl_ms(ttl)
  local n = ttl_numbers[ttl]
  if not n then
    n = tonumber(ttl) or 86400000
    ttl_numbers[ttl] = n
  end
  return n
end
local function expiry(ttl)
  local e = expiries[ttl]
  if not e then
    e = string.format('%d', now + ttl_ms(ttl))
    expiries[ttl] = e
  end
  return e
end
-- Books a success in the batch-wide commands below (one XACK of the entries, their removal,
-- one ZADD into DONE, scored by when it expires; a bucketed one's entry is acknowledged
-- already and its bucket is DONE's member) and the counts.
local function succeeded_one(id, entry, ttl, bucketed)
  out[#out + 1] = '1'
  if entry and entry ~= '' then
    if not bucketed then ok_entries[#ok_entries + 1] = entry end
    removed[#removed + 1] = entry
  end
  if not bucketed then
    ok_done[#ok_done + 1] = expiry(ttl)
    ok_done[#ok_done + 1] = id
  end
  notify(id, S_SUCCEEDED)
  succeeded = succeeded + 1
end
-- The fast path's candidates: successes of birth tasks the executor claimed without a record
-- (it packed their finished record), minus those that got a record since (a reclaim, release,
-- cancel or retry materializes one: they take the record path below, fenced by its token).
-- One EXISTS tells for all of them; the common answer is none.
local fast_ids = {}
for i = FIRST, #ARGV, 8 do
  if ARGV[i + 2] ~= '' and ARGV[i + 5] == 'ok' then fast_ids[#fast_ids + 1] = ARGV[i] end
end
if #fast_ids > 0 then
  local keys = {}
  for _, id in ipairs(fast_ids) do keys[#keys + 1] = record_key(id) end
  if existing(keys) > 0 then
    local still = {}
    for _, id in ipairs(fast_ids) do
      if redis.call('EXISTS', record_key(id)) == 0 then still[#still + 1] = id end
    end
    fast_ids = still
  end
end
-- The fence of a record-less task is its entry's place in the pending list: every other way a
-- birth task can be attempted gives it a record first, so while its entry is pending, this
-- attempt holds it. Their entries are acknowledged first, in one XACK, whose count is the
-- check: all of them pending (the common case), each success is taken; none, each is a
-- retried write already in its bucket ('2') or rejected ('0'). A mixed count happens only
-- once the consumer group was lost or rewound and some entries went to another executor;
-- then each not yet in its bucket is taken (its attempt ran; the entry was pending). An
-- XPENDING of the rows instead costs about 10 k instructions a task, for the reply alone.
local fast = {}
for _, id in ipairs(fast_ids) do fast[id] = true end
local acked_fast = call_in_slices('XACK', STREAM, GROUP, fast_ids, 1000)
-- This executor's pending entries among the entry-named tasks of the batch, for outcomes of
-- birth tasks other than a fast-path success (a failure materializes the record first): one
-- XPENDING over the range the executor worked out, read only when one is needed.
local mine = nil
local function pending_to_me(id)
  if not mine then
    mine = {}
    if lowest_entry ~= '' then
      local ok, rows = pcall(redis.call, 'XPENDING', STREAM, GROUP, lowest_entry,
        highest_entry, 100000, executor)
      if ok then
        for _, p in ipairs(rows) do mine[p[1]] = p end
      end
    end
  end
  return mine[id]
end
local FIELDS = {'state', 'f', 'entry', 'max', 'cancel', 'exec', 'ttl', 'err', 'of', 'att'}
for i = FIRST, #ARGV, 8 do
  local id, fence, packed = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local kind, body, delay = ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 7]) or 0
  local key = record_key(id)
  local r = {}
  local taken = false
  if fast[id] then
    if acked_fast == #fast_ids then
      taken = true
    elseif acked_fast > 0 and not finished_value(id) then
      taken = true
    end
  else
    r = redis.call('HMGET', key, unpack(FIELDS))
    -- Any other outcome of a birth task without a record (a failure): its record is written
    -- first, RUNNING under the birth token, when its entry is still pending to this executor.
    if not r[1] and pending_to_me(id) and (birth_fence(id)) == fence and
        materialize(id, now, nil, false) then
      r = redis.call('HMGET', key, unpack(FIELDS))
    end
  end
  local attempt = r[10]
  if taken then
    -- Succeeded at its first attempt: its one record, packed into its finished bucket.
    local second, ttl_text = ARGV[i + 3], ARGV[i + 4]
    local ttl = ttl_ms(ttl_text)
    local fields = fin_fields[second]
    if not fields then
      fields = {}
      fin_fields[second] = fields
      fin_ttl[second] = ttl
    elseif ttl > fin_ttl[second] then
      fin_ttl[second] = ttl
    end
    fields[#fields + 1] = id
    fields[#fields + 1] = now_s .. ',' .. packed .. body
    succeeded_one(id, id, ttl_text, true)
  elseif fast[id] then
    -- Its entry was not pending: already in its bucket with this very outcome (a retried
    -- write whose first answer was lost), or the attempt lost its task.
    if finished_as(id, packed .. body) then out[#out + 1] = '2' else out[#out + 1] = '0' end
  elseif r[9] == fence and r[6] == executor then
    out[#out + 1] = '2'
  elseif not r[1] and packed ~= '' and finished_as(id, packed .. body) then
    -- Already in its finished bucket, with this very outcome: a retried write.
    out[#out + 1] = '2'
  elseif r[1] ~= S_RUNNING or r[2] ~= fence then
    out[#out + 1] = '0'
  elseif kind == 'ok' then
    local ttl = r[7] or '86400000'
    -- 'entry' is emptied in the same HSET rather than deleted: every reader treats '' as none.
    redis.call('HSET', key, 'dlv', '0', 'res', body, 'state', S_SUCCEEDED, 'ftime', now_s,
      'entry', '', 'of', fence)
    redis.call('PEXPIRE', key, ttl)
    -- The errors list exists only once an attempt failed, and then 'err' is set.
    if r[8] then redis.call('PEXPIRE', errors_key(id), ttl) end
    succeeded_one(id, r[3], ttl)
  elseif not tonumber(r[4]) or not tonumber(attempt) then
    -- A damaged record: reported ('d'), never guessed at. Its lease runs out and reclaim.lua
    -- buries it with the reason.
    out[#out + 1] = 'd'
  else
    out[#out + 1] = '1'
    drop_entry(r[3])
    redis.call('HSET', key, 'dlv', 0, 'of', fence)
    if kind == 'cancel' then
      push_error(id, attempt, now, body)
      finish(id, key, S_CANCELLED, now)
    else
      failed = failed + 1
      push_error(id, attempt, now, body)
      if kind == 'fail' or tonumber(attempt) >= tonumber(r[4]) then
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
for second, fields in pairs(fin_fields) do
  local bucket = fin_key(second)
  call_in_slices('HSET', bucket, nil, fields, 1000)
  -- The bucket lives as long as its longest-kept task (PTTL is -1 while it has no expiry).
  if redis.call('PTTL', bucket) < fin_ttl[second] then
    redis.call('PEXPIRE', bucket, fin_ttl[second])
  end
  -- DONE lists a bucket's tasks by one member, '@<second>', scored by when the bucket
  -- expires (ZADD GT below: a longer-kept task moves it later, never earlier).
  ok_done[#ok_done + 1] = string.format('%d', now + fin_ttl[second])
  ok_done[#ok_done + 1] = '@' .. second
end
call_in_slices('XACK', STREAM, GROUP, ok_entries, 1000)
call_in_slices('ZADD', DONE, 'GT', ok_done, 1000)
-- DONE is trimmed up to now with the stream (readers skip a member whose task is gone).
if trim then redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now) end
if succeeded > 0 then count('succeeded', succeeded, now) end
if failed > 0 then count('failed', failed, now) end
local piling = trim and remove_acknowledged(removed)
flush_notifications()
if piling then out[#out + 1] = 'x' end
return table.concat(out)
