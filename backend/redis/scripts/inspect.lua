-- Returns {owner, token, expires ms, waiters}; token 0 when free. Waiters
-- counts those whose heartbeat has not lapsed. A grant past its deadline
-- (its session's, for a grant in a session) reads as free.
local now = now_ms()
local h = redis.call('HMGET', lock, 'owner', 'token', 'exp', 's')
local n = redis.call('ZCOUNT', beats, '(' .. now, '+inf')
if not h[2] then return {'', 0, 0, n} end
local exp = deadline(h[3], h[4])
if h[4] and exp <= now then return {'', 0, 0, n} end
return {h[1], tonumber(h[2]), exp, n}
