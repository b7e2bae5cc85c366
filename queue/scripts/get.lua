-- Reads tasks for GetTask, WatchTask and the lists: per task, its record's fields (a flat
-- list, empty when the task does not exist) and its errors list. A task still without a
-- record (the fast path) is described from its stream entry (virtual_record), and one that
-- succeeded that way answers its finished bucket's value as the field '@fin', with Redis's
-- clock as '@now' (read by queue/src/record.rs), so a reader never needs to know which kind
-- it is: one round trip either way.
-- ARGV: mode, then task ids. Mode 'full' answers whole records; 'summary' (list pages) leaves
-- out the payload (the spec's tail), the result and the errors list, so a page of tasks with
-- megabyte payloads or results stays small.
-- Returns a {fields, errors} pair per id.
local summary = ARGV[1] == 'summary'
local now = nil
local out = {}
-- A record's fields for a list page: the spec without its payload, and no result.
local function summarized(fields)
  local kept = {}
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    if name == 'spec' then value = spec_head(value) end
    if name ~= 'res' then
      kept[#kept + 1] = name
      kept[#kept + 1] = value
    end
  end
  return kept
end
for i = 2, #ARGV do
  local id = ARGV[i]
  local fields = redis.call('HGETALL', record_key(id))
  local errors = {}
  if #fields == 0 then
    local finished = finished_value(id)
    now = now or now_ms()
    if finished then
      -- With Redis's clock, which its result TTL is judged against (record.rs, parse_stored).
      if summary then finished = finished_head(finished) end
      fields = {'@fin', finished, '@now', tostring(now)}
    else
      fields = virtual_record(id, now, nil, false) or {}
      if summary then fields = summarized(fields) end
    end
  elseif summary then
    fields = summarized(fields)
  else
    errors = redis.call('LRANGE', errors_key(id), 0, -1)
  end
  out[#out + 1] = {fields, errors}
end
return out
