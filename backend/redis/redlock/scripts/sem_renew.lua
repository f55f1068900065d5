-- One master's half of a permit's renew. KEYS: the slot's hash, the
-- semaphore's live zset and size. ARGV: lease id, ttl ms (0: keep the
-- permit's), the renewal's start in the client's Unix ms, slot. Returns
-- {owner, token, ttl ms, size} when the lease holds the slot here, else 0
-- (an expired copy is gone here: no resurrection).
local slot, live, size = KEYS[1], KEYS[2], KEYS[3]
local h = redis.call('HMGET', slot, 'id', 'owner', 'token', 'ttl')
if h[1] ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
if ttl == 0 then ttl = tonumber(h[4]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', slot, 'exp', tonumber(ARGV[3]) + ttl, 'ttl', ttl)
redis.call('PEXPIRE', slot, ttl)
redis.call('ZADD', live, now + ttl, ARGV[4])
for _, k in ipairs({live, size}) do
  if tonumber(redis.call('PTTL', k)) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return {h[2], tonumber(h[3]), ttl, tonumber(redis.call('GET', size)) or 0}
