-- Reads tasks for GetTask, WatchTask and the lists: per task, its record's fields (a flat
-- list, empty when the task does not exist) and its errors list. A task still without a
-- record (the fast path) is described from its stream entry (virtual_record), so a reader
-- never needs to know which kind it is: one round trip either way.
-- ARGV: mode, then task ids. Mode 'full' answers whole records; 'summary' (list pages) leaves
-- out the payload (the spec's tail), the result and the errors list, so a page of tasks with
-- megabyte payloads or results stays small.
-- Returns a {fields, errors} pair per id.
local summary = ARGV[1] == 'summary'
local now = nil
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local fields = redis.call('HGETALL', record_key(id))
  local errors = {}
  if #fields == 0 then
    now = now or now_ms()
    fields = virtual_record(id, now, nil, false) or {}
  elseif not summary then
    errors = redis.call('LRANGE', errors_key(id), 0, -1)
  end
  if summary and #fields > 0 then
    local kept = {}
    for j = 1, #fields, 2 do
      local name, value = fields[j], fields[j + 1]
      if name == 'spec' then
        kept[#kept + 1] = name
        kept[#kept + 1] = spec_head(value)
      elseif name ~= 'res' then
        kept[#kept + 1] = name
        kept[#kept + 1] = value
      end
    end
    fields = kept
  end
  out[#out + 1] = {fields, errors}
end
return out
