-- One master's view of a semaphore. KEYS: its live zset, its size; the
-- slots' hashes are named from ARGV[1], their common base. Returns {size
-- (0: no live permit here), then per live slot: slot, lease id, owner,
-- token, deadline ms (the client's)}.
local live, size = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = redis.call('ZRANGEBYSCORE', live, '(' .. now, '+inf')
local out = {0}
if #slots > 0 then out[1] = tonumber(redis.call('GET', size)) or 0 end
for _, k in ipairs(slots) do
  local h = redis.call('HMGET', ARGV[1] .. k, 'id', 'owner', 'token', 'exp')
  if h[1] then
    out[#out + 1] = tonumber(k)
    out[#out + 1] = h[1]
    out[#out + 1] = h[2]
    out[#out + 1] = tonumber(h[3])
    out[#out + 1] = tonumber(h[4])
  end
end
return out
