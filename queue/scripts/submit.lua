-- Enqueues a batch of tasks into one queue.
-- ARGV: idempotency window (ms), births ('1': a task due now may be born in the stream; '0':
-- an executor of an earlier version, which would drop such an entry, is alive, so every task
-- gets a record), then 8 values per task:
--   id, spec (the immutable fields, packed by the queue crate: never read here), run_at (Unix
--   ms, 0 = none), delay (ms from now on Redis's clock, used when run_at is 0; 0 = now), max
--   attempts, result ttl (ms), priority, idempotency key.
-- A task due now goes straight into the stream with no record, and its id is its entry's id
-- (the stream-native fast path, see virtual_record in common.lua); a task due later gets a
-- record under the id passed in and waits in SCHEDULED. With births '0', a task due now gets a
-- record under the id passed in and an entry naming it (field `id`), as earlier versions wrote.
-- Returns, per task: the task id (the earlier one when deduplicated) and 1 if deduplicated.
local window = tonumber(ARGV[1])
local births = ARGV[2] == '1'
local per_task = 8
local n = (#ARGV - 2) / per_task
local now = now_ms()
local now_s = tostring(now)
local out = {}
local created = 0
for i = 0, n - 1 do
  local o = 2 + i * per_task
  local id = ARGV[o + 1]
  local idem = ARGV[o + 8]
  -- Priority 0 is the default and not stored.
  local prio = ARGV[o + 7] ~= '0' and ARGV[o + 7] or nil
  local previous = false
  if idem ~= '' then
    local ikey = base .. 'i:' .. idem
    previous = redis.call('GET', ikey)
  end
  if previous then
    out[#out + 1] = previous
    out[#out + 1] = 1
  else
    local key = record_key(id)
    local run_at = tonumber(ARGV[o + 3])
    if run_at == 0 then run_at = now + tonumber(ARGV[o + 4]) end
    if run_at > now or not births then
      local fields = {'spec', ARGV[o + 2], 'att', '0', 'max', ARGV[o + 5], 'ttl', ARGV[o + 6],
        'ctime', now_s, 'state', S_SCHEDULED, 'rtime', string.format('%d', run_at)}
      put_field(fields, 'prio', prio)
      put_field(fields, 'idem', idem)
      redis.call('HSET', key, unpack(fields))
      if run_at > now then
        redis.call('ZADD', SCHEDULED, run_at, id)
      else
        enqueue(id, key, now)
      end
      if idem ~= '' then redis.call('SET', base .. 'i:' .. idem, id, 'PX', window) end
    else
      -- The fast path: no record, the entry carries the task and names it (see
      -- virtual_record in common.lua). The id passed in is not used.
      local entry_fields = {'s', ARGV[o + 2], 'max', ARGV[o + 5], 'ttl', ARGV[o + 6]}
      put_field(entry_fields, 'prio', prio)
      put_field(entry_fields, 'idem', idem)
      id = redis.call('XADD', STREAM, '*', unpack(entry_fields))
      if idem ~= '' then redis.call('SET', base .. 'i:' .. idem, id, 'PX', window) end
      -- No notification: nobody can be watching a task that did not exist.
    end
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
if created > 0 then
  redis.call('HINCRBY', STATS, 'submitted', created)
end
return out
