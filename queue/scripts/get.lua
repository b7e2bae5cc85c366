-- Reads tasks for GetTask, WatchTask and the lists: per task, its record's fields (a flat
-- list, empty when the task does not exist) and its errors list. A task still without a
-- record (the fast path) is described from its stream entry (virtual_record), so a reader
-- never needs to know which kind it is: one round trip either way.
-- ARGV: task ids. Returns a {fields, errors} pair per id.
local now = nil
local out = {}
for i = 1, #ARGV do
  local id = ARGV[i]
  local fields = redis.call('HGETALL', record_key(id))
  local errors = {}
  if #fields == 0 then
    now = now or now_ms()
    fields = virtual_record(id, now, nil, false) or {}
  else
    errors = redis.call('LRANGE', errors_key(id), 0, -1)
  end
  out[#out + 1] = {fields, errors}
end
return out
