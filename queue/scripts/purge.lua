-- Deletes up to ARGV[1] DEAD tasks of the queue. Returns how many were deleted.
local limit = tonumber(ARGV[1])
local ids = redis.call('ZRANGE', DEAD, 0, limit - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', record_key(id), errors_key(id))
  redis.call('ZREM', DEAD, id)
end
return #ids
