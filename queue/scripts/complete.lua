-- Records the outcomes of a batch of attempts and acknowledges their entries.
-- ARGV: dead ttl (ms), executor id, the smallest and the largest outcome id that is a stream
-- entry id (both empty when none is), then 10 values per outcome:
--   id, fencing token (the claim's `f`), then what the record of a task that has none yet (the
--   fast path) is written with: spec (packed, as claimed), max attempts, result ttl (ms),
--   priority, idempotency key (all but the spec empty for a task with a record); then kind
--   (ok | retry | fail | cancel), result or error, retry delay (ms).
-- An outcome is written only if the task is still RUNNING under that token: a late outcome
-- from an executor that lost its lease is rejected. Returns one character per outcome, in
-- order (a string: a table of numbers costs more to send back): '1' written, '0' rejected,
-- 'd' the task's record is damaged, '2' this very outcome had already been recorded (`of`,
-- the token of the recorded outcome, matches: a retried write whose first answer was lost).
local dead_ttl = tonumber(ARGV[1])
local executor = ARGV[2]
local lowest_entry, highest_entry = ARGV[3], ARGV[4]
local FIRST = 5
local now = now_ms()
local now_s = tostring(now)
local out = {}
local succeeded, failed = 0, 0
-- Successes, the common case, share batch-wide commands: one XACK of their entries (which
-- also ends their leases: a lease is the entry's place in the group's pending list), their
-- removal from the stream (below), one ZADD into DONE and one trim of it (by the smallest TTL,
-- as per-task trims would); per task: one HMGET, one HSET, one PEXPIRE, the notify.
local ok_entries, ok_done = {}, {}
-- Runs `command key [prefix...] values...` in slices, so a large batch never exceeds Lua's
-- unpack limit (about 8000 values).
local function call_in_slices(command, key, prefix, values, step)
  for i = 1, #values, step do
    local last = math.min(i + step - 1, #values)
    if prefix then
      redis.call(command, key, prefix, unpack(values, i, last))
    else
      redis.call(command, key, unpack(values, i, last))
    end
  end
end
-- Acknowledged entries leave the stream by trimming rather than one XDEL each (an XDEL seeks
-- its entry through its stream node: a tenth of Redis's work per task). Everything older than
-- both the oldest pending entry and the first entry not yet delivered has been acknowledged,
-- so XTRIM MINID to that point removes finished entries only (whole nodes, with `~`). A long
-- task pins that point: once more than RESIDUE_MAX acknowledged entries would stay behind it,
-- or when the group's lag is unknown (so acknowledged entries could not be told from waiting
-- ones), the batch is deleted entry by entry instead.
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
      return
    end
  end
  call_in_slices('XDEL', STREAM, nil, entries, 1000)
end
local min_ttl = nil
-- Books a success in the batch-wide commands below (one XACK of the entries, their removal,
-- one ZADD into DONE, one trim of it by the smallest TTL) and the counts.
local function succeeded_one(id, entry, ttl)
  out[#out + 1] = '1'
  if entry and entry ~= '' then ok_entries[#ok_entries + 1] = entry end
  ok_done[#ok_done + 1] = now_s
  ok_done[#ok_done + 1] = id
  local ttl_ms = tonumber(ttl) or 86400000
  if min_ttl == nil or ttl_ms < min_ttl then min_ttl = ttl_ms end
  notify(id, S_SUCCEEDED)
  succeeded = succeeded + 1
end
-- This executor's pending entries among the entry-named tasks of the batch (the fast path's
-- fence check: the entry must still be pending to this executor), in one XPENDING over the
-- range the executor worked out.
local mine = {}
if lowest_entry ~= '' then
  local ok, rows = pcall(redis.call, 'XPENDING', STREAM, GROUP, lowest_entry, highest_entry,
    100000, executor)
  if ok then
    for _, p in ipairs(rows) do mine[p[1]] = p end
  end
end
-- Whether any of those has a record: one EXISTS for all of them. The common answer is none (a
-- birth task that nothing else happened to), and then they need no HMGET each.
local mine_recorded = false
if next(mine) ~= nil then
  local keys = {}
  for i = FIRST, #ARGV, 10 do
    if mine[ARGV[i]] then keys[#keys + 1] = record_key(ARGV[i]) end
  end
  mine_recorded = existing(keys) > 0
end
local FIELDS = {'state', 'f', 'entry', 'max', 'cancel', 'exec', 'ttl', 'err', 'of', 'att'}
for i = FIRST, #ARGV, 10 do
  local id, fence, spec, max = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local kind, body = ARGV[i + 7], ARGV[i + 8]
  local key = record_key(id)
  local p = mine[id]
  local r
  if p and not mine_recorded then
    r = {}
  else
    r = redis.call('HMGET', key, unpack(FIELDS))
  end
  -- A birth entry's task (the fast path) has no record until now. Its attempt still holds it
  -- when the entry is pending to this executor and the token is the birth token.
  local fast, created = nil, nil
  if not r[1] and p then
    local token, ms = birth_fence(id)
    if token == fence then
      if kind == 'ok' then
        fast, created = p, ms
      elseif materialize(id, now, nil, false) then
        r = redis.call('HMGET', key, unpack(FIELDS))
      end
    end
  end
  local attempt = r[10]
  if fast then
    -- Succeeded at its first attempt: the one record it will ever have, written once, with
    -- nothing a finished task does not need.
    local ttl = tonumber(ARGV[i + 4]) or 86400000
    local record = {'spec', spec, 'max', max, 'ctime', created, 'att', '1',
      'of', fence, 'exec', executor, 'stime', now - (tonumber(fast[3]) or 0),
      'res', body, 'state', S_SUCCEEDED, 'ftime', now_s}
    put_field(record, 'prio', ARGV[i + 5])
    put_field(record, 'idem', ARGV[i + 6])
    redis.call('HSET', key, unpack(record))
    redis.call('PEXPIRE', key, ttl)
    succeeded_one(id, id, ttl)
  elseif r[9] == fence and r[6] == executor then
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
        local due = now + tonumber(ARGV[i + 9])
        redis.call('HSET', key, 'state', S_RETRYING, 'rtime', due)
        redis.call('HDEL', key, 'entry')
        redis.call('ZADD', RETRYING, due, id)
        notify(id, S_RETRYING)
      end
    end
  end
end
if #ok_done > 0 then
  call_in_slices('XACK', STREAM, GROUP, ok_entries, 1000)
  remove_acknowledged(ok_entries)
  call_in_slices('ZADD', DONE, nil, ok_done, 1000)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - min_ttl)
end
if succeeded > 0 then count('succeeded', succeeded, now) end
if failed > 0 then count('failed', failed, now) end
flush_notifications()
return table.concat(out)
