-- One master's half of a permit's release. KEYS: the slot's hash, the
-- semaphore's live zset and size (sem_acquire.lua). ARGV: lease id, slot.
-- Deletes the lease's copy; once no permit is live here, the size goes too
-- (an empty semaphore takes the next acquire's). Returns 1 when the copy
-- was released here, else 0.
local slot, live, size = KEYS[1], KEYS[2], KEYS[3]
local n = 0
if redis.call('HGET', slot, 'id') == ARGV[1] then
  redis.call('DEL', slot)
  redis.call('ZREM', live, ARGV[2])
  n = 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCOUNT', live, '(' .. now, '+inf') == 0 then redis.call('DEL', live, size) end
return n
