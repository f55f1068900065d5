-- Returns {owner, token, expires ms, waiters, lock-delay's end ms (0:
-- none)}; token 0 when free. Waiters counts those whose heartbeat has not
-- lapsed. A grant past its deadline (its session's, for a grant in a
-- session) reads as free, or as delayed inside its lock-delay.
local now = now_ms()
local n = redis.call('ZCOUNT', beats, '(' .. now, '+inf')
local h, delayed = holder(now, 'owner')
if h then return {h[5], tonumber(h[4]), deadline(h[1], h[2]), n, 0} end
if delayed then return {'', 0, 0, n, delayed[1]} end
return {'', 0, 0, n, 0}
