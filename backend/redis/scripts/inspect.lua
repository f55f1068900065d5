-- Returns {owner, token, expires ms, waiters}; token 0 when free. Waiters
-- counts those whose heartbeat has not lapsed.
local now = now_ms()
local h = redis.call('HMGET', lock, 'owner', 'token', 'exp')
local n = redis.call('ZCOUNT', beats, '(' .. now, '+inf')
if not h[2] then return {'', 0, 0, n} end
return {h[1], tonumber(h[2]), tonumber(h[3]), n}
