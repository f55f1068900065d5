-- Returns {size, waiters, delays (as in sem_acquire.lua), holders...}
-- (holders as in sem_acquire.lua).
local now = now_ms()
local n = tonumber(redis.call('HGET', slots, 'n') or '0')
local live, count, _, delayed, nd = read(now, n)
local out = {live_size(now, count + nd), redis.call('ZCOUNT', beats, now + 1, '+inf')}
for _, v in ipairs((flat_delays(delayed))) do table.insert(out, v) end
for _, v in ipairs(flat(live, n)) do table.insert(out, v) end
return out
