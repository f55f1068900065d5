-- What an observer reads: the holder, after removing (and logging) a grant
-- whose deadline passed, with the last entry of the event log, in one step.
-- Returns {token (0: free), owner, value, expires ms, now ms, waiters,
-- last entry id ('0-0': none), its n, its kind, its token}.
local now = now_ms()
reap(now)
local h = redis.call('HMGET', lock, 'token', 'owner', 'value', 'exp', 's')
local n = redis.call('ZCOUNT', beats, '(' .. now, '+inf')
local last = last_event() or {id = '0-0', n = '0', e = '', t = '0'}
return {tonumber(h[1]) or 0, h[2] or '', h[3] or '', deadline(h[4], h[5]) or 0, now, n,
  last.id, tonumber(last.n), last.e, tonumber(last.t) or 0}
